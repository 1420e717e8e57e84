"""Logging: loguru everywhere; the domain's stdlib logging is routed into it.

Every record passes one patcher, which
- adds the ids of the run the current task executes (user_id, run_id, thread_id, request_id),
  read from the domain's `RUN_LOG_CONTEXT` (a stdlib ContextVar the run's task sets), so a line
  written during a run carries them whether the domain (stdlib logging) or an adapter (loguru)
  wrote it; request and socket ids come from `logger.contextualize` in the entrypoints;
- redacts anything that looks like a JWT, a `Bearer <token>` or a `password=...`-style secret
  from the message and the string values of `extra`: a safety net, since nothing should log them.

The sink this module adds also redacts its final text, which covers formatted exceptions.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from container.settings import LogSettings
from domain.run_log import RUN_LOG_CONTEXT

if TYPE_CHECKING:
    from loguru import Record

REDACTED = "[redacted]"
_SECRETS = re.compile(
    # a JWT: base64url header (a JSON object, so "eyJ"), payload and signature, separated by dots
    r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    # an Authorization value: "Bearer <token>"
    r"|(?P<bearer>\bBearer\s+)[^\s\"',;]+"
    # password=..., "api_key": "...", jwt_secret: ..., access_token=...: the key stays, the value goes
    r"|(?P<key>password|passwd|secret|api[_-]?key|token)(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?<=\")[^\"]*|(?<=')[^']*|[^\s\"',;}]+)",
    re.IGNORECASE,
)


def _replace(match: re.Match[str]) -> str:
    if match.group("bearer") is not None:
        return match.group("bearer") + REDACTED
    if match.group("key") is not None:
        return match.group("key") + match.group("sep") + REDACTED
    return REDACTED


def redact(text: str) -> str:
    """The text with anything that looks like a token, a password or a key replaced."""
    return _SECRETS.sub(_replace, text)


def patch_record(record: Record) -> None:
    """loguru patcher: the current run's ids into `extra`, secrets out of the message and `extra`."""
    run = RUN_LOG_CONTEXT.get()
    if run is not None:
        record["extra"].update(run)
    record["message"] = redact(record["message"])
    extra: dict[str, Any] = record["extra"]
    for key, value in extra.items():
        if isinstance(value, str):
            extra[key] = redact(value)


class _RedactingStream:
    """A text stream for a loguru sink that redacts what it writes (tracebacks included)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        self._stream.write(redact(text))

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


_READABLE = ("<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
             "<cyan>{name}</cyan>:<cyan>{function}</cyan>:<cyan>{line}</cyan> - <level>{message}</level>")
_CONTEXT_KEYS = ("request_id", "user_id", "connection_id", "run_id", "client_ip")


def _readable(record: Record) -> str:
    """Development lines: loguru's usual format, then the ids the line carries."""
    ids = " ".join(f"{key}={{extra[{key}]}}" for key in _CONTEXT_KEYS if key in record["extra"])
    return _READABLE + (f" <dim>[{ids}]</dim>" if ids else "") + "\n{exception}"


class InterceptHandler(logging.Handler):
    """Routes stdlib logging (the domain's, libraries') into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


_installed: list[int] = []


def configure_logging(settings: LogSettings, *, production: bool, stream: TextIO | None = None) -> None:
    """JSON lines (loguru serialize) in production or with log.json_lines; readable lines otherwise.

    Written to `stream` (standard error by default); stdlib logging is routed here too.
    """
    json_lines = production if settings.json_lines is None else settings.json_lines
    reset_logging()
    with contextlib.suppress(ValueError):
        logger.remove(0)  # loguru's own default sink; sinks others added (a test run's) stay
    logger.configure(patcher=patch_record)
    _installed.append(logger.add(
        _RedactingStream(stream or sys.stderr), level=settings.level.upper(), serialize=json_lines,
        format=_readable, colorize=False if json_lines else None, backtrace=False, diagnose=False))
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    # httpx2 logs each request's URL (a user's MCP URL may carry a secret in its query), the MCP
    # SDK the bodies of its messages (tool arguments).
    for noisy in ("aiohttp.access", "aiosqlite", "sqlalchemy.engine", "alembic", "httpx2", "httpcore2",
                  "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def reset_logging() -> None:
    """Undo configure_logging: its sink, its patcher and the stdlib intercept; nothing else."""
    while _installed:
        with contextlib.suppress(ValueError):
            logger.remove(_installed.pop())
    logger.configure(patcher=lambda record: None)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, InterceptHandler)]:
        root.removeHandler(handler)

