"""One message sent and its run shown to the end.

`Run` is the bookkeeping with no I/O (which frames belong to this run, what to ask for again on a new
socket); `exchange` is the loop that feeds it from the inbox, turns Ctrl-C into a cancel and a
question the run asks into an answer (`approval`); `follow` is the same loop for a run that started
earlier and waits for an answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from entrypoints.chat_client.inbox import Fatal, Frame, Inbox, Signal

if TYPE_CHECKING:
    from entrypoints.chat_client.approval import Approver, Decision
    from entrypoints.chat_client.link import Link
    from entrypoints.chat_client.views import View

TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled"})


@dataclass
class Run:
    """One message sent and what came back for it: matched by client_message_id, then by run_id."""

    message: str
    thread_id: str | None
    client_message_id: str = field(default_factory=lambda: f"cli-{uuid.uuid4().hex}")
    run_id: str | None = None
    last_seq: int = 0
    outcome: str | None = None
    cancel_requested: bool = False
    followed: bool = False  # started earlier, not by this message: shown from its first event
    _early: list[Frame] = field(default_factory=list)

    def chat_frame(self) -> Frame:
        frame: Frame = {"type": "chat", "message": self.message, "client_message_id": self.client_message_id}
        if self.thread_id:
            frame["thread_id"] = self.thread_id
        return frame

    def cancel_frame(self) -> Frame:
        # By client_message_id: it stops the right run even if Ctrl-C came before the ack. A run
        # followed (it started earlier) is known by its run_id only.
        if self.followed:
            return {"type": "cancel", "run_id": self.run_id}
        return {"type": "cancel", "client_message_id": self.client_message_id}

    def approval_frame(self, decision: Decision) -> Frame:
        # With this run's client_message_id, which an error answer (a decision taken already) echoes.
        frame: Frame = {"type": "approval", "run_id": self.run_id, "tool_call_id": decision.tool_call_id,
                        "approve": decision.approve, "client_message_id": self.client_message_id}
        if decision.remember:
            frame["remember"] = decision.remember
        return frame

    def resume_frame(self) -> Frame:
        return {"type": "resume", "run_id": self.run_id, "after_seq": self.last_seq}

    def recovery_frames(self, *, resumed_by_cursor: bool) -> list[Frame]:
        if self.run_id is None:
            # The ack may be lost: the same client_message_id starts no second run, it is acked again.
            frames = [self.chat_frame()]
        else:
            frames = [] if resumed_by_cursor else [self.resume_frame()]
        return frames + ([self.cancel_frame()] if self.cancel_requested else [])

    def accept(self, frame: Frame) -> list[Frame]:
        """This run's frames among what arrived: none for another run's or a repeat; sets `outcome`."""
        kind = frame.get("type")
        if frame.get("client_message_id") == self.client_message_id and kind == "ack":
            self.run_id = frame.get("run_id")
            self.thread_id = frame.get("thread_id") or self.thread_id
            early, self._early = self._early, []
            return [frame, *(mine for event in early for mine in self._event(event))]
        if frame.get("client_message_id") == self.client_message_id and kind == "error":
            if self.run_id is None:  # the chat frame was refused: no run, no ack will come
                self.outcome = "error"
            return [frame]
        if isinstance(frame.get("seq"), int) and "run_id" in frame:
            if self.run_id is None:  # replayed on a new socket before the ack that names the run
                self._early.append(frame)
                return []
            return self._event(frame)
        return []

    def _event(self, frame: Frame) -> list[Frame]:
        if frame.get("run_id") != self.run_id or frame["seq"] <= self.last_seq:
            return []
        self.last_seq = frame["seq"]
        if frame.get("type") in TERMINAL:
            self.outcome = frame["type"]
        return [frame]


async def exchange(link: Link, view: View, inbox: Inbox, approver: Approver, text: str,
                   thread_id: str | None) -> tuple[str, str | None]:
    """Send one message and show its run to the end: (how it ended, the thread it went to)."""
    run = Run(text, thread_id)
    return await _show(link, view, inbox, approver, run, run.chat_frame()), run.thread_id


async def follow(link: Link, view: View, inbox: Inbox, approver: Approver, run_id: str,
                 thread_id: str | None) -> str:
    """Show a run that started earlier (one waiting for an answer) from its first event to its end."""
    run = Run("", thread_id, run_id=run_id, followed=True)
    return await _show(link, view, inbox, approver, run, run.resume_frame())


async def _show(link: Link, view: View, inbox: Inbox, approver: Approver, run: Run, first: Frame) -> str:
    link.run = run
    try:
        view.begin()
        await link.send(first)
        while run.outcome is None:
            # A question goes up once what arrived is shown: a replayed one answered further on never does.
            if inbox.empty() and not run.cancel_requested:
                approver.ask()
            if (decision := approver.answer()) is not None:
                await link.send(run.approval_frame(decision))
                continue
            item = await inbox.get()
            if item is Signal.INTERRUPT:
                approver.withdraw()
                if run.cancel_requested:  # a second Ctrl-C: stop waiting for the server to confirm
                    view.note("(stopped waiting; the run may still end on the server)")
                    return "interrupted"
                run.cancel_requested = True
                await link.send(run.cancel_frame())
            elif isinstance(item, Fatal):
                raise item
            elif isinstance(item, dict):
                view.raw(item)
                if item.get("type") == "resync" and run.run_id is not None:
                    # The cursor was older than what the server keeps: ask for this run's events instead.
                    await link.send(run.resume_frame())
                for frame in run.accept(item):
                    approver.track(frame)
                    view.show(frame)
        return run.outcome
    finally:
        approver.forget()
        link.run = None
        view.end()
