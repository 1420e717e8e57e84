"""Tools from MCP servers, end to end: a real goldenpath over real sockets, real MCP servers built
with the official SDK (tests/integration/mcp_servers.py: over Streamable HTTP in a process of their
own, and over stdio), the builtin model's "use <tool> with <JSON object>".

- each user's own server, with their own credentials: 50 users at once on one shared MCP server,
  each call carries its own user's token and each result reaches that user only;
- the operator's servers (settings): `{user_id}` in a header, stdio, an allow-list;
- GET /api/tools, a server that is down, the limits (timeout, result size, calls per run);
- SSRF through the API, and at connection time;
- the `ask` policy on MCP tools (the approval flow);
- a real model (the OpenAI adapter, against a fake OpenAI-compatible server) sees the MCP tools'
  schemas.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from domain.entities import McpServer
from tests.e2e.client import TERMINAL, Frame, User, read_until, recv, register, until_ready
from tests.helpers import eventually
from tests.integration import fake_openai_server as reply
from tests.integration.fake_openai_server import FakeOpenAI
from tests.integration.mcp_servers import HttpMcpServer, closed_port_url, stdio_command

BUILTIN = {"calculator", "save_note", "search_notes", "delete_notes", "current_time"}
TEST_TOOLS = {"echo_token", "whoami", "add", "fail", "slow", "huge", "lookup"}
USERS = 50
# Two MCP calls in one run (the builtin model's steps are split at ';': no ';' in the JSON).
TWO_ADDS = ('Step by step: use {server}__add with {{"a": 1, "b": 2}}; '
            'use {server}__add with {{"a": 2, "b": 3}}')


@pytest.fixture(scope="module")
def mcp() -> Iterator[HttpMcpServer]:
    """One real MCP server (Streamable HTTP, its own process) every test of this module shares."""
    with HttpMcpServer() as running:
        yield running


def private(**more: Any) -> dict[str, Any]:
    """mcp settings that let users' servers be on 127.0.0.1 (where the test server is)."""
    return {"allow_private_networks": True, **more}


# -- talking ----------------------------------------------------------------------------------------


async def ask(ws: Any, message: str, frames: list[Frame] | None = None, timeout: float = 30) -> list[Frame]:
    """Send one chat frame; every frame read (kept in `frames`) up to the run's terminal event;
    returns the run's own frames (ack first)."""
    frames = [] if frames is None else frames
    start = len(frames)
    await ws.send(json.dumps({"type": "chat", "message": message}))
    ack = await read_until(ws, lambda f: f["type"] in {"ack", "error"}, frames, timeout)
    assert ack["type"] == "ack", ack
    await read_until(ws, lambda f: f.get("run_id") == ack["run_id"] and f["type"] in TERMINAL, frames,
                     timeout)
    return [f for f in frames[start:] if f.get("run_id") == ack["run_id"]]


def completed_tools(frames: list[Frame]) -> list[dict[str, Any]]:
    return [f["data"] for f in frames if f["type"] == "tool_completed"]


def only_tool(frames: list[Frame]) -> dict[str, Any]:
    done = completed_tools(frames)
    assert len(done) == 1, done
    return done[0]


def value_of(result: Any) -> Any:
    """An MCP result as the run shows it: the structured content ({"result": ...}) or the text."""
    return result["result"] if isinstance(result, dict) and set(result) == {"result"} else result


async def use(user: User, message: str, timeout: float = 30) -> list[Frame]:
    """One run on a fresh socket; the run's frames, ending with its terminal one."""
    async with user.connect() as ws:
        await until_ready(ws)
        return await ask(ws, message, timeout=timeout)


async def add_server(user: User, name: str, url: str, **fields: Any) -> tuple[int, Any]:
    return await user.http("POST", "/api/mcp/servers", json={"name": name, "url": url, **fields})


async def tools_of(user: User) -> dict[str, Any]:
    status, body = await user.http("GET", "/api/tools")
    assert status == 200, body
    return body


