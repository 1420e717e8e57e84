"""In-process micro-benchmark: ExecutionEngineFactory.create_for_user + cleanup_engine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime

from container import Container
from domain.approval_policy import ApprovalGate
from domain.context import UserExecutionContext
from domain.events import AgentEvent
from domain.factory import ExecutionEngineFactory
from domain.tools import ToolBox
from domain.tools.catalog import ToolCatalog


class _Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class _Bridge:
    async def publish(self, event: AgentEvent) -> AgentEvent:
        return event


class _Model:
    name = "noop"

    async def stream(self, request):  # pragma: no cover - never called: engines are not run here
        if False:
            yield None


class _Audit:
    def record(self, entry) -> None:
        pass

    async def list(self, *, user_id=None, limit=100):
        return []


class _Grants:  # pragma: no cover - never asked: engines are not run here
    async def covers(self, user_id: str, tool: str, thread_id: str) -> bool:
        return False


def _context(user: int, run: int) -> UserExecutionContext:
    return UserExecutionContext(user_id=f"user_{user}", thread_id=f"thread_{run}", run_id=f"run_{run}",
                                request_id=f"req_{run}", created_at=datetime.now(UTC))


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _measure(active: int, iterations: int) -> dict[str, float]:
    clock = _Clock()
    container = Container()  # the settings' limits, the two the benchmark needs raised
    factory = ExecutionEngineFactory(
        bridge=_Bridge(), model=_Model(), clock=clock, audit=_Audit(),
        tools=ToolCatalog(builtin=ToolBox([], timeout_s=container.settings().limits.tool_timeout_s,
                                          pause_s=0.0)),
        gate=ApprovalGate(grants=_Grants(), clock=clock, timeout_s=60.0),
        limits=replace(container.engine_limits(), max_engines_per_user=4, max_engines_total=active + 100),
    )
    # Background engines: 4 per user (the per-user limit), kept open during the measurement.
    for i in range(active):
        await factory.create_for_user(_context(1_000_000 + i // 4, 1_000_000 + i))
    contexts = [_context(i % 50, i) for i in range(iterations)]
    create, cleanup, both = [], [], []
    for ctx in contexts:
        t0 = time.perf_counter()
        engine = await factory.create_for_user(ctx)
        t1 = time.perf_counter()
        await factory.cleanup_engine(engine)
        t2 = time.perf_counter()
        create.append(t1 - t0)
        cleanup.append(t2 - t1)
        both.append(t2 - t0)
    assert factory.metrics().active == active
    ms = 1000.0
    return {
        "active": active, "iterations": iterations,
        "create_p50_ms": _pct(create, 50) * ms, "create_p99_ms": _pct(create, 99) * ms,
        "cleanup_p50_ms": _pct(cleanup, 50) * ms, "cleanup_p99_ms": _pct(cleanup, 99) * ms,
        "both_p50_ms": _pct(both, 50) * ms, "both_p99_ms": _pct(both, 99) * ms,
        "both_max_ms": max(both) * ms,
    }


def run(iterations: int = 20_000) -> list[dict[str, float]]:
    return [asyncio.run(_measure(active, iterations)) for active in (0, 1000)]


if __name__ == "__main__":
    for row in run():
        print(row)
