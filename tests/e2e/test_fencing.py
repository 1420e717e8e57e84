"""A process stopped (SIGSTOP) past its lease while its run streams: the other process takes the run
over and finishes it (run_resumed, then the answer); woken (SIGCONT), the stalled owner's late writes
are refused. Exactly one terminal event, the last, on every socket and in the log. Real processes,
PostgreSQL and a private Redis."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

from tests.e2e.client import read_until, register, until_ready
from tests.e2e.cluster import (
    Frame,
    assert_complete,
    cluster,
    connected,
    drain,
    end_of,
    events_of,
    on,
    post,
    run_status,
)
from tests.e2e.processes import ProcessHarness, procs_fixture  # noqa: F401  (the `procs` fixture)
from tests.helpers import eventually

STORY = "tell me a story"  # ~32 streamed pieces
DELAY_MS = 100  # ~3 s of streaming: the stop lands mid-run


async def test_a_stalled_owner_woken_after_a_takeover_writes_nothing_more(
        procs: ProcessHarness, tmp_path: Path) -> None:
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=DELAY_MS) as c:
        user = await register(c.a.server)
        on_a: list[Frame] = []
        on_b: list[Frame] = []
        async with contextlib.AsyncExitStack() as stack:
            ws_a = await connected(on(user, c.a))
            stack.push_async_callback(ws_a.close)
            ws_b = await connected(on(user, c.b))
            stack.push_async_callback(ws_b.close)
            run_id = await post(user, c.b, STORY)  # B runs it
            await read_until(ws_a, lambda f: f.get("run_id") == run_id and f.get("seq", 0) >= 4, on_a)

            c.b.send(signal.SIGSTOP)  # B stalls mid-stream, holding its lease
            try:
                # A takes it over and goes on (a story has no tool step: from the start).
                end = await read_until(ws_a, end_of(run_id), on_a, timeout=60)
            finally:
                c.b.send(signal.SIGCONT)
            # Woken, B goes on streaming until its first late write is refused, then stops.
            await eventually(lambda: "was taken over by another process" in c.b.log(), timeout=30,
                             what="B to learn it lost the run")
            await drain(ws_a, on_a)
            await read_until(ws_b, end_of(run_id), on_b, timeout=30)
            await drain(ws_b, on_b)

        assert end["type"] == "agent_completed", end
        for seen in (on_a, on_b):
            assert_complete(events_of(seen, run_id), "agent_completed")  # one terminal, the last, no gap
            resumed = [f for f in events_of(seen, run_id) if f["type"] == "run_resumed"]
            assert [f["data"]["attempt"] for f in resumed] == [1], resumed
        assert events_of(on_b, run_id) == events_of(on_a, run_id)
        for process in (c.a, c.b):  # and the log: a full replay from either process
            async with on(user, process).connect() as ws:
                await until_ready(ws)
                await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 0}))
                replayed: list[Frame] = []
                await read_until(ws, end_of(run_id), replayed)
                await drain(ws, replayed)
            assert events_of(replayed, run_id) == events_of(on_a, run_id)
        body = await run_status(user, c.a, run_id)
        assert body["status"] == "completed", body
