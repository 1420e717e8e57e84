"""The tool port and the toolbox that validates arguments and contains tool failures."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from domain.context import UserExecutionContext
from domain.errors import StorageUnavailable, ToolError
from domain.llm import ToolCall, ToolSpec

log = logging.getLogger(__name__)

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


class Policy(StrEnum):
    AUTO = "auto"  # the tool runs when the model asks
    ASK = "ask"  # a person approves each call (unless a grant answers)


class Tool(Protocol):
    """A tool. `call_key` names the call (the run's id and the model's tool_call_id): a tool with
    side effects uses it as its idempotency key, so the same call run twice does its work once.
    A tool may say `idempotent = True` (safe to run again after a takeover); without it, it is not.
    A tool may say `approval = "ask"` (a person approves each call); without it, it runs ("auto").
    Settings (approvals.tools) override either way.
    """

    spec: ToolSpec

    async def __call__(self, context: UserExecutionContext, arguments: Mapping[str, Any], *,
                       call_key: str) -> Any: ...


class BlockingTool(Protocol):
    """A tool whose work is synchronous or CPU-heavy: the toolbox runs it in a worker thread."""

    spec: ToolSpec

    def call_blocking(self, context: UserExecutionContext, arguments: Mapping[str, Any], *,
                      call_key: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class ExternalTools:
    """What a ToolSource offers one user: its tools, and the servers it could not reach (server
    name -> why), whose tools' calls fail with that reason."""

    tools: tuple[Tool, ...] = ()
    unreachable: Mapping[str, str] = field(default_factory=dict)


# Tool names of external tools: `{server}__{tool}`.
NAMESPACE = "__"


@dataclass(frozen=True, slots=True)
class ToolResult:
    arguments: Any
    result: Any = None
    error: str | None = None
    duration_ms: int = 0


def parse_arguments(spec: ToolSpec, raw: str) -> dict[str, Any]:
    """Parse the model's JSON arguments and check them against the tool's schema."""
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ToolError(f"arguments are not valid JSON ({exc.msg})") from None
    if not isinstance(arguments, dict):
        raise ToolError("arguments must be a JSON object")
    properties = spec.parameters.get("properties", {})
    for name in spec.parameters.get("required", ()):
        if name not in arguments:
            raise ToolError(f"missing required argument {name!r}")
    for name, value in arguments.items():
        if name not in properties:
            if spec.parameters.get("additionalProperties", True) is False:
                raise ToolError(f"unknown argument {name!r}")
            continue
        expected = _JSON_TYPES.get(properties[name].get("type", ""), (object,))
        wrong_bool = isinstance(value, bool) and bool not in expected
        if not isinstance(value, expected) or wrong_bool:
            raise ToolError(f"argument {name!r} must be of type {properties[name].get('type')}")
    return arguments


class ToolBox:
    """The tools of a run: looks them up by name and turns every failure into a result."""

    def __init__(self, tools: Iterable[Tool | BlockingTool], *, timeout_s: float, pause_s: float,
                 policies: Mapping[str, str] | None = None,
                 unreachable: Mapping[str, str] | None = None,
                 external: Iterable[str] = (), external_limit: int | None = None) -> None:
        self._tools = {tool.spec.name: tool for tool in tools}
        self._overrides = dict(policies or {})
        # Each tool's approval policy: the settings' word for it, else the tool's own, else auto.
        self._policies = {name: Policy(self._overrides.get(name, getattr(tool, "approval", Policy.AUTO)))
                          for name, tool in self._tools.items()}
        self._unreachable = dict(unreachable or {})
        # The tools of sources (MCP): a run may call them `external_limit` times in all.
        self._external = frozenset(external)
        self._external_limit = external_limit
        self._specs = tuple(tool.spec for tool in self._tools.values())
        self._timeout_s = timeout_s
        self._pause_s = pause_s  # before each call: demos and fault drills (settings tools.pause_ms)

    @property
    def specs(self) -> tuple[ToolSpec, ...]:
        return self._specs

    def with_external(self, external: ExternalTools, *, limit: int | None = None) -> ToolBox:
        """These tools and a source's, for one run (same timeouts, same policy overrides); the run
        may call the source's tools `limit` times in all (None: no limit)."""
        if not external.tools and not external.unreachable:
            return self
        return ToolBox([*self._tools.values(), *external.tools], timeout_s=self._timeout_s,
                       pause_s=self._pause_s, policies=self._overrides,
                       unreachable={**self._unreachable, **external.unreachable},
                       external=[*self._external, *(tool.spec.name for tool in external.tools)],
                       external_limit=limit if limit is not None else self._external_limit)

    def over_external_limit(self, name: str, calls: Iterable[ToolCall]) -> str | None:
        """Why a call of `name` may not run, when the run's calls so far (`calls`, as its checkpoint
        keeps them across approvals and takeovers) used up its calls of external tools."""
        if name not in self._external or self._external_limit is None:
            return None
        made = sum(call.name in self._external for call in calls)
        if made < self._external_limit:
            return None
        return (f"this run has made {self._external_limit} calls of MCP tools, the most one run may "
                "make; answer with what you have")

    def tools(self) -> list[Tool | BlockingTool]:
        return list(self._tools.values())

    def names(self) -> list[str]:
        return list(self._tools)

    def policy(self, name: str) -> Policy:
        """Whether a call of this tool waits for its user's approval (an unknown tool: it fails
        without running, so there is nothing to approve)."""
        return self._policies.get(name, Policy.AUTO)

    def retry_safe(self, name: str) -> bool:
        """Whether a call of this tool cut off by a dead process may run again (unknown: no)."""
        return getattr(self._tools.get(name), "idempotent", False) is True

    async def execute(self, context: UserExecutionContext, name: str, raw_arguments: str, *,
                      call_key: str = "") -> ToolResult:
        started = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1000)

        tool = self._tools.get(name)
        if tool is None:
            server = name.split(NAMESPACE, 1)[0] if NAMESPACE in name else None
            if server is not None and server in self._unreachable:
                return ToolResult(arguments=raw_arguments, error=self._unreachable[server])
            return ToolResult(arguments=raw_arguments, error=f"there is no tool named {name!r}")
        try:
            arguments: Any = parse_arguments(tool.spec, raw_arguments)
        except ToolError as exc:
            return ToolResult(arguments=raw_arguments, error=str(exc), duration_ms=elapsed())
        if self._pause_s > 0:
            await asyncio.sleep(self._pause_s)
        try:
            async with asyncio.timeout(self._timeout_s):
                if hasattr(tool, "call_blocking"):
                    # Off the event loop, so other users' runs keep streaming meanwhile.
                    result = await asyncio.to_thread(tool.call_blocking, context, arguments,
                                                     call_key=call_key)
                else:
                    result = await tool(context, arguments, call_key=call_key)
        except ToolError as exc:
            return ToolResult(arguments=arguments, error=str(exc), duration_ms=elapsed())
        except TimeoutError:
            message = f"{name} took longer than {self._timeout_s:g} s and was stopped"
            return ToolResult(arguments=arguments, error=message, duration_ms=elapsed())
        except StorageUnavailable:
            log.warning("tool %s could not reach the database", name)
            return ToolResult(arguments=arguments, error=f"{name} could not reach its storage just now; "
                              "try again in a moment", duration_ms=elapsed())
        except Exception:
            log.exception("tool %s failed", name)
            return ToolResult(arguments=arguments, error=f"{name} failed unexpectedly",
                              duration_ms=elapsed())
        return ToolResult(arguments=arguments, result=result, duration_ms=elapsed())
