"""The MCP tool source against real MCP servers (built with the same SDK): over Streamable HTTP on a
free port, and over stdio as a subprocess. Calls go through a real ToolBox, as a run's do."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import mcp_types as types
import pytest
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from adapters.mcp import guard as guard_module
from adapters.mcp.client import Endpoint, HttpEndpoint, Listing, McpConnector
from adapters.mcp.guard import NetworkGuard
from adapters.mcp.source import McpToolSource
from adapters.mcp.tools import offered_tools, result_value
from container.settings import McpServerSettings, McpSettings
from domain.context import UserExecutionContext
from domain.entities import McpServer
from domain.errors import ToolError
from domain.tools import ToolBox
from tests.fakes import toolbox
from tests.integration.mcp_servers import HttpMcpServer, closed_port_url, stdio_command

ALICE, BOB = "user_alice", "user_bob"


@pytest.fixture(scope="module")
def server() -> Iterator[HttpMcpServer]:
    with HttpMcpServer() as running:
        yield running


class Servers:
    """Users' own MCP servers, in memory (the McpServerRepository port)."""

    def __init__(self) -> None:
        self.items: list[McpServer] = []

    async def add(self, server: McpServer) -> None:
        self.items.append(server)

    async def list_for_user(self, user_id: str) -> Sequence[McpServer]:
        return [server for server in self.items if server.user_id == user_id]

    async def delete(self, user_id: str, name: str) -> bool:
        before = len(self.items)
        self.items = [s for s in self.items if (s.user_id, s.name) != (user_id, name)]
        return len(self.items) < before

    def register(self, user_id: str, name: str, url: str, **headers: str) -> None:
        self.items.append(McpServer(user_id=user_id, name=name, url=url, created_at=datetime.now(UTC),
                                    headers=headers))


class CountingConnector(McpConnector):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listed: list[str] = []

    async def list_tools(self, endpoint: Endpoint) -> Listing:
        self.listed.append(endpoint.name)
        return await super().list_tools(endpoint)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_source(*operator: McpServerSettings, servers: Servers | None = None, private: bool = True,
                clock: Clock | None = None, **mcp: Any) -> tuple[McpToolSource, CountingConnector]:
    settings = McpSettings(servers=list(operator), **mcp)
    guard = NetworkGuard(allow_private_networks=private)
    connector = CountingConnector(guard=guard, timeout_s=settings.timeout_s)
    source = McpToolSource(operator_servers=settings.servers, servers=servers or Servers(), settings=settings,
                           guard=guard, clock=clock or Clock(), connector=connector)
    return source, connector


def context(user_id: str = ALICE) -> UserExecutionContext:
    return UserExecutionContext(user_id=user_id, thread_id="thread_1", run_id="run_1", request_id="req_1",
                                created_at=datetime.now(UTC))


async def run_toolbox(source: McpToolSource, user_id: str = ALICE) -> ToolBox:
    return toolbox().with_external(await source.tools_for(user_id))


async def test_lists_an_http_servers_tools_and_calls_one(server: HttpMcpServer) -> None:
    source, _ = make_source(McpServerSettings(name="ops", url=server.url))
    try:
        external = await source.tools_for(ALICE)
        assert external.unreachable == {}
        names = sorted(tool.spec.name for tool in external.tools)
        assert names == ["ops__add", "ops__echo_token", "ops__fail", "ops__huge", "ops__lookup", "ops__slow",
                         "ops__whoami"]
        add = next(tool for tool in external.tools if tool.spec.name == "ops__add")
        assert add.spec.description == "Adds two integers."
        assert add.spec.parameters["type"] == "object"
        assert add.spec.parameters["required"] == ["a", "b"]
        assert (add.source, add.server, add.owner, add.approval) == ("mcp", "ops", "operator", "auto")

        result = await toolbox().with_external(external).execute(context(), "ops__add", '{"a": 2, "b": 40}')
        assert result.error is None
        assert result.result == {"result": 42}
        # The toolbox checks arguments against the server's schema before anything is sent.
        wrong = await toolbox().with_external(external).execute(context(), "ops__add", '{"a": "two", "b": 1}')
        assert wrong.error == "argument 'a' must be of type integer"
    finally:
        await source.aclose()


async def test_a_tool_error_is_the_calls_error_not_the_runs(server: HttpMcpServer) -> None:
    source, _ = make_source(McpServerSettings(name="ops", url=server.url))
    result = await (await run_toolbox(source)).execute(context(), "ops__fail", '{"reason": "no such city"}')
    assert result.result is None
    assert result.error is not None and "no such city" in result.error