async def listed(user: User, *names: str, timeout: float = 20) -> dict[str, Any]:
    """GET /api/tools once it lists these tools (a server's first listing may fail on a busy
    machine; it is tried again after a backoff): its body."""
    async def check() -> dict[str, Any] | None:
        body = await tools_of(user)
        return body if set(names) <= {tool["name"] for tool in body["tools"]} else None

    return await eventually(check, timeout, what=f"GET /api/tools listing {names}", interval=0.2)


# -- 1. isolation -------------------------------------------------------------------------------------


async def test_fifty_users_on_one_server_each_with_their_own_token(make_server, mcp: HttpMcpServer,
                                                                    tmp_path: Path) -> None:
    server = await make_server(mcp=private())
    users = await asyncio.gather(*(register(server, f"vault_{i:02d}_{secrets.token_hex(2)}")
                                   for i in range(USERS)))
    tokens = {user.user_id: f"tok-{i:02d}-{secrets.token_hex(12)}" for i, user in enumerate(users)}
    logged: list[str] = []
    sink = logger.add(lambda message: logged.append(str(message)), level="DEBUG",
                      format="{message} {extra} {exception}")
    try:
        created = await asyncio.gather(*(
            add_server(user, "vault", mcp.url, headers={"Authorization": f"Bearer {tokens[user.user_id]}"})
            for user in users))
        for status, body in created:
            assert status == 201, body
            assert body["name"] == "vault" and body["url"] == mcp.url
            assert body["header_names"] == ["Authorization"] and body["approval"] == "auto"
        assert not any(token in json.dumps(body) for _, body in created for token in tokens.values())

        start = asyncio.Event()
        connected = 0

        async def one(user: User) -> list[Frame]:
            nonlocal connected
            frames: list[Frame] = []
            async with user.connect() as ws:
                frames.append(await until_ready(ws))
                connected += 1
                await start.wait()
                run = await ask(ws, "use vault__echo_token with {}", frames, timeout=60)
                # A ping's pong comes after every frame sent to this socket before it: none is missed.
                await ws.send(json.dumps({"type": "ping"}))
                await read_until(ws, lambda f: f["type"] == "pong", frames, 30)
            assert run[-1]["type"] == "agent_completed", run
            done = only_tool(run)
            assert done["tool"] == "vault__echo_token" and "error" not in done, done
            assert value_of(done["result"]) == f"Bearer {tokens[user.user_id]}", done
            assert tokens[user.user_id] in run[-1]["data"]["text"]
            return frames

        tasks = [asyncio.create_task(one(user)) for user in users]
        # Every socket open before anyone chats: each run has 49 foreign sockets it could leak to.
        await eventually(lambda: connected == USERS or any(t.done() for t in tasks), 60,
                         what=f"{USERS} sockets ready", interval=0.05)
        start.set()
        every = await asyncio.gather(*tasks)
        for user, frames in zip(users, every, strict=True):
            wire = json.dumps(frames)
            strangers = [other for other, token in tokens.items() if token in wire and other != user.user_id]
            assert not strangers, f"{user.username}'s socket carried the tokens of {strangers}"

        # Listing never shows a header's value, only its name.
        listings = await asyncio.gather(*(user.http("GET", "/api/mcp/servers") for user in users))
        for user, (status, body) in zip(users, listings, strict=True):
            assert status == 200
            [mine] = body["servers"]
            assert set(mine) == {"name", "url", "header_names", "approval", "created_at"}
            assert mine["header_names"] == ["Authorization"]
            assert not any(token in json.dumps(body) for token in tokens.values())
            tools = await tools_of(user)
            assert not any(token in json.dumps(tools) for token in tokens.values())
    finally:
        logger.remove(sink)
    leaked = [user_id for user_id, token in tokens.items() if any(token in line for line in logged)]
    assert not leaked, f"the logs hold the MCP tokens of {len(leaked)} users"
    # Stored encrypted: no token in the database's files (the run's own events hold the results,
    # which echo the token: those are the user's data, so the servers' headers are checked via a
    # token no tool ever returned).
    unused = f"tok-unused-{secrets.token_hex(12)}"
    status, _ = await add_server(users[0], "spare", mcp.url, headers={"X-Api-Key": unused})
    assert status == 201
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("goldenpath.db*"))
    assert users[0].username.encode() in stored  # these are the files the server writes
    assert unused.encode() not in stored, "an MCP server's header is stored in the clear"

    # Another user's server name is unknown: to a user with no server, and to the API.
    eve = await register(server)
    run = await use(eve, "use vault__echo_token with {}")
    done = only_tool(run)
    assert done["error"] == "there is no tool named 'vault__echo_token'", done
    assert "result" not in done and run[-1]["type"] == "agent_completed"
    assert not any(token in json.dumps(run) for token in tokens.values())
    assert "vault__echo_token" not in {tool["name"] for tool in (await tools_of(eve))["tools"]}
    assert (await eve.http("GET", "/api/mcp/servers")) == (200, {"servers": []})
    status, body = await eve.http("DELETE", "/api/mcp/servers/vault")
    assert status == 404 and body["error"]["code"] == "not_found", body

    # A user who removes theirs loses its tools at once; the others keep theirs.
    first, second = users[0], users[1]
    assert (await first.http("DELETE", "/api/mcp/servers/vault"))[0] == 204
    assert (await first.http("DELETE", "/api/mcp/servers/vault"))[0] == 404
    done = only_tool(await use(first, "use vault__echo_token with {}"))
    assert done["error"] == "there is no tool named 'vault__echo_token'", done
    done = only_tool(await use(second, "use vault__echo_token with {}"))
    assert value_of(done["result"]) == f"Bearer {tokens[second.user_id]}", done


