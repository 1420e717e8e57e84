"""Container overrides shared by tests: swap one part of the real graph for a test's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dependency_injector import providers

from container import Container
from domain.tools import ToolBox, builtin_tools


def replace_calculator(tool: Any) -> Callable[[Container], None]:
    """The builtin tools with `tool` in the calculator's place (same name, so the model calls it)."""

    def tools(notes: Any, ids: Any, clock: Any) -> list[Any]:
        return [tool if t.spec.name == "calculator" else t
                for t in builtin_tools(notes=notes, ids=ids, clock=clock)]

    def override(container: Container) -> None:
        container.toolbox.override(providers.Singleton(
            ToolBox, tools=providers.Callable(tools, container.notes, container.ids, container.clock),
            timeout_s=container.settings.provided.limits.tool_timeout_s,
            pause_s=container.settings.provided.tools.pause_s))

    return override


def replace_model(model: Any) -> Callable[[Container], None]:
    def override(container: Container) -> None:
        container.chat_model.override(providers.Object(model))

    return override
