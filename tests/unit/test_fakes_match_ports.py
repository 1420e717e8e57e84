"""Every fake still matches what it stands for: a fake that drifts from its port tests nothing.

A fake is a second implementation of a port (domain/ports.py, domain/tools/base.py). When a port
gains a method, or a parameter changes, the real adapter is updated because the type checker and
its integration tests say so; nothing says so for the fake, and unit tests keep passing against a
shape production no longer has. This test is that voice. Add each new fake to FAKES.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

import pytest

import tests.fakes
from adapters.websocket import SocketConnection
from domain import ports
from domain.tools.base import BlockingTool, Tool
from tests.e2e.test_cross_user import GatedModel
from tests.e2e.test_faults import BurnCpu, ExplodingTool
from tests.fakes import (
    FixedClock,
    InMemoryApprovalGrantRepository,
    InMemoryAuditLog,
    InMemoryEventLog,
    InMemoryMcpServerRepository,
    InMemoryMessageRepository,
    InMemoryNoteRepository,
    InMemoryRunRepository,
    InMemoryThreadRepository,
    InMemoryUserRepository,
    RecordingRunControl,
    RecordingSocket,
    ScriptedModel,
    SequentialIds,
)
from tests.unit.domain.test_emitter import HeldPublisher

# fake -> the Protocol it implements (every member must be there), or the concrete class it
# stands in for (every method the fake has must be the real one's).
FAKES: dict[type, type] = {
    FixedClock: ports.Clock,
    SequentialIds: ports.IdGenerator,
    InMemoryNoteRepository: ports.NoteRepository,
    InMemoryApprovalGrantRepository: ports.ApprovalGrantRepository,
    InMemoryMcpServerRepository: ports.McpServerRepository,
    InMemoryUserRepository: ports.UserRepository,
    InMemoryThreadRepository: ports.ThreadRepository,
    InMemoryMessageRepository: ports.MessageRepository,
    InMemoryRunRepository: ports.RunRepository,
    InMemoryEventLog: ports.EventLog,
    InMemoryAuditLog: ports.AuditLog,
    ScriptedModel: ports.ChatModel,
    RecordingRunControl: ports.RunControl,
    RecordingSocket: SocketConnection,
    GatedModel: ports.ChatModel,
    HeldPublisher: ports.EventBridge,
    ExplodingTool: Tool,
    BurnCpu: BlockingTool,
}


def is_protocol(cls: type) -> bool:
    return bool(getattr(cls, "_is_protocol", False))


def members(cls: type) -> dict[str, Any]:
    """The members a class declares itself and inherits, but not those of Protocol or object."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, Protocol) or klass.__module__ == "typing":
            continue
        for name in getattr(klass, "__annotations__", {}):
            found.setdefault(name, None)  # a data attribute: declared, set per instance
        for name, value in vars(klass).items():
            if not name.startswith("_") or name == "__call__":
                found[name] = value
    return found


def callable_kind(fn: Callable[..., Any]) -> str:
    # `async def` does nothing until awaited; a plain function that returns a future has already
    # queued its work. Callers rely on which one it is, so a fake must be the same kind.
    return "async def" if inspect.iscoroutinefunction(fn) else "def"


def shape(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Parameters by name, kind and default; annotations are left to the type checker."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def mismatches(fake: type, port: type) -> list[str]:
    fake_members, port_members = members(fake), members(port)
    wanted = port_members if is_protocol(port) else {
        name: port_members.get(name, inspect.Parameter.empty)
        for name, value in fake_members.items() if callable(value) and name != "__init__"}
    problems = []
    for name, expected in wanted.items():
        if expected is inspect.Parameter.empty:
            problems.append(f"{name}: the fake has it, {port.__name__} does not")
            continue
        if name not in fake_members and not _set_per_instance(fake, name):
            problems.append(f"{name}: missing")
            continue
        actual = fake_members.get(name)
        if isinstance(expected, property):
            if not isinstance(actual, property) and not _set_per_instance(fake, name):
                problems.append(f"{name}: a property on {port.__name__}, not one on the fake")
            continue
        if not callable(expected):
            continue
        if not callable(actual):
            problems.append(f"{name}: a method on {port.__name__}, not one on the fake")
        elif callable_kind(actual) != callable_kind(expected):
            problems.append(f"{name}: `{callable_kind(actual)}` on the fake, "
                            f"`{callable_kind(expected)}` on {port.__name__}")
        elif shape(actual) != shape(expected):
            problems.append(f"{name}: parameters {_params(actual)} on the fake, "
                            f"{_params(expected)} on {port.__name__}")
    return problems


def _set_per_instance(fake: type, name: str) -> bool:
    """An attribute the fake's __init__ assigns (`self.name = ...`)."""
    init = vars(fake).get("__init__")
    return init is not None and f"self.{name} =" in inspect.getsource(init)


def _params(fn: Callable[..., Any]) -> str:
    return str(inspect.signature(fn)).split(" ->")[0]


@pytest.mark.parametrize("fake", list(FAKES), ids=lambda fake: fake.__name__)
def test_the_fake_matches_what_it_stands_for(fake: type) -> None:
    port = FAKES[fake]
    problems = mismatches(fake, port)
    assert not problems, f"{fake.__name__} no longer matches {port.__name__}:\n  " + "\n  ".join(problems)


def test_every_fake_in_the_fakes_module_is_checked() -> None:
    defined = {cls for cls in vars(tests.fakes).values()
               if inspect.isclass(cls) and cls.__module__ == tests.fakes.__name__}
    assert defined <= set(FAKES), f"add these to FAKES: {sorted(c.__name__ for c in defined - set(FAKES))}"


def test_the_check_itself_sees_a_missing_method_and_a_changed_parameter() -> None:
    """A guard on the guard: fakes broken on purpose are caught, with a message that says how."""

    class NoSearch:
        async def add(self, note: Any) -> None: ...

        async def delete_matching(self, user_id: str, query: str) -> list[Any]: ...

    class WrongLimit:
        async def add(self, note: Any) -> None: ...

        async def search(self, user_id: str, query: str, limit: int = 10) -> list[Any]: ...

        async def delete_matching(self, user_id: str, query: str) -> list[Any]: ...

    class NotAsync:
        def add(self, note: Any) -> None: ...

        async def search(self, user_id: str, query: str, limit: int = 5) -> list[Any]: ...

        async def delete_matching(self, user_id: str, query: str) -> list[Any]: ...

    assert mismatches(NoSearch, ports.NoteRepository) == ["search: missing"]
    assert mismatches(WrongLimit, ports.NoteRepository) == [
        "search: parameters (self, user_id: 'str', query: 'str', limit: 'int' = 10) on the fake, "
        "(self, user_id: 'str', query: 'str', limit: 'int' = 5) on NoteRepository"]
    assert mismatches(NotAsync, ports.NoteRepository) == [
        "add: `def` on the fake, `async def` on NoteRepository"]