async def test_a_server_that_echoes_the_token_in_an_error_does_not_leak_it(make_server,
                                                                         mcp: HttpMcpServer) -> None:
    server = await make_server(mcp=private())
    alice = await register(server)
    token = f"tok-{secrets.token_hex(16)}"
    assert (await add_server(alice, "vault", mcp.url, headers={"Authorization": f"Bearer {token}"}))[0] == 201
    run = await use(alice, 'use vault__fail with {"reason": "token"}')
    done = only_tool(run)
    assert "refused" in done["error"] and token not in done["error"], done
    assert token not in json.dumps(run) and run[-1]["type"] == "agent_completed"


# -- 2. operator servers -------------------------------------------------------------------------------


async def test_operator_servers_http_with_user_id_stdio_and_an_allow_list(make_server,
                                                                        mcp: HttpMcpServer) -> None:
    server = await make_server(mcp=private(servers=[
        {"name": "ops", "url": mcp.url, "headers": {"X-User": "{user_id}"}},
        {"name": "local", "command": stdio_command()},
        {"name": "narrow", "url": mcp.url, "tools": ["add"]},
    ]))
    alice, bob = await register(server), await register(server)
    for user in (alice, bob):
        done = only_tool(await use(user, "use ops__whoami with {}"))
        assert value_of(done["result"]) == user.user_id, done

    assert (await add_server(alice, "mine", mcp.url, approval="ask"))[0] == 201
    body = await listed(alice, "ops__add", "local__add", "narrow__add", "mine__add")
    assert body["unreachable"] == []
    tools = {tool["name"]: tool for tool in body["tools"]}
    assert set(tools) >= BUILTIN
    for name in BUILTIN:
        assert tools[name]["source"] == "builtin", tools[name]
        assert "server" not in tools[name] and "owner" not in tools[name], tools[name]
        assert tools[name]["input_schema"]["type"] == "object"
    assert tools["delete_notes"]["approval"] == "ask" and tools["calculator"]["approval"] == "auto"
    for server_name, owner, approval in (("ops", "operator", "auto"), ("local", "operator", "auto"),
                                         ("mine", "user", "ask")):
        names = {name for name in tools if name.startswith(f"{server_name}__")}
        assert names == {f"{server_name}__{tool}" for tool in TEST_TOOLS}, names
        for name in names:
            tool = tools[name]
            assert (tool["source"], tool["server"], tool["owner"], tool["approval"]) == \
                ("mcp", server_name, owner, approval), tool
    assert {name for name in tools if name.startswith("narrow__")} == {"narrow__add"}
    add = tools["ops__add"]
    assert add["description"] == "Adds two integers."
    assert add["input_schema"]["type"] == "object"
    assert add["input_schema"]["required"] == ["a", "b"]
    assert {key: value["type"] for key, value in add["input_schema"]["properties"].items()} == \
        {"a": "integer", "b": "integer"}
    # Bob sees the operator's tools, not Alice's own server.
    bobs = await listed(bob, "ops__add", "local__add", "narrow__add")
    assert not any(tool["name"].startswith("mine__") for tool in bobs["tools"])

    # The stdio server works as the HTTP one; the allow-list hides the others, even by name.
    done = only_tool(await use(bob, 'use local__add with {"a": 2, "b": 40}'))
    assert value_of(done["result"]) == 42, done
    done = only_tool(await use(bob, 'use local__lookup with {"key": "k1"}'))
    assert value_of(done["result"]) == "value of k1", done
    done = only_tool(await use(bob, 'use narrow__add with {"a": 1, "b": 1}'))
    assert value_of(done["result"]) == 2, done
    done = only_tool(await use(bob, "use narrow__whoami with {}"))
    assert done["error"] == "there is no tool named 'narrow__whoami'", done
    # A user may not take an operator server's name.
    status, body = await add_server(bob, "ops", mcp.url)
    assert status == 409 and body["error"]["code"] == "conflict", body


