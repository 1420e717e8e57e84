"""Models and tools that fail, hang, talk garbage or burn CPU: clean errors, and everyone else goes on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest

from domain.context import UserExecutionContext
from domain.errors import ModelError
from domain.llm import ToolCallDelta, ToolSpec
from entrypoints.appkeys import services
from tests.e2e.client import Server, chat, frames_until, read_until, register, until_ready
from tests.fakes import ScriptedModel
from tests.overrides import replace_calculator, replace_model


@pytest.mark.parametrize(("model", "code"), [
    (ScriptedModel(ModelError("The model service answered 503; try again later.",
                              code="model_unavailable")), "model_unavailable"),
    (ScriptedModel(RuntimeError("connection pool internals")), "internal_error"),
    (ScriptedModel(hang=True), "model_timeout"),
    (ScriptedModel([ToolCallDelta(index=0, arguments='{"x": 1}')]), "model_bad_output"),
    (ScriptedModel([object()]), "model_bad_output"),  # type: ignore[list-item]
])
async def test_a_failing_model_ends_the_run_with_a_clear_agent_error(make_server, model, code) -> None:
    server: Server = await make_server(replace_model(model), model={"timeout_s": 0.5})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        ack, events = await chat(ws, "hello")
        assert events[0]["type"] == "agent_started"
        assert events[-1]["type"] == "agent_error" and events[-1]["data"]["code"] == code
        assert events[-1]["data"]["message"] and "internals" not in events[-1]["data"]["message"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    _status, run = await user.http("GET", f"/api/runs/{ack['run_id']}")
    assert run["status"] == "failed"
    assert services(server.app).factory.metrics().active == 0


class ExplodingTool:
    spec = ToolSpec(name="calculator", description="always fails",
                    parameters={"type": "object", "properties": {"expression": {"type": "string"}}})

    async def __call__(self, context: UserExecutionContext, arguments: Mapping[str, Any], *,
                       call_key: str) -> Any:
        raise RuntimeError("disk on fire")


class BurnCpu:
    """Two seconds of pure-Python work, declared blocking so the toolbox runs it off the loop."""

    spec = ToolSpec(name="calculator", description="slow",
                    parameters={"type": "object", "properties": {"expression": {"type": "string"}}})

    def call_blocking(self, context: UserExecutionContext, arguments: Mapping[str, Any], *,
                      call_key: str) -> Any:
        deadline, n = time.monotonic() + 2.0, 0
        while time.monotonic() < deadline:
            n += 1
        return {"expression": arguments.get("expression"), "value": 391, "spins": n}


async def test_a_raising_tool_gives_tool_completed_with_error_and_the_agent_answers(make_server) -> None:
    server: Server = await make_server(replace_calculator(ExplodingTool()))
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        _, events = await chat(ws, "What is 17 * 23?")
    done = next(e for e in events if e["type"] == "tool_completed")
    assert done["data"]["error"] == "calculator failed unexpectedly" and "result" not in done["data"]
    assert "disk on fire" not in json.dumps(events)
    assert events[-1]["type"] == "agent_completed" and "couldn't" in events[-1]["data"]["text"]


async def test_a_cpu_heavy_tool_does_not_stop_other_users_streams(make_server) -> None:
    server: Server = await make_server(replace_calculator(BurnCpu()), model={"builtin_delay_ms": 20})
    burner, other = await register(server), await register(server)
    async with burner.connect() as ws_burn, other.connect() as ws_other:
        await until_ready(ws_burn)
        await until_ready(ws_other)
        await ws_burn.send(json.dumps({"type": "chat", "message": "What is 17 * 23?"}))
        await read_until(ws_burn, lambda f: f["type"] == "tool_executing")
        gaps, last = [], time.monotonic()
        started = last
        while time.monotonic() - started < 1.5:  # the other user chats while the tool burns
            await ws_other.send(json.dumps({"type": "chat", "message": "tell me a story"}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws_other.recv(), 5))
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                if frame["type"] == "agent_completed":
                    break
        burn_events = await frames_until(ws_burn, lambda f: f["type"] == "agent_completed")
    # On the loop the burn would stall everyone for 2 s; in a thread it only shares the GIL
    # (gaps up to ~0.35 s seen on 2 cores, with the database thread competing too).
    assert max(gaps) < 1.0, f"the other user's stream stalled for {max(gaps):.2f} s"
    done = next(e for e in burn_events if e["type"] == "tool_completed")
    assert done["data"]["duration_ms"] >= 2000 and "391" in burn_events[-1]["data"]["text"]