async def test_a_server_that_is_down_is_unreachable_and_its_tools_fail_with_the_reason() -> None:
    clock = Clock()
    source, connector = make_source(McpServerSettings(name="down", url=closed_port_url()), clock=clock)
    external = await source.tools_for(ALICE)
    reason = "the MCP server 'down' could not be reached: connection refused"
    assert external.tools == ()
    assert external.unreachable == {"down": reason}
    result = await toolbox().with_external(external).execute(context(), "down__forecast", '{"city": "Paris"}')
    assert result.error == reason

    # Not tried again at every run: after a backoff (2 s, then doubling).
    await source.tools_for(ALICE)
    await source.tools_for(BOB)
    assert connector.listed == ["down"]
    clock.now += 2.5
    await source.tools_for(ALICE)
    assert connector.listed == ["down", "down"]
    clock.now += 2.5  # the backoff is now 4 s
    await source.tools_for(ALICE)
    assert connector.listed == ["down", "down"]


async def test_an_http_error_status_is_named(server: HttpMcpServer) -> None:
    wrong_path = server.url.removesuffix("/mcp") + "/nothing-here"
    source, _ = make_source(McpServerSettings(name="lost", url=wrong_path))
    external = await source.tools_for(ALICE)
    assert external.unreachable == {
        "lost": "the MCP server 'lost' could not be reached: it answered HTTP 404 (Not Found)"}


async def test_a_slow_tool_is_stopped_at_the_mcp_timeout(server: HttpMcpServer) -> None:
    source, _ = make_source(McpServerSettings(name="ops", url=server.url), timeout_s=3)
    box = await run_toolbox(source)
    async with asyncio.timeout(20):  # the 60 s tool is cut off, not waited for
        result = await box.execute(context(), "ops__slow", '{"seconds": 60}')
    assert result.error == "the MCP server 'ops' did not answer within 3 s"
    # The server and the source are fine afterwards.
    assert (await box.execute(context(), "ops__add", '{"a": 1, "b": 1}')).result == {"result": 2}


async def test_a_huge_result_is_cut_with_a_note(server: HttpMcpServer) -> None:
    source, _ = make_source(McpServerSettings(name="ops", url=server.url), max_result_chars=1000)
    result = await (await run_toolbox(source)).execute(context(), "ops__huge", "{}")
    assert result.error is None
    assert isinstance(result.result, str)
    assert result.result.startswith("x" * 1000 + "\n[cut: the result was 1000000 characters; only the "
                                    "first 1000 are shown]")
    small = await (await run_toolbox(source)).execute(context(), "ops__huge", '{"chars": 10}')
    assert small.result == {"result": "x" * 10}


async def test_a_stdio_server_is_listed_and_called_and_stopped() -> None:
    source, _ = make_source(McpServerSettings(name="local", command=stdio_command()))
    try:
        box = await run_toolbox(source)
        assert "local__add" in box.names()
        results = await asyncio.gather(*(box.execute(context(), "local__add", f'{{"a": {n}, "b": 1}}')
                                         for n in range(5)))
        assert [result.result for result in results] == [{"result": n + 1} for n in range(5)]
        assert (await box.execute(context(), "local__fail", "{}")).error is not None
    finally:
        await source.aclose()


async def test_operator_headers_name_the_calling_user(server: HttpMcpServer) -> None:
    source, connector = make_source(McpServerSettings(name="ops", url=server.url,
                                                      headers={"X-User": "{user_id}",
                                                               "Authorization": "Bearer op-{user_id}"}))
    alice, bob = await run_toolbox(source, ALICE), await run_toolbox(source, BOB)
    assert (await alice.execute(context(ALICE), "ops__whoami", "{}")).result == {"result": ALICE}
    assert (await bob.execute(context(BOB), "ops__whoami", "{}")).result == {"result": BOB}
    assert (await bob.execute(context(BOB), "ops__echo_token", "{}")).result == {"result": f"Bearer op-{BOB}"}
    assert connector.listed == ["ops", "ops"]  # listed for each user: their headers differ


async def test_an_operator_server_without_user_headers_is_listed_once_for_everyone(server: HttpMcpServer,
                                                                                  ) -> None:
    source, connector = make_source(McpServerSettings(name="ops", url=server.url,
                                                      headers={"Authorization": "Bearer shared"}))
    await asyncio.gather(*(source.tools_for(f"user_{n}") for n in range(10)))
    assert connector.listed == ["ops"]  # ten first listings at once: one request