# -- 3. a server that is down -----------------------------------------------------------------------


async def test_a_server_that_is_down_fails_its_calls_not_the_run(make_server, mcp: HttpMcpServer) -> None:
    server = await make_server(mcp=private())
    alice = await register(server)
    assert (await add_server(alice, "down", closed_port_url()))[0] == 201
    assert (await add_server(alice, "up", mcp.url))[0] == 201
    body = await listed(alice, "up__add")
    [entry] = body["unreachable"]
    assert entry["server"] == "down"
    assert entry["reason"] == "the MCP server 'down' could not be reached: connection refused", entry
    assert not any(tool["name"].startswith("down__") for tool in body["tools"])
    async with alice.connect() as ws:
        await until_ready(ws)
        run = await ask(ws, "use down__anything with {}")
        done = only_tool(run)
        assert "'down'" in done["error"] and "could not be reached" in done["error"], done
        assert run[-1]["type"] == "agent_completed"
        assert "could not be reached" in run[-1]["data"]["text"]
        # The socket stays, and the other server's tools still work on it.
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"
        run = await ask(ws, 'use up__add with {"a": 20, "b": 22}')
        assert value_of(only_tool(run)["result"]) == 42


# -- 4. limits ----------------------------------------------------------------------------------------


async def test_timeout_result_size_and_calls_per_run(make_server, mcp: HttpMcpServer) -> None:
    server = await make_server(mcp={"timeout_s": 2, "servers": [{"name": "ops", "url": mcp.url}]})
    alice = await register(server)
    await listed(alice, "ops__slow")  # listed once (cached): the calls below are the MCP requests timed

    run = await use(alice, 'use ops__slow with {"seconds": 30}')
    done = only_tool(run)
    assert done["error"] == "the MCP server 'ops' did not answer within 2 s", done
    assert run[-1]["type"] == "agent_completed"

    # Size and calls on a server with the default timeout: 2 s would time out any call on a busy machine.
    server = await make_server(mcp={"max_result_chars": 100, "max_calls_per_run": 1,
                                    "servers": [{"name": "ops", "url": mcp.url}]})
    alice = await register(server)
    done = only_tool(await use(alice, 'use ops__huge with {"chars": 5000}'))
    assert "error" not in done, done
    assert done["result"] == ("x" * 100
                              + "\n[cut: the result was 5000 characters; only the first 100 are shown]")

    run = await use(alice, TWO_ADDS.format(server="ops"))
    first, second = completed_tools(run)
    assert value_of(first["result"]) == 3, first
    assert second["error"] == ("this run has made 1 calls of MCP tools, the most one run may make; "
                               "answer with what you have"), second
    assert run[-1]["type"] == "agent_completed"
    # The limit is per run: the next run calls again.
    assert value_of(only_tool(await use(alice, 'use ops__add with {"a": 2, "b": 3}'))["result"]) == 5


