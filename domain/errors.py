"""Errors the domain raises; each carries the protocol's error code."""


class DomainError(Exception):
    """An error a client can cause and act on; never a 500."""

    code = "invalid_message"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidMessage(DomainError):
    code = "invalid_message"


class MessageTooLarge(DomainError):
    code = "message_too_large"


class ValidationFailed(DomainError):
    code = "validation_error"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class Unauthorized(DomainError):
    code = "unauthorized"


class LimitExceeded(DomainError):
    code = "limit_exceeded"


class ServerDraining(LimitExceeded):
    """The server is shutting down and takes no new runs."""

    code = "server_not_ready"


class StorageUnavailable(DomainError):
    """The database is away (unreachable, restarting, timed out): the client should retry shortly.

    Adapters raise it for an outage, so nothing outside them knows a driver's exceptions.
    """

    code = "server_not_ready"


class ThreadBusy(DomainError):
    code = "thread_busy"


class RateLimited(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # when to send again, if known (HTTP: Retry-After)


class CursorExpired(DomainError):
    """A resume cursor older than what the event log still keeps."""

    code = "cursor_expired"


class LeaseLost(Exception):
    """Another process took the run over (its lease epoch moved on): this one must stop writing it."""


class InvalidContext(ValueError):
    """A UserExecutionContext built from empty, placeholder or malformed values."""


class EngineClosed(RuntimeError):
    """A UserExecutionEngine used after the factory cleaned it up."""


class ModelError(Exception):
    """The chat model failed; the message is safe to show to the user."""

    def __init__(self, message: str, *, code: str = "model_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ToolError(Exception):
    """A tool refused its input or failed; the message is shown to the model and the user."""
