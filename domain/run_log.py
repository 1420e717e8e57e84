"""The ids of the run the current task executes, for every log line written meanwhile.

The domain only sets it, for the whole of a run's task; the composition root's logging reads
it and puts the ids on every line, by the domain or by an adapter it calls. Tasks copy their
context when created, so each run's task sees its own and no other.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar

RUN_LOG_CONTEXT: ContextVar[Mapping[str, str] | None] = ContextVar("goldenpath_run_log_context",
                                                                   default=None)


def bind_run(*, user_id: str, run_id: str, thread_id: str, request_id: str) -> None:
    """Put the run's ids on every log line the current task writes from now on."""
    RUN_LOG_CONTEXT.set({"user_id": user_id, "run_id": run_id, "thread_id": thread_id,
                         "request_id": request_id})
