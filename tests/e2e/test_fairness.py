"""Fair under abuse: normal users keep their latency beside hostile sockets, and memory comes back.

A real server process (SQLite, the builtin model, every limit at its default for every user),
normal users chatting at a person's pace in this process, and each kind of hostile socket from
bench/hostile.py in a process of its own, one kind after the other and then all at once
(bench/fairness.py `measure`, shorter than the bench).
The issue's target is p99 beside them at most 1.5x of alone; on a busy two-core machine the
server, the normal users and the hostile process share the cores, so this asserts a looser bound
and docs/performance.md ("Fair under abuse") has the measured figures and the command.
"""

from __future__ import annotations

from bench.fairness import SERVER_ENV, measure
from bench.hostile import KINDS
from tests.e2e.processes import (
    ProcessHarness,
    procs_fixture,  # noqa: F401
)

USERS, SOCKETS, PHASE_S, QUIET_S, PACE_S = 30, 20, 6.0, 1.5, 2.0
# Measured 1.0x to 1.4x per kind and 1.1x for all kinds at once on a quiet machine, 1.7x for 80
# sockets (docs/performance.md); the suite runs on a busy two-core machine where the hostile
# process takes CPU from the server, so this bound catches a return of the unbounded costs
# (17.8x when a closed flooder's buffered resumes were each replayed for nobody).
P99_BOUND = 6.0  # beside stress-ng --cpu 2: 1.1x to 3.6x
# Measured +5-9% across all phases (119 -> 125-129 MiB, quiet machine); +16-23% before the receive
# queue was bounded (ws_receive_queue_bytes), +63% before the budgets. Looser here: beside other
# tests and stress-ng, and in shorter phases.
RSS_MARGIN = 0.25
STALL_S = 1.0  # the server's WS_SEND_STALL_S here


async def test_hostile_sockets_cost_their_own_users_not_the_others(procs: ProcessHarness) -> None:
    env = procs.env(**{key.removeprefix("GOLDENPATH_"): value for key, value in SERVER_ENV.items()},
                    SERVER__WS_SEND_STALL_S=STALL_S, LOG__LEVEL="WARNING")
    server = await procs.start_ready(env)
    result = await measure(server.base_url, server.pid, users=USERS, sockets=SOCKETS, phase_s=PHASE_S,
                           quiet_s=QUIET_S, pace_s=PACE_S, kinds=(*KINDS, "all"))

    assert not result["failed"], result["failed"]
    rows = {row["phase"]: row for row in result["rows"]}
    for kind, row in rows.items():
        assert row["runs"] > 0, f"no normal run ended beside {kind}: {row}"
        if kind != "alone":
            assert row["ratio"] <= P99_BOUND, f"beside {kind}: {row}"
            assert row["rss_after"] <= result["rss_before"] * (1 + RSS_MARGIN), f"after {kind}: {row}"
    # Not asserted yet: never-reading sockets cut within a phase (the kernel's buffers take longer
    # than a short phase to fill at a chat's pace; docs/performance.md, "Fair under abuse").