# -- 5. SSRF ------------------------------------------------------------------------------------------

REFUSED = [
    ("http://127.0.0.1:{port}/mcp", "127.0.0.1 is a loopback address"),
    ("http://10.0.0.5/", "10.0.0.5 is a private address"),
    ("http://169.254.169.254/latest", "169.254.169.254 is a link-local address"),
    ("http://localhost:8080/", "localhost resolves to"),
    # Other spellings of inside addresses, which the resolver turns into them.
    ("http://2130706433/mcp", "resolves to 127.0.0.1, a loopback address"),
    ("http://0x7f000001/mcp", "resolves to 127.0.0.1, a loopback address"),
    ("http://127.1:{port}/mcp", "resolves to 127.0.0.1, a loopback address"),
    ("http://0.0.0.0:{port}/mcp", "0.0.0.0 is an unspecified address"),
    ("http://100.64.0.1/", "100.64.0.1 is"),
    ("http://192.168.1.1/", "192.168.1.1 is a private address"),
]


async def test_urls_reaching_private_networks_are_refused_unless_allowed(make_server,
                                                                         mcp: HttpMcpServer) -> None:
    server = await make_server()
    alice = await register(server)
    for index, (template, says) in enumerate(REFUSED):
        url = template.format(port=mcp.port)
        status, body = await add_server(alice, f"s{index}", url)
        assert status == 422, (url, status, body)
        assert body["error"]["code"] == "validation_error", (url, body)
        message = body["error"]["message"]
        assert says in message, (url, message)
        assert "loopback, private or link-local" in message, (url, message)
    assert (await alice.http("GET", "/api/mcp/servers")) == (200, {"servers": []})

    # A bracketed IPv6 loopback is refused too (how clearly: the next test).
    status, body = await add_server(alice, "six", "http://[::1]/")
    assert status == 422 and body["error"]["code"] == "validation_error", body
    assert (await alice.http("GET", "/api/mcp/servers")) == (200, {"servers": []})

    allowing = await make_server(mcp=private())
    bob = await register(allowing)
    status, body = await add_server(bob, "local", mcp.url)
    assert status == 201, body
    assert (await bob.http("GET", "/api/mcp/servers"))[1]["servers"][0]["url"] == mcp.url


async def test_bracketed_ipv6_urls_are_judged_by_their_address(make_server) -> None:
    """BUG (found by this test): entrypoints/http/schemas.py MCP_URL says "a bracketed IPv6 address is
    taken too", but its host part is [A-Za-z0-9.-]+: every IPv6 literal is refused by the schema, so
    http://[::1]/ gets a 422 whose message is the raw regular expression (not "a loopback address"),
    and a public IPv6 server cannot be registered at all."""
    server = await make_server()
    alice = await register(server)
    status, body = await add_server(alice, "six", "http://[::1]/")
    assert status == 422 and body["error"]["code"] == "validation_error", body
    assert "::1 is a loopback address" in body["error"]["message"], body
    status, body = await add_server(alice, "public6", "http://[2606:4700:4700::1111]/mcp")
    assert status == 201, body