async def test_each_users_own_server_gets_that_users_token_and_no_one_elses(server: HttpMcpServer) -> None:
    servers = Servers()
    servers.register(ALICE, "mine", server.url, Authorization="Bearer alice-token")
    servers.register(BOB, "mine", server.url, Authorization="Bearer bob-token")
    servers.register(BOB, "private", server.url, Authorization="Bearer bob-other")
    source, connector = make_source(servers=servers)
    alice, bob = await source.tools_for(ALICE), await source.tools_for(BOB)
    assert {tool.spec.name for tool in alice.tools} == {f"mine__{n}" for n in
                                                        ("add", "echo_token", "fail", "huge", "lookup",
                                                         "slow", "whoami")}
    assert {tool.owner for tool in alice.tools} == {"user"}
    assert sorted(connector.listed) == ["mine", "mine", "private"]

    async def token(user: str, external: Any) -> Any:
        box = toolbox().with_external(external)
        return (await box.execute(context(user), "mine__echo_token", "{}")).result

    results = await asyncio.gather(*(token(user, ext) for _ in range(10)
                                     for user, ext in ((ALICE, alice), (BOB, bob))))
    assert results == [{"result": "Bearer alice-token"}, {"result": "Bearer bob-token"}] * 10
    # Another user's server is unknown to Alice, and Alice's tools refuse another user's run.
    other = await toolbox().with_external(alice).execute(context(ALICE), "private__echo_token", "{}")
    assert other.error == "there is no tool named 'private__echo_token'"
    echo = next(tool for tool in alice.tools if tool.spec.name == "mine__echo_token")
    with pytest.raises(ToolError):
        await echo(context(BOB), {}, call_key="k")


async def test_the_cache_lasts_its_ttl_and_forget_drops_one_users_entries(server: HttpMcpServer) -> None:
    clock = Clock()
    servers = Servers()
    servers.register(ALICE, "mine", server.url, Authorization="Bearer a")
    servers.register(BOB, "mine", server.url, Authorization="Bearer b")
    source, connector = make_source(servers=servers, clock=clock, list_ttl_s=60)
    await asyncio.gather(*(source.tools_for(user) for user in (ALICE, BOB) for _ in range(5)))
    assert connector.listed == ["mine", "mine"]
    clock.now += 59
    await source.tools_for(ALICE)
    assert len(connector.listed) == 2
    source.forget(ALICE)
    await source.tools_for(ALICE)
    await source.tools_for(BOB)
    assert len(connector.listed) == 3  # Alice's listed again, Bob's still cached
    clock.now += 2
    await source.tools_for(BOB)
    assert len(connector.listed) == 4


async def test_the_allow_list_and_annotations(server: HttpMcpServer) -> None:
    source, _ = make_source(McpServerSettings(name="ops", url=server.url, tools=["add", "lookup"],
                                              approval="ask"))
    external = await source.tools_for(ALICE)
    assert sorted(tool.spec.name for tool in external.tools) == ["ops__add", "ops__lookup"]
    box = toolbox().with_external(external)
    assert box.retry_safe("ops__lookup") is True  # readOnlyHint and idempotentHint
    assert box.retry_safe("ops__add") is False  # no annotations: not idempotent
    assert box.policy("ops__add").value == "ask"


async def test_users_servers_go_through_the_guard_and_operator_servers_do_not(server: HttpMcpServer) -> None:
    servers = Servers()
    servers.register(ALICE, "mine", server.url, Authorization="Bearer a")
    source, _ = make_source(McpServerSettings(name="ops", url=server.url), servers=servers, private=False)
    external = await source.tools_for(ALICE)
    assert external.unreachable == {
        "mine": "the MCP server 'mine' could not be reached: 127.0.0.1 is a loopback address, and this "
                "service does not connect to loopback, private or link-local addresses"}
    assert "ops__add" in {tool.spec.name for tool in external.tools}


