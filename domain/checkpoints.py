"""A run's state (`RunState`), stored with each step's event so another process can go on.

A checkpoint is taken after each step of the agent loop: when a tool starts (the model's turn
that asked for it is done), and when a tool ends (its result is in the conversation). It holds
the conversation so far, the step's tool calls still to run (and which one was running), the
step count, the answer so far, the usage and the seq it covers. Text a model streams within a
step is not checkpointed: a run taken over mid-step asks the model that step again.

A run waiting for a person's approval is its checkpoint alone: `awaiting` names the call asked
about; the decision, when it comes, is written into `decisions` (with the claim of the run) and
the run goes on from there, on whichever process took the decision.

The stored form is JSON with a format number. A release reads every format it ever wrote
(`restore`): FORMAT 2 is this one (1 had no `awaiting` and `decisions`); the fixtures
tests/fixtures/checkpoint_v1.json and checkpoint_v2.json pin them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.llm import ChatMessage, ToolCall, Usage

FORMAT = 2
READABLE = (1, 2)


class CheckpointUnreadable(Exception):
    """A checkpoint of a format this release cannot read (written by a newer one), or damaged."""


@dataclass(frozen=True, slots=True)
class Resumption:
    """What a process taking a run over goes on from: its checkpoint (None: from the start),
    the last seq stored, and which takeover this is (1 for the first). `decided`: not a takeover
    but a waiting run going on after its approval was decided (it says nothing of resuming)."""

    state: Mapping[str, Any] | None
    last_seq: int
    attempt: int
    decided: bool = False

    @property
    def from_seq(self) -> int:
        """The last event the run's state covers: everything after it comes again."""
        return int(self.state["seq"]) if self.state is not None else 0


def _call(call: ToolCall) -> dict[str, str]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def _message(message: ChatMessage) -> dict[str, Any]:
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        data["tool_calls"] = [_call(call) for call in message.tool_calls]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    return data


@dataclass(slots=True)
class RunState:
    """Everything one run accumulates; owned by exactly one engine, stored at each step."""

    conversation: list[ChatMessage] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    steps: int = 0
    answer: list[str] = field(default_factory=list)  # joined with "": breaks are pieces too
    usage: Usage = field(default_factory=Usage)
    pending: list[ToolCall] = field(default_factory=list)  # the step's calls not yet completed
    in_flight: str | None = None  # the call started and not completed (its tool_executing sent)
    # The call the run waits to have approved: {"tool_call_id", "tool", "arguments", "expires_at"}.
    awaiting: dict[str, Any] | None = None
    # Decisions on calls, by tool_call_id: {"approved", "by", "reason"?, "announced"}; `announced`
    # once its approval_decided event is sent.
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def decide(self, tool_call_id: str, *, approved: bool, by: str, reason: str | None = None) -> None:
        """Record a decision on the call awaited (or about to be asked); it is announced later."""
        self.decisions[tool_call_id] = {"approved": approved, "by": by, "reason": reason,
                                        "announced": False}
        if self.awaiting is not None and self.awaiting.get("tool_call_id") == tool_call_id:
            self.awaiting = None

    def checkpoint(self, seq: int) -> dict[str, Any]:
        """The state as stored (JSON-ready, copied), covering the run's events up to `seq`."""
        usage = self.usage
        return {
            "format": FORMAT,
            "seq": seq,
            "conversation": [_message(message) for message in self.conversation],
            "tool_calls": [_call(call) for call in self.tool_calls],
            "steps": self.steps,
            "answer": list(self.answer),
            "usage": {"model_calls": usage.model_calls, "prompt_tokens": usage.prompt_tokens,
                      "completion_tokens": usage.completion_tokens, "tool_calls": usage.tool_calls},
            "pending": [_call(call) for call in self.pending],
            "in_flight": self.in_flight,
            "awaiting": None if self.awaiting is None else dict(self.awaiting),
            "decisions": {call_id: dict(decision) for call_id, decision in self.decisions.items()},
        }


def restore(data: Mapping[str, Any]) -> RunState:
    """The state of a stored checkpoint, of any format this release knows."""
    version = data.get("format")
    if version not in READABLE:
        raise CheckpointUnreadable(f"checkpoint format {version!r}; this release reads {READABLE}")
    try:
        usage = data["usage"]
        return RunState(
            conversation=[ChatMessage(role=m["role"], content=m.get("content", ""),
                                      tool_calls=tuple(ToolCall(**c) for c in m.get("tool_calls", ())),
                                      tool_call_id=m.get("tool_call_id"))
                          for m in data["conversation"]],
            tool_calls=[ToolCall(**call) for call in data["tool_calls"]],
            steps=int(data["steps"]),
            answer=[str(piece) for piece in data["answer"]],
            usage=Usage(model_calls=usage["model_calls"], prompt_tokens=usage["prompt_tokens"],
                        completion_tokens=usage["completion_tokens"], tool_calls=usage["tool_calls"]),
            pending=[ToolCall(**call) for call in data["pending"]],
            in_flight=data["in_flight"],
            awaiting=dict(data["awaiting"]) if data.get("awaiting") else None,  # format 1: none
            decisions={str(k): dict(v) for k, v in (data.get("decisions") or {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointUnreadable(f"checkpoint damaged: {exc!r}") from None
