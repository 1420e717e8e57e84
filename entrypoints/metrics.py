"""GET /metrics: this app's live numbers in the Prometheus text format.

Not authenticated, like `/ready`: the numbers are aggregate (no user, run or thread ids, no
content), and the endpoint is meant to be scraped on an internal port or network; a deployment
that exposes the server to the internet keeps `/metrics` off its public proxy routes.

Each app has its own `CollectorRegistry` (never prometheus_client's global one: several apps
run in one process in tests, and after a restart in place), with one collector that reads the
values at scrape time from the app's services: nothing is counted twice and nothing goes
stale. Before the app is ready (or after it stopped) the service values are 0.

The event-loop lag probe is a small task that sleeps `LAG_INTERVAL_S` and measures how late it
woke up: a loop blocked by CPU work or a blocking call shows here first. The task count is that of
the probe's loop (the app's), read at scrape time: a count that only grows is a task leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from adapters.websocket import SocketConnection
from domain.factory import CREATION_BUCKETS_S
from domain.runs import APPROVAL_OUTCOMES
from entrypoints.appkeys import LIFECYCLE, Lifecycle

LAG_INTERVAL_S = 0.5
LAG_BUCKETS_S: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RUN_OUTCOMES = ("completed", "failed", "cancelled")


def _histogram(name: str, documentation: str, bounds: Sequence[float], counts: Sequence[int],
               total: float) -> HistogramMetricFamily:
    """A histogram family from per-bucket counts (the last one above the last bound)."""
    counts = list(counts) or [0] * (len(bounds) + 1)
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    buckets.append(("+Inf", sum(counts)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


@dataclass(slots=True)
class LoopLagProbe:
    """Sleeps `interval_s` at a time and records how much later than asked it woke up."""

    interval_s: float = LAG_INTERVAL_S
    last_s: float = 0.0
    total_s: float = 0.0
    counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS_S) + 1))
    _task: asyncio.Task[None] | None = None

    def observe(self, lag_s: float) -> None:
        self.last_s = lag_s
        self.total_s += lag_s
        self.counts[bisect_left(LAG_BUCKETS_S, lag_s)] += 1

    async def _run(self) -> None:
        while True:
            asked = time.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.observe(max(0.0, time.monotonic() - asked))

    def loop_tasks(self) -> int:
        """Tasks not yet done on the loop the probe runs on; 0 while it does not run."""
        task = self._task
        return len(asyncio.all_tasks(task.get_loop())) if task is not None else 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-loop-lag-probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class ServerCollector(Collector):
    """Reads the app's factory, chat service, bridge and lifecycle at scrape time."""

    def __init__(self, lifecycle: Lifecycle, probe: LoopLagProbe) -> None:
        self._lifecycle = lifecycle
        self._probe = probe

    def collect(self) -> Iterable[Metric]:
        yield from self._engines()
        yield from self._runs()
        yield from self._delivery()
        yield from self._writes()
        yield from self._loop()
        ready = self._lifecycle.ready and not self._lifecycle.draining
        yield GaugeMetricFamily("goldenpath_ready", "1 when the server takes requests, else 0.",
                                value=1 if ready else 0)

    def _engines(self) -> Iterator[Metric]:
        services = self._lifecycle.services
        factory = services.factory.metrics() if services is not None else None
        for name, attr, doc in (
            ("created", "created", "Execution engines created."),
            ("cleaned_up", "cleaned_up", "Execution engines cleaned up."),
            ("rejected", "rejected", "Runs refused an engine (limits, shutting down)."),
            ("timed_out", "timed_out", "Runs that ended by their run timeout."),
            ("swept", "swept", "Engines cleaned up by the leak guard, not by their run."),
        ):
            yield CounterMetricFamily(f"goldenpath_engines_{name}", doc,
                                      value=getattr(factory, attr) if factory else 0)
        yield GaugeMetricFamily("goldenpath_engines_active", "Execution engines alive now.",
                                value=factory.active if factory else 0)
        yield _histogram("goldenpath_engine_creation_seconds", "Time to create an execution engine.",
                         CREATION_BUCKETS_S, factory.creation_bucket_counts if factory else (),
                         factory.creation_seconds_total if factory else 0.0)

    def _runs(self) -> Iterator[Metric]:
        services = self._lifecycle.services
        outcomes = services.runs.outcomes() if services is not None else {}
        runs = CounterMetricFamily("goldenpath_runs", "Runs that ended, by outcome.", labels=["outcome"])
        for outcome in sorted(set(RUN_OUTCOMES) | set(outcomes)):
            runs.add_metric([outcome], outcomes.get(outcome, 0))
        yield runs
        takeovers = services.runs.takeovers() if services is not None else {}
        taken = CounterMetricFamily("goldenpath_run_takeovers", "Runs this process took over from a "
                                    "stopped one, by outcome: resumed here, or ended interrupted "
                                    "(past runs.max_takeovers).", labels=["outcome"])
        for outcome in ("resumed", "interrupted"):
            taken.add_metric([outcome], takeovers.get(outcome, 0))
        yield taken
        yield CounterMetricFamily("goldenpath_runs_resumed", "Runs this process resumed from their "
                                  "checkpoint after a takeover.", value=takeovers.get("resumed", 0))
        approvals = services.runs.approvals() if services is not None else {}
        asked = CounterMetricFamily("goldenpath_approvals", "Approvals on this process: questions asked "
                                    "(a run began to wait), and decisions by outcome.", labels=["outcome"])
        for outcome in APPROVAL_OUTCOMES:
            asked.add_metric([outcome], approvals.get(outcome, 0))
        yield asked
        yield GaugeMetricFamily("goldenpath_runs_active", "Runs going or queued on this process.",
                                value=services.runs.active if services is not None else 0)

    def _delivery(self) -> Iterator[Metric]:
        services = self._lifecycle.services
        bridge = services.bridge if services is not None else None
        sockets = sum(isinstance(s, SocketConnection) for s in bridge.connections()) if bridge else 0
        yield GaugeMetricFamily("goldenpath_websockets_open", "Authenticated WebSockets open now.",
                                value=sockets)
        for name, doc in (
            ("events_published", "Events stored and fanned out by the bridge."),
            ("frames_delivered", "Event frames queued to a socket or stream."),
            ("frames_dropped", "Event frames refused by a socket or stream too slow or closing."),
        ):
            yield CounterMetricFamily(f"goldenpath_{name}", doc,
                                      value=getattr(bridge, name) if bridge else 0)

    def _writes(self) -> Iterator[Metric]:
        services = self._lifecycle.services
        committer = services.database.committer if services is not None else None
        yield CounterMetricFamily("goldenpath_db_commits", "Transactions the group committer committed.",
                                  value=committer.batches if committer else 0)
        yield CounterMetricFamily("goldenpath_db_writes", "Writes committed (writes per commit: the "
                                  "batching under load).", value=committer.writes if committer else 0)

    def _loop(self) -> Iterator[Metric]:
        probe = self._probe
        yield GaugeMetricFamily("goldenpath_event_loop_lag_seconds",
                                "How late the event loop ran the lag probe, last measurement.",
                                value=probe.last_s)
        yield GaugeMetricFamily("goldenpath_event_loop_tasks",
                                "asyncio tasks not yet done on the event loop (a leak only grows).",
                                value=probe.loop_tasks())
        yield _histogram("goldenpath_event_loop_wakeup_lag_seconds",
                         f"How late the event loop ran the lag probe (every {probe.interval_s} s).",
                         LAG_BUCKETS_S, probe.counts, probe.total_s)


@dataclass(slots=True)
class Metrics:
    registry: CollectorRegistry
    probe: LoopLagProbe


METRICS = web.AppKey("metrics", Metrics)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _lag_probe(app: web.Application) -> AsyncIterator[None]:
    probe = app[METRICS].probe
    probe.start()
    yield
    await probe.stop()


def install_metrics(app: web.Application) -> None:
    """GET /metrics with this app's own registry, and the lag probe for the app's lifetime."""
    probe = LoopLagProbe()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(app[LIFECYCLE], probe))
    app[METRICS] = Metrics(registry=registry, probe=probe)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_lag_probe)