async def test_a_stored_url_is_checked_again_at_each_connection(make_server, mcp: HttpMcpServer) -> None:
    """A server stored while private networks were allowed (or whose name resolved elsewhere then) is
    refused when the service connects, not only when it was registered."""
    server = await make_server()
    alice = await register(server)
    repository = await server.container.mcp_server_repository()
    await repository.add(McpServer(user_id=alice.user_id, name="inside", url=mcp.url,
                                   created_at=datetime.now(UTC),
                                   headers={"Authorization": "Bearer tok-inside"}))
    body = await tools_of(alice)
    [entry] = body["unreachable"]
    assert entry["server"] == "inside"
    assert "127.0.0.1 is a loopback address" in entry["reason"], entry
    run = await use(alice, "use inside__echo_token with {}")
    done = only_tool(run)
    assert "'inside'" in done["error"] and "loopback" in done["error"], done
    assert "tok-inside" not in json.dumps(run) and run[-1]["type"] == "agent_completed"


# -- 6. the ask policy ------------------------------------------------------------------------------


async def approve_and_finish(ws: Any, tool: str) -> list[Frame]:
    """Ask for `tool`'s sum of 1 and 2, check the question, approve over the socket: the rest of the run."""
    await ws.send(json.dumps({"type": "chat", "message": f'use {tool} with {{"a": 1, "b": 2}}'}))
    ack = await read_until(ws, lambda f: f["type"] in {"ack", "error"})
    assert ack["type"] == "ack", ack
    asked = await read_until(ws, lambda f: f.get("run_id") == ack["run_id"]
                             and f["type"] in {"approval_required", *TERMINAL, "tool_executing"})
    assert asked["type"] == "approval_required", asked
    assert asked["data"]["tool"] == tool and asked["data"]["arguments"] == {"a": 1, "b": 2}, asked
    await ws.send(json.dumps({"type": "approval", "run_id": ack["run_id"],
                              "tool_call_id": asked["data"]["tool_call_id"], "approve": True}))
    frames: list[Frame] = []
    await read_until(ws, lambda f: f.get("run_id") == ack["run_id"] and f["type"] in TERMINAL, frames, 30)
    rest = [f for f in frames if f.get("run_id") == ack["run_id"]]
    kinds = [f["type"] for f in rest]
    assert kinds[:3] == ["approval_decided", "tool_executing", "tool_completed"], kinds
    assert kinds[-1] == "agent_completed" and kinds.count("tool_completed") == 1, kinds
    assert rest[0]["data"] == {"tool_call_id": asked["data"]["tool_call_id"], "approved": True, "by": "user"}
    assert rest[1]["data"]["tool"] == tool and rest[1]["data"]["arguments"] == {"a": 1, "b": 2}
    assert rest[2]["data"]["tool"] == tool and value_of(rest[2]["data"]["result"]) == 3, rest[2]
    return rest


async def test_mcp_tools_under_ask_wait_for_their_user(make_server, mcp: HttpMcpServer) -> None:
    server = await make_server(mcp=private(servers=[{"name": "guarded", "url": mcp.url, "approval": "ask"},
                                                    {"name": "free", "url": mcp.url}]))
    alice = await register(server)
    assert (await add_server(alice, "mine", mcp.url, approval="ask"))[0] == 201
    status, body = await alice.http("GET", "/api/mcp/servers")
    assert status == 200 and body["servers"][0]["approval"] == "ask"
    tools = {tool["name"]: tool for tool in (await listed(alice, "mine__add", "guarded__add"))["tools"]}
    assert tools["mine__add"]["approval"] == "ask" and tools["guarded__add"]["approval"] == "ask"
    assert tools["free__add"]["approval"] == "auto"
    async with alice.connect() as ws:
        await until_ready(ws)
        await approve_and_finish(ws, "mine__add")
        await approve_and_finish(ws, "guarded__add")
        # An auto tool of the same kind runs without asking.
        run = await ask(ws, 'use free__add with {"a": 1, "b": 2}')
        assert "approval_required" not in [f["type"] for f in run]
        assert value_of(only_tool(run)["result"]) == 3