async def test_header_values_are_never_logged_nor_in_errors(server: HttpMcpServer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    secret = "Bearer sk-very-secret-value"
    servers = Servers()
    servers.register(ALICE, "mine", server.url, Authorization=secret)
    servers.register(ALICE, "gone", closed_port_url(), Authorization=secret)
    source, _ = make_source(servers=servers)
    with caplog.at_level(logging.DEBUG):
        external = await source.tools_for(ALICE)
        box = toolbox().with_external(external)
        failed = await box.execute(context(), "mine__fail", '{"reason": "token"}')
        await box.execute(context(), "gone__add", "{}")
    assert failed.error is not None and failed.error.endswith("refused [redacted]")
    assert "sk-very-secret-value" not in repr(external.unreachable)
    assert caplog.records, "nothing was logged: the check proves nothing"
    assert not [record for record in caplog.records if "sk-very-secret" in record.getMessage()]


async def test_a_server_that_goes_down_after_its_listing_fails_the_call_with_the_reason() -> None:
    with HttpMcpServer() as leaving:
        source, _ = make_source(McpServerSettings(name="ops", url=leaving.url))
        box = await run_toolbox(source)
    result = await box.execute(context(), "ops__add", '{"a": 1, "b": 2}')
    assert result.error == "the MCP server 'ops' could not be reached: connection refused"


async def test_an_answer_past_the_response_limit_fails_the_call(server: HttpMcpServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    source, _ = make_source(McpServerSettings(name="ops", url=server.url))
    box = await run_toolbox(source)
    monkeypatch.setattr(guard_module, "MAX_RESPONSE_BYTES", 200_000)
    result = await box.execute(context(), "ops__huge", "{}")  # 1 MB
    assert result.error == "the MCP server 'ops' sent an answer larger than 200000 bytes"
    assert (await box.execute(context(), "ops__add", '{"a": 1, "b": 2}')).result == {"result": 3}


async def test_a_stdio_command_that_does_not_start_is_unreachable(tmp_path: Any) -> None:
    source, _ = make_source(McpServerSettings(name="broken", command=[str(tmp_path / "no-such-command")]))
    try:
        external = await source.tools_for(ALICE)
        assert external.unreachable == {
            "broken": "the MCP server 'broken' could not be reached: its command could not be started "
                      "(FileNotFoundError)"}
    finally:
        await source.aclose()


async def test_a_call_after_a_handshake_era_listing_or_none_still_works(server: HttpMcpServer) -> None:
    """A call reuses what its listing learned (no probe); from a pre-2026 server, it shakes hands."""
    connector = McpConnector(guard=NetworkGuard(allow_private_networks=True), timeout_s=10)
    endpoint = HttpEndpoint(name="ops", url=server.url, guarded=False)
    listing = await connector.list_tools(endpoint)
    assert listing.version in MODERN_PROTOCOL_VERSIONS and listing.discover is not None
    older = Listing(tools=listing.tools, version="2025-11-25", discover=None)
    for known in (listing, older, None):
        result = await connector.call_tool(endpoint, "add", {"a": 20, "b": 22}, known)
        assert result.structured_content == {"result": 42}


def _tool(name: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, input_schema=schema or {"type": "object", "properties": {}})


def test_tool_names_are_valid_for_every_model_and_clashes_resolve_the_same_way_each_time() -> None:
    long = "x" * 80
    tools = [_tool("a_b"), _tool("a.b"), _tool("weird name!"), _tool(long), _tool(long + "y"),
             _tool("not_an_object", {"type": "string"}), _tool("ok-1")]
    for order in (tools, tools[::-1]):
        names = {item.tool.name: item.name for item in offered_tools("srv", order)}
        assert names == {"a_b": "srv__a_b",  # unchanged names keep theirs
                         "a.b": "srv__a_b_2",
                         "weird name!": "srv__weird_name_",
                         long: "srv__" + "x" * 59,
                         long + "y": "srv__" + "x" * 57 + "_2",
                         "ok-1": "srv__ok-1"}
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name) for name in names.values())
    assert [item.name for item in offered_tools("srv", tools, allow=["ok-1", "gone"])] == ["srv__ok-1"]


def test_results_become_json_data_and_other_content_is_summarised() -> None:
    structured = types.CallToolResult(content=[types.TextContent(text="{...}")],
                                      structured_content={"temp": 21})
    assert result_value(structured, 100) == {"temp": 21}
    too_big = types.CallToolResult(content=[types.TextContent(text="t" * 300)],
                                   structured_content={"text": "t" * 300})
    assert result_value(too_big, 100) == "t" * 100 + \
        "\n[cut: the result was 300 characters; only the first 100 are shown]"
    mixed = types.CallToolResult(content=[
        types.TextContent(text="a chart:"),
        types.ImageContent(data="aGVsbG8gd29ybGQh", mime_type="image/png"),
        types.EmbeddedResource(resource=types.TextResourceContents(uri="file:///notes.txt", text="notes")),
        types.ResourceLink(name="report", uri="https://example.com/report.pdf"),
    ])
    assert result_value(mixed, 1000) == ("a chart:\n[image: image/png, 12 bytes, not shown]\nnotes\n"
                                         "[resource: report https://example.com/report.pdf]")


async def test_a_users_server_is_reached_by_its_name_through_the_guard(server: HttpMcpServer) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        assert host == "tools.test"
        return ["127.0.0.1"]

    servers = Servers()
    servers.register(ALICE, "mine", f"http://tools.test:{server.port}/mcp", Authorization="Bearer a")
    settings = McpSettings()
    guard = NetworkGuard(allow_private_networks=True, resolver=resolve)
    source = McpToolSource(operator_servers=[], servers=servers, settings=settings, guard=guard)
    box = await run_toolbox(source)
    assert (await box.execute(context(), "mine__echo_token", "{}")).result == {"result": "Bearer a"}
