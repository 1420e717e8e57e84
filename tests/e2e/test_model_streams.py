"""A real model's token stream end to end: many small pieces, grouped into deltas, stored and
resumed exactly (issue 16: grouping costs nothing of the durability promise)."""

from __future__ import annotations

import json

from tests.e2e.client import register, run_events, start_chat, until_ready
from tests.integration import fake_openai_server as reply
from tests.integration.fake_openai_server import FakeOpenAI

PIECES = [f"w{i:02d} " for i in range(40)]


async def test_pieces_are_grouped_into_deltas_that_a_resume_replays_exactly(
    make_server, fake_openai: FakeOpenAI,
) -> None:
    fake = fake_openai
    fake.always(reply.paced(*PIECES, pause_s=0.005))
    server = await make_server(model={"provider": "openai", "base_url": fake.base_url,
                                      "api_key": "sk-test-fake", "name": "test-model",
                                      "max_retries": 0},
                               runs={"delta_window_ms": 30})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        ack = await start_chat(ws, "Stream me an answer.")
        live = await run_events(ws, ack["run_id"])
    assert live[-1]["type"] == "agent_completed", live[-1]
    deltas = [e for e in live if e["type"] == "agent_message_delta"]
    answer = "".join(PIECES)
    assert "".join(e["data"]["delta"] for e in deltas) == answer == live[-1]["data"]["text"]
    # 40 pieces 5 ms apart in a 30 ms window: grouped (each piece alone would take 40 deltas).
    assert len(deltas) < len(PIECES)
    assert [e["seq"] for e in live] == list(range(1, len(live) + 1))

    # What was delivered live is what was stored: a resume from the start replays it exactly.
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "resume", "run_id": ack["run_id"], "after_seq": 0}))
        replayed = await run_events(ws, ack["run_id"])
    assert replayed == live
    status, messages = await user.http("GET", f"/api/threads/{ack['thread_id']}/messages")
    assert status == 200 and messages["messages"][-1]["text"] == answer