async def test_approvals_tools_setting_overrides_an_mcp_tools_policy(make_server, mcp: HttpMcpServer) -> None:
    server = await make_server(mcp={"servers": [{"name": "ops", "url": mcp.url}]},
                               approvals={"tools": {"ops__add": "ask"}})
    alice = await register(server)
    tools = {tool["name"]: tool for tool in (await listed(alice, "ops__add"))["tools"]}
    assert tools["ops__add"]["approval"] == "ask" and tools["ops__whoami"]["approval"] == "auto"
    async with alice.connect() as ws:
        await until_ready(ws)
        await approve_and_finish(ws, "ops__add")


# -- 7. a real model sees the MCP tools ---------------------------------------------------------------


async def test_a_real_model_is_offered_the_mcp_tools_with_their_schemas(make_server,
                                                                        mcp: HttpMcpServer) -> None:
    fake = FakeOpenAI()
    await fake.start()
    try:
        server = await make_server(
            model={"provider": "openai", "base_url": fake.base_url, "api_key": "sk-test-fake",
                   "name": "test-model", "max_retries": 0},
            mcp=private(servers=[{"name": "ops", "url": mcp.url, "tools": ["add", "whoami"]}]))
        alice = await register(server)
        assert (await add_server(alice, "mine", mcp.url))[0] == 201
        await listed(alice, "ops__add", "mine__lookup")
        fake.script(reply.tool_call("mine__add", '{"a": 4', ', "b": 5}'), reply.text("4 + 5 = ", "9."))
        run = await use(alice, "What is 4 + 5, by my own server?")
        assert run[-1]["type"] == "agent_completed", run
        assert run[-1]["data"]["text"] == "4 + 5 = 9."
        done = only_tool(run)
        assert done["tool"] == "mine__add" and value_of(done["result"]) == 9, done

        first, second = (received.body for received in fake.received)
        functions = {tool["function"]["name"]: tool for tool in first["tools"]}
        assert BUILTIN | {"ops__add", "ops__whoami"} <= set(functions)
        assert {name for name in functions if name.startswith("ops__")} == {"ops__add", "ops__whoami"}
        assert {name for name in functions if name.startswith("mine__")} == {f"mine__{t}" for t in TEST_TOOLS}
        add = functions["mine__add"]
        assert add["type"] == "function"
        assert add["function"]["description"] == "Adds two integers."
        parameters = add["function"]["parameters"]
        assert parameters["type"] == "object" and parameters["required"] == ["a", "b"]
        assert {key: value["type"] for key, value in parameters["properties"].items()} == \
            {"a": "integer", "b": "integer"}
        assert functions["mine__lookup"]["function"]["parameters"]["required"] == ["key"]
        # The tool's result goes back to the model as the tool message of that call.
        tool_message = next(m for m in second["messages"] if m["role"] == "tool")
        assert tool_message["tool_call_id"] == "call_abc123"
        assert re.search(r"\b9\b", tool_message["content"]), tool_message
        # Bob's model is not offered Alice's server.
        bob = await register(server)
        fake.script(reply.text("hello"))
        assert (await use(bob, "hi"))[-1]["type"] == "agent_completed"
        offered = {tool["function"]["name"] for tool in fake.received[-1].body["tools"]}
        assert "ops__add" in offered and not any(name.startswith("mine__") for name in offered)
    finally:
        await fake.stop()


