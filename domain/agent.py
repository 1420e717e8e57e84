"""The agent loop: ask the model, run the tools it asks for, feed results back, stream the answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from domain.approval_policy import DENIED, ApprovalGate, AwaitingApproval, Policy
from domain.checkpoints import RunState
from domain.context import UserExecutionContext
from domain.emitter import RunEventEmitter
from domain.errors import ModelError
from domain.events import (
    AgentMessageDelta,
    AgentThinking,
    ApprovalDecided,
    ApprovalRequired,
    ToolCompleted,
    ToolExecuting,
)
from domain.limits import EngineLimits
from domain.llm import (
    ChatMessage,
    ModelChunk,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from domain.ports import ChatModel
from domain.tools import ToolBox

SYSTEM_PROMPT = (
    "You are goldenpath's assistant. Use the tools when they help: the calculator for arithmetic, "
    "current_time for the date and time, save_note and search_notes for what the user asks you to "
    "remember, delete_notes when they ask you to forget something (they approve it first). "
    "Answer briefly."
)

# Between the texts of two model steps (before and after a tool call), so they are not glued.
STEP_BREAK = "\n\n"

# tool_completed.error of a call that was running when its process died and is not safe to
# run again: the model is told, and decides what to say.
INTERRUPTED_TOOL = "interrupted"
INTERRUPTED_TOOL_MESSAGE = ("interrupted: the server running this tool stopped before it answered, "
                            "and it was not run again because running it twice may not be safe")


@dataclass(slots=True)
class _Step:
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)


def _thinking_text(state: RunState) -> str:
    if state.steps == 0:
        return "Reading your message"
    last = {call.name for call in state.tool_calls}
    return f"Reading the result of {', '.join(sorted(last))}" if last else "Thinking"


async def run_agent(
    *,
    context: UserExecutionContext,
    model: ChatModel,
    toolbox: ToolBox,
    emitter: RunEventEmitter,
    state: RunState,
    limits: EngineLimits,
    gate: ApprovalGate,
) -> str:
    """Run the loop to an answer; raises ModelError when the model fails or never answers, and
    AwaitingApproval when it stopped to ask its user (the question is in its checkpoint).

    A state restored from a checkpoint goes on where it stood: the tool calls of its last step
    that had not completed first, then the model again.
    """
    if not state.conversation or state.conversation[0].role != "system":
        state.conversation.insert(0, ChatMessage(role="system", content=SYSTEM_PROMPT))
    tools = _Tools(context, toolbox, gate)
    await _run_pending(tools, emitter, state)
    while state.steps < limits.max_steps:
        await emitter.emit(AgentThinking(_thinking_text(state)))
        step = await _ask_model(model, toolbox, emitter, state, limits.model_timeout_s)
        state.steps += 1
        if not step.calls:
            return "".join(state.answer)
        calls = _assemble_calls(step, state)
        state.conversation.append(
            ChatMessage(role="assistant", content="".join(step.text), tool_calls=calls)
        )
        state.pending = list(calls)
        await _run_pending(tools, emitter, state)
    raise ModelError(f"The agent used all {limits.max_steps} of its steps without reaching an answer.",
                     code="step_limit")


async def _pieces(model: ChatModel, request: ModelRequest, timeout_s: float) -> AsyncIterator[ModelChunk]:
    """The model's stream, where each piece must come within the timeout."""
    stream = aiter(model.stream(request))
    try:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (a user's stop).
                async with asyncio.timeout(timeout_s):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ModelError(f"The model did not answer within {timeout_s:g} seconds; "
                                 "try again in a moment.", code="model_timeout") from None
            yield chunk
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


async def _ask_model(
    model: ChatModel, toolbox: ToolBox, emitter: RunEventEmitter, state: RunState, timeout_s: float
) -> _Step:
    step = _Step()
    state.usage.model_calls += 1
    request = ModelRequest(messages=tuple(state.conversation), tools=toolbox.specs)
    async for chunk in _pieces(model, request, timeout_s):
        if isinstance(chunk, TextDelta):
            if chunk.text:
                if not step.text and state.answer:
                    # Text on both sides of a tool call: a visible break, streamed like the rest,
                    # so what the user watched arrive is exactly the answer stored.
                    state.answer.append(STEP_BREAK)
                    await emitter.emit(AgentMessageDelta(STEP_BREAK))
                step.text.append(chunk.text)
                state.answer.append(chunk.text)
                await emitter.emit(AgentMessageDelta(chunk.text))
        elif isinstance(chunk, ReasoningDelta):
            if chunk.text:
                await emitter.emit(AgentThinking(chunk.text))
        elif isinstance(chunk, ToolCallDelta):
            pieces = step.calls.setdefault(chunk.index, {"id": "", "name": "", "arguments": ""})
            pieces["id"] = chunk.id or pieces["id"]
            pieces["name"] = chunk.name or pieces["name"]
            pieces["arguments"] += chunk.arguments
        elif isinstance(chunk, UsageReport):
            state.usage.prompt_tokens += chunk.prompt_tokens
            state.usage.completion_tokens += chunk.completion_tokens
        else:
            raise ModelError(f"The model sent something the agent cannot read ({type(chunk).__name__}).",
                             code="model_bad_output")
    return step


def _assemble_calls(step: _Step, state: RunState) -> tuple[ToolCall, ...]:
    calls = []
    for index in sorted(step.calls):
        pieces = step.calls[index]
        if not pieces["name"]:
            raise ModelError("The model asked for a tool without naming it.", code="model_bad_output")
        call_id = pieces["id"] or f"call_{state.steps}_{index}"
        calls.append(ToolCall(id=call_id, name=pieces["name"], arguments=pieces["arguments"]))
    return tuple(calls)


@dataclass(frozen=True, slots=True)
class _Tools:
    context: UserExecutionContext
    toolbox: ToolBox
    gate: ApprovalGate


async def _run_pending(tools: _Tools, emitter: RunEventEmitter, state: RunState) -> None:
    """The step's tool calls, in order, each checkpointed as it starts and as it ends.

    A call that was running when a previous process died runs again only if its tool says that
    is safe (`ToolBox.retry_safe`); otherwise it completes with `interrupted`. A call of an `ask`
    tool runs once its user approved it (or a grant did); denied, it completes with `denied`.
    """
    while state.pending:
        call = state.pending[0]
        if state.in_flight == call.id and not tools.toolbox.retry_safe(call.name):
            await _not_run(emitter, state, call, INTERRUPTED_TOOL, told=INTERRUPTED_TOOL_MESSAGE)
            continue
        if await _approved(tools, emitter, state, call):
            await _run_tool(tools, emitter, state, call)


def _shown(call: ToolCall) -> object:
    """The call's arguments as events show them: the parsed JSON, or the model's text."""
    try:
        return json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError:
        return call.arguments


async def _approved(tools: _Tools, emitter: RunEventEmitter, state: RunState, call: ToolCall) -> bool:
    """Whether the call may run: at once (auto), by a grant, or by its user's decision. A call
    not yet decided stops the run to ask (AwaitingApproval); a denied one completes here."""
    decision = state.decisions.get(call.id)
    if decision is None:
        if tools.toolbox.policy(call.name) is not Policy.ASK:
            return True
        if await tools.gate.granted(tools.context, call.name):
            state.decide(call.id, approved=True, by="grant")
        else:
            await _ask(tools.gate, emitter, state, call)
        decision = state.decisions[call.id]
    if not decision.get("announced"):
        decision["announced"] = True
        await emitter.emit(ApprovalDecided(tool_call_id=call.id, approved=bool(decision["approved"]),
                                           by=str(decision["by"]), reason=decision.get("reason")),
                           checkpoint=state.checkpoint)
    if decision["approved"]:
        return True
    reason = decision.get("reason")
    told = "denied: the user did not approve this call" + (f" ({reason})" if reason else "")
    await _not_run(emitter, state, call, DENIED, told=told)
    return False


async def _ask(gate: ApprovalGate, emitter: RunEventEmitter, state: RunState, call: ToolCall) -> None:
    """Store the question with the run's state (its status becomes waiting), then stop the run."""
    state.awaiting = {"tool_call_id": call.id, "tool": call.name, "arguments": _shown(call),
                      "expires_at": gate.expires_at()}
    await emitter.emit(ApprovalRequired(**state.awaiting), checkpoint=state.checkpoint)
    await emitter.confirm()  # stored: the run waits now, and may end here
    raise AwaitingApproval(call.id)


async def _run_tool(tools: _Tools, emitter: RunEventEmitter, state: RunState, call: ToolCall) -> None:
    if state.in_flight != call.id:  # a call run again after a takeover is counted once
        if (refused := tools.toolbox.over_external_limit(call.name, state.tool_calls)) is not None:
            await _not_run(emitter, state, call, refused, told=refused)
            return
        state.tool_calls.append(call)
        state.usage.tool_calls += 1
    state.in_flight = call.id
    await emitter.emit(ToolExecuting(tool_call_id=call.id, tool=call.name, arguments=_shown(call)),
                       checkpoint=state.checkpoint)
    # The run's id with the call's: a model's call ids are unique only within its conversation.
    outcome = await tools.toolbox.execute(tools.context, call.name, call.arguments,
                                          call_key=f"{tools.context.run_id}:{call.id}")
    if outcome.error is None:
        content = json.dumps({"result": outcome.result}, default=str)
    else:
        content = json.dumps({"error": outcome.error})
    await _completed(emitter, state, call, content,
                     ToolCompleted(tool_call_id=call.id, tool=call.name, duration_ms=outcome.duration_ms,
                                   result=outcome.result, error=outcome.error))


async def _not_run(emitter: RunEventEmitter, state: RunState, call: ToolCall, error: str, *,
                   told: str) -> None:
    """The call completes without running: `error` on the event, `told` to the model."""
    await _completed(emitter, state, call, json.dumps({"error": told}),
                     ToolCompleted(tool_call_id=call.id, tool=call.name, duration_ms=0, result=None,
                                   error=error))


async def _completed(emitter: RunEventEmitter, state: RunState, call: ToolCall, content: str,
                     event: ToolCompleted) -> None:
    state.conversation.append(ChatMessage(role="tool", content=content, tool_call_id=call.id))
    state.pending.pop(0)
    state.in_flight = None
    await emitter.emit(event, checkpoint=state.checkpoint)
