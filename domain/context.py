"""UserExecutionContext: who a run is for, built exactly one way."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from domain.entities import Run
from domain.errors import InvalidContext

_PLACEHOLDERS = frozenset(
    {"none", "null", "nil", "undefined", "default", "placeholder", "unknown", "anonymous",
     "todo", "tbd", "test", "temp", "xxx", "-", "0", "n/a", "na"}
)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidContext(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidContext(f"{name} must not be empty")
    if value.strip().lower() in _PLACEHOLDERS:
        raise InvalidContext(f"{name} is a placeholder value ({value!r}), not a real id")
    if not _ID.match(value):
        raise InvalidContext(f"{name} {value!r} is not a valid id (letters, digits, _.:- ; 128 max)")


@dataclass(frozen=True, slots=True, kw_only=True)
class UserExecutionContext:
    """Immutable identity of one run; the only key the engine and its tools use to scope data."""

    user_id: str
    thread_id: str
    run_id: str
    request_id: str
    created_at: datetime
    # Which holding of the run's lease this execution is: raised by every takeover, and carried
    # by every event it writes, so the writes of a holder that lost the run are refused.
    lease_epoch: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("user_id", "thread_id", "run_id", "request_id"):
            _check_id(name, getattr(self, name))
        if not isinstance(self.created_at, datetime) or self.created_at.tzinfo is None:
            raise InvalidContext("created_at must be a timezone-aware datetime")
        if type(self.lease_epoch) is not int or self.lease_epoch < 0:
            raise InvalidContext("lease_epoch must be a whole number, 0 or more")
        if not isinstance(self.metadata, Mapping):
            raise InvalidContext("metadata must be a mapping")
        # A private copy behind a read-only view: the caller's dict can't change the context later.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


def context_of_run(run: Run, *, request_id: str, created_at: datetime) -> UserExecutionContext:
    """The context a stored run is executed or ended in: its ids, and the lease epoch it holds."""
    return UserExecutionContext(user_id=run.user_id, thread_id=run.thread_id, run_id=run.id,
                                request_id=request_id, created_at=created_at, lease_epoch=run.lease_epoch)
