"""The McpServers use case with fakes: what a name, URL and headers must be, whose servers they are,
and that the tool catalog forgets a user's cached tools when their servers change."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.entities import AuditAction
from domain.errors import Conflict, LimitExceeded, NotFound, ValidationFailed
from domain.llm import ToolCall, ToolSpec
from domain.mcp import McpServers, server_name_problem
from domain.tools.base import ExternalTools
from domain.tools.catalog import ToolCatalog
from tests.fakes import FixedClock, InMemoryAuditLog, InMemoryMcpServerRepository, toolbox


class Guard:
    def __init__(self) -> None:
        self.checked: list[str] = []

    async def check(self, url: str) -> None:
        self.checked.append(url)
        if "10.0.0.1" in url:
            raise ValidationFailed("'url': 10.0.0.1 is a private address")


class Source:
    def __init__(self) -> None:
        self.forgotten: list[str] = []

    async def tools_for(self, user_id: str) -> ExternalTools:
        return ExternalTools()

    def forget(self, user_id: str) -> None:
        self.forgotten.append(user_id)

    async def aclose(self) -> None:
        pass


def service(max_per_user: int = 3) -> tuple[McpServers, InMemoryMcpServerRepository, Guard, Source,
                                              InMemoryAuditLog]:
    repository, guard, source, audit = InMemoryMcpServerRepository(), Guard(), Source(), InMemoryAuditLog()
    catalog = ToolCatalog(builtin=toolbox(), sources=[source])
    servers = McpServers(servers=repository, guard=guard, catalog=catalog,
                         clock=FixedClock(datetime(2026, 11, 26, tzinfo=UTC)), audit=audit,
                         operator_names=["weather"], max_per_user=max_per_user)
    return servers, repository, guard, source, audit


@pytest.mark.parametrize(("name", "ok"), [
    ("notes", True), ("a", True), ("my-srv", True), ("my_srv", True), ("n0t3s", True),
    ("", False), ("Notes", False), ("my__srv", False), ("srv_", False), ("_srv", False), ("x" * 33, False),
    ("a.b", False),
])
def test_a_server_name_prefixes_tool_names_so_it_has_rules(name: str, ok: bool) -> None:
    assert (server_name_problem(name) is None) is ok


async def test_add_list_remove_are_the_users_own_and_the_catalog_forgets() -> None:
    servers, repository, guard, source, audit = service()
    added = await servers.add("usr_a", "notes", "https://mcp.example/notes", {"Authorization": "Bearer a"})
    assert added.headers == {"Authorization": "Bearer a"} and guard.checked == ["https://mcp.example/notes"]
    assert source.forgotten == ["usr_a"]
    assert [s.name for s in await servers.list("usr_a")] == ["notes"] and await servers.list("usr_b") == []
    with pytest.raises(Conflict):
        await servers.add("usr_a", "notes", "https://mcp.example/other")
    await servers.add("usr_b", "notes", "https://mcp.example/notes")  # the same name, another user
    with pytest.raises(NotFound):
        await servers.remove("usr_b", "nope")
    await servers.remove("usr_a", "notes")
    assert await servers.list("usr_a") == [] and [s.user_id for s in repository.servers] == ["usr_b"]
    assert [e.action for e in audit.entries] == [AuditAction.MCP_SERVER_ADDED, AuditAction.MCP_SERVER_ADDED,
                                                 AuditAction.MCP_SERVER_REMOVED]
    assert all("Bearer" not in (e.detail or "") for e in audit.entries)


@pytest.mark.parametrize(("name", "url", "headers", "says"), [
    ("weather", "https://x.example/mcp", None, "offers"),
    ("bad__name", "https://x.example/mcp", None, "'name'"),
    ("ok", "ftp://x.example/mcp", None, "'url'"),
    ("ok", "https://[nope]/mcp", None, "'url'"),
    ("ok", "http://10.0.0.1/mcp", None, "private"),
    ("ok", "https://x.example/mcp", {"Host": "evil"}, "set by the connection"),
    ("ok", "https://x.example/mcp", {"mcp-session-id": "x"}, "set by the connection"),
    ("ok", "https://x.example/mcp", {"X-Key": "a\r\nInjected: 1"}, "one line"),
    ("ok", "https://x.example/mcp", {"bad header": "x"}, "not a header name"),
])
async def test_what_is_refused_says_why_and_stores_nothing(name, url, headers, says) -> None:
    servers, repository, _, _, _ = service()
    with pytest.raises((ValidationFailed, Conflict), match=says):
        await servers.add("usr_a", name, url, headers)
    assert repository.servers == []


async def test_a_user_has_at_most_so_many_servers() -> None:
    servers, _, _, _, _ = service(max_per_user=2)
    await servers.add("usr_a", "one", "https://x.example/1")
    await servers.add("usr_a", "two", "https://x.example/2")
    with pytest.raises(LimitExceeded):
        await servers.add("usr_a", "three", "https://x.example/3")
    await servers.add("usr_b", "one", "https://x.example/1")


class Remote:
    """An external tool, as a source gives it."""

    def __init__(self, name: str) -> None:
        self.spec = ToolSpec(name, "remote", {"type": "object", "properties": {}})

    async def __call__(self, context, arguments, *, call_key: str = "") -> dict:
        return {"ok": True}


def test_a_run_calls_external_tools_at_most_so_many_times_counted_from_its_own_calls() -> None:
    """Counted from the run's calls as its checkpoint keeps them: a run that waited for an
    approval, or was taken over, gets no fresh allowance."""
    box = toolbox().with_external(ExternalTools(tools=(Remote("srv__a"), Remote("srv__b"))), limit=2)
    calls = [ToolCall("c1", "srv__a", "{}"), ToolCall("c2", "calculator", "{}")]
    assert box.over_external_limit("srv__b", calls) is None
    assert box.over_external_limit("calculator", calls * 5) is None  # builtin tools are not counted
    limited = box.over_external_limit("srv__b", [*calls, ToolCall("c3", "srv__b", "{}")])
    assert limited is not None and "2 calls of MCP tools" in limited
    assert toolbox().over_external_limit("srv__a", calls * 9) is None
