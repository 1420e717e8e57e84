"""The old system's failures, made impossible by construction and kept so."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dependency_injector import providers

from adapters.bridge import AgentWebSocketBridge
from container import Container
from domain.context import UserExecutionContext
from domain.engine import UserExecutionEngine
from domain.errors import InvalidContext
from domain.factory import ExecutionEngineFactory
from domain.tools.catalog import ToolCatalog
from tests.fakes import approval_gate, engine_limits, toolbox

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ["domain", "adapters", "container", "entrypoints"]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _providers_of(cls: type) -> list[str]:
    found = []
    for name, provider in Container.providers.items():
        candidates = [provider] + (list(provider.providers.values())
                                   if isinstance(provider, providers.Selector) else [])
        for candidate in candidates:
            if getattr(candidate, "provides", None) is cls:
                found.append(name)
    return found


def test_import_linter_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_container_has_exactly_one_engine_factory_and_it_is_a_singleton() -> None:
    assert _providers_of(ExecutionEngineFactory) == ["engine_factory"]
    assert isinstance(Container.engine_factory, providers.Singleton)


def test_container_has_exactly_one_bridge_singleton() -> None:
    assert _providers_of(AgentWebSocketBridge) == ["bridge"]
    assert isinstance(Container.bridge, providers.Singleton)
    assert Container.engine_factory.kwargs["bridge"] is Container.bridge


def test_engine_is_constructed_in_one_module_only() -> None:
    constructing = set()
    for package in SOURCE:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "UserExecutionEngine"):
                    constructing.add(str(path.relative_to(ROOT)))
    assert constructing == {"domain/factory.py"}


def test_engine_factories_are_not_multiplied() -> None:
    factories = set()
    for package in SOURCE:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef) and "EngineFactory" in node.name:
                    factories.add(node.name)
    assert factories == {"ExecutionEngineFactory"}


def context(**overrides: object) -> UserExecutionContext:
    values = {"user_id": "usr_1", "thread_id": "thr_1", "run_id": "run_1", "request_id": "req_1",
              "created_at": NOW} | overrides
    return UserExecutionContext(**values)  # type: ignore[arg-type]


def test_engine_cannot_be_built_outside_the_factory() -> None:
    with pytest.raises(TypeError, match="ExecutionEngineFactory"):
        UserExecutionEngine(context=context(), emitter=None, model=None, toolbox=toolbox(),  # type: ignore[arg-type]
                            limits=engine_limits(), gate=approval_gate())


def test_factory_refuses_to_exist_without_its_bridge() -> None:
    with pytest.raises(TypeError, match="bridge"):
        ExecutionEngineFactory(bridge=None, model=None,  # type: ignore[arg-type]
                               tools=ToolCatalog(builtin=toolbox()), clock=None,  # type: ignore[arg-type]
                               audit=None, limits=engine_limits(), gate=approval_gate())  # type: ignore[arg-type]


def test_context_has_one_constructor_keyword_only() -> None:
    with pytest.raises(TypeError):
        UserExecutionContext("usr_1", "thr_1", "run_1", "req_1", NOW)  # type: ignore[misc]
    with pytest.raises(TypeError, match="session_id"):
        context(session_id="s1")
    with pytest.raises(TypeError):
        UserExecutionContext(user_id="usr_1")  # type: ignore[call-arg]
    public = [n for n, v in vars(UserExecutionContext).items()
              if not n.startswith("_") and isinstance(v, classmethod | staticmethod)]
    assert public == [], "a second way to build the context"


@pytest.mark.parametrize("field", ["user_id", "thread_id", "run_id", "request_id"])
@pytest.mark.parametrize("value", ["", "   ", "None", "null", "undefined", "placeholder", "default",
                                   "has space", "x" * 200, 42, None])
def test_context_refuses_empty_and_placeholder_ids(field: str, value: object) -> None:
    with pytest.raises(InvalidContext, match=field):
        context(**{field: value})


def test_context_is_frozen_and_its_metadata_read_only() -> None:
    source = {"origin": "web"}
    made = context(metadata=source)
    source["origin"] = "changed"
    assert made.metadata["origin"] == "web"
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.user_id = "usr_2"  # type: ignore[misc]
    with pytest.raises(TypeError):
        made.metadata["origin"] = "x"  # type: ignore[index]
    with pytest.raises(InvalidContext, match="created_at"):
        context(created_at=datetime(2026, 1, 1))