async def test_waiting_for_approval_does_not_reset_the_calls_per_run_limit(make_server,
                                                                           mcp: HttpMcpServer) -> None:
    """max_calls_per_run is per run: a run that waits for its user between two calls still makes
    at most that many.

    BUG (found by this test): the budget (adapters/mcp/tools.py RunBudget) lives in the toolbox
    McpToolSource.tools_for() builds, and a run gets a new toolbox each time an engine is made for
    it (domain/factory.py create_for_user), which an approval's decision (or a takeover) does: each
    wait starts the count again, so a run under `ask` makes one call per approval, past the limit."""
    server = await make_server(mcp=private(max_calls_per_run=1))
    alice = await register(server)
    assert (await add_server(alice, "mine", mcp.url, approval="ask"))[0] == 201
    await listed(alice, "mine__add")
    async with alice.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "chat", "message": TWO_ADDS.format(server="mine")}))
        ack = await read_until(ws, lambda f: f["type"] in {"ack", "error"})
        assert ack["type"] == "ack", ack
        frames: list[Frame] = []
        for _ in range(5):  # two calls ask; a run that asks on and on fails here, it does not loop
            frame = await read_until(ws, lambda f: f.get("run_id") == ack["run_id"]
                                     and f["type"] in {"approval_required", *TERMINAL}, frames, 30)
            if frame["type"] in TERMINAL:
                break
            await ws.send(json.dumps({"type": "approval", "run_id": ack["run_id"],
                                      "tool_call_id": frame["data"]["tool_call_id"], "approve": True}))
        else:
            pytest.fail("the run still asked after 5 approvals")
    run = [f for f in frames if f.get("run_id") == ack["run_id"]]
    assert run[-1]["type"] == "agent_completed", run
    first, second = completed_tools(run)
    assert value_of(first["result"]) == 3, first
    assert "result" not in second, f"the second MCP call of a run limited to 1 ran: {second}"
    assert "the most one run may make" in second["error"], second


async def test_denied_or_removed_while_waiting_the_mcp_tool_does_not_run(make_server,
                                                                         mcp: HttpMcpServer) -> None:
    server = await make_server(mcp=private())
    alice = await register(server)
    assert (await add_server(alice, "mine", mcp.url, approval="ask"))[0] == 201
    await listed(alice, "mine__add")
    async with alice.connect() as ws:
        await until_ready(ws)
        for decide in ("deny", "remove"):
            await ws.send(json.dumps({"type": "chat", "message": 'use mine__add with {"a": 1, "b": 2}'}))
            ack = await read_until(ws, lambda f: f["type"] in {"ack", "error"})
            run_id = ack["run_id"]
            asked = await read_until(ws, lambda f, run_id=run_id: f.get("run_id") == run_id
                                     and f["type"] in {"approval_required", *TERMINAL})
            assert asked["type"] == "approval_required", asked
            if decide == "remove":  # the server goes while the run waits; then the user approves
                assert (await alice.http("DELETE", "/api/mcp/servers/mine"))[0] == 204
            await ws.send(json.dumps({"type": "approval", "run_id": run_id, "approve": decide != "deny",
                                      "tool_call_id": asked["data"]["tool_call_id"]}))
            frames: list[Frame] = []
            await read_until(ws, lambda f, run_id=run_id: f.get("run_id") == run_id and f["type"] in TERMINAL,
                             frames, 30)
            rest = [f for f in frames if f.get("run_id") == run_id]
            assert rest[-1]["type"] == "agent_completed", rest
            done = only_tool(rest)
            assert "result" not in done, done
            if decide == "deny":
                assert done["error"] == "denied" and "tool_executing" not in [f["type"] for f in rest]
            else:
                assert done["error"] == "there is no tool named 'mine__add'", done


async def test_a_name_that_does_not_resolve_is_taken_and_named_unreachable(make_server) -> None:
    server = await make_server()
    alice = await register(server)
    status, body = await add_server(alice, "nowhere", "http://mcp.goldenpath-test.invalid/mcp")
    assert status == 201, body
    [entry] = (await tools_of(alice))["unreachable"]
    assert entry["server"] == "nowhere" and "could not be reached" in entry["reason"], entry
    assert "could not be resolved" in entry["reason"], entry
    done = only_tool(await use(alice, "use nowhere__add with {}"))
    assert done["error"] == entry["reason"], done
