"""The questions a run asks before a tool of policy `ask` runs (`approval_required`), and the answer
typed at `approve? [y/N/a]`.

Its own module because it is the one place the keyboard is read while a run is shown: the question
is up while frames keep arriving, a decision taken elsewhere (another tab, the timeout) or the run's
end takes it back, and Ctrl-C still stops the run. Without a keyboard (`--message` in a script) it
only says that the run waits, and where to answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from entrypoints.chat_client.exchange import TERMINAL, follow
from entrypoints.chat_client.inbox import Frame, Inbox

if TYPE_CHECKING:
    from entrypoints.chat_client.conversation import Keyboard
    from entrypoints.chat_client.link import Link
    from entrypoints.chat_client.views import View

ASK = "approve? [y/N/a] "
EXPLAINED = ("(y lets {tool} run this once; N, Enter or anything else says no; a lets it run and lets "
             "{tool} run in this thread from now on without asking; Ctrl-C stops the run)")
YES, ALWAYS_HERE = frozenset({"y", "yes"}), frozenset({"a", "always"})


@dataclass(frozen=True)
class Decision:
    tool_call_id: str
    approve: bool
    remember: str | None = None  # "thread": a grant for this tool in this thread


def decision_for(tool_call_id: str, line: str | None) -> Decision:
    """What a typed line means; no line at all (the input ended) is a no, as anything unexpected is."""
    answer = (line or "").strip().lower()
    if answer in ALWAYS_HERE:
        return Decision(tool_call_id, approve=True, remember="thread")
    return Decision(tool_call_id, approve=answer in YES)


class Approver:
    """Asks about the questions of the run being shown, one at a time, oldest first. Lives as long as
    the client (the help is said once); `forget` clears what one run asked."""

    def __init__(self, view: View, keyboard: Keyboard | None) -> None:
        self._view = view
        self._keyboard = keyboard
        self._explained = False
        self._open: dict[str, Frame] = {}  # approval_required frames not yet decided, by tool_call_id
        self._asking: str | None = None  # the one whose prompt is up
        self._told: set[str] = set()  # without a keyboard: the questions already said to be waiting

    @property
    def can_ask(self) -> bool:
        return self._keyboard is not None

    def track(self, frame: Frame) -> None:
        """A frame of the run being shown, before it is shown: a question to ask, or one to take back."""
        kind = frame.get("type")
        data = frame.get("data")
        call = data.get("tool_call_id") if isinstance(data, dict) else None
        if kind == "approval_required" and isinstance(call, str):
            self._open[call] = frame
        elif kind == "approval_decided" and isinstance(call, str):  # here, elsewhere or by the timeout
            self._open.pop(call, None)
            if call == self._asking:
                self.withdraw()
        elif kind in TERMINAL:
            self.forget()

    def ask(self) -> None:
        """Put up the oldest open question, unless one is up already."""
        if self._asking is not None or not self._open:
            return
        call, frame = next(iter(self._open.items()))
        tool = frame["data"].get("tool") or "the tool"
        if self._keyboard is None:
            if call not in self._told:
                self._told.add(call)
                self._view.note(f"(the run waits for your approval of {tool}: answer in the web chat or with "
                                f"`goldenpath chat --thread {frame.get('thread_id')}`; Ctrl-C stops the run)")
            return
        self._asking = call
        if not self._explained:
            self._explained = True
            self._view.note(EXPLAINED.format(tool=tool))
        self._keyboard.drop_typed_ahead()
        self._view.prompt(ASK)
        self._keyboard.listen()

    def answer(self) -> Decision | None:
        """The decision, once a line was typed for the question that is up (or the input ended)."""
        if self._asking is None or self._keyboard is None:
            return None
        line = self._keyboard.next_line()
        if line is None and not self._keyboard.ended:
            return None
        call, self._asking = self._asking, None
        question = self._open.pop(call)
        self._keyboard.pause()
        self._view.prompt_done(ended=line is None)
        decision = decision_for(call, line)
        if decision.remember:
            tool = question["data"].get("tool")
            self._view.note(f"(from now on {tool} runs in this thread without asking)")
        return decision

    def withdraw(self) -> None:
        """Take the prompt down (decided elsewhere, Ctrl-C, the run ended); nothing is decided here."""
        if self._asking is not None and self._keyboard is not None:
            self._asking = None
            self._keyboard.pause()
            self._view.prompt_done(ended=True)

    def forget(self) -> None:
        self.withdraw()
        self._open.clear()


async def open_questions(link: Link, view: View, thread_id: str | None, *,
                         at_start: bool = False) -> list[Frame]:
    """The questions waiting for the user in this thread; at the start, a word on other threads'."""
    approvals = await link.pending_approvals() or []
    here = [approval for approval in approvals
            if thread_id is not None and approval.get("thread_id") == thread_id]
    elsewhere = sorted({str(approval.get("thread_id")) for approval in approvals if approval not in here})
    if at_start and elsewhere:
        view.note(f"(runs wait for your approval in {len(elsewhere)} other thread(s): "
                  f"`--thread {elsewhere[0]}` to answer there)")
    return here


async def answer_open_questions(link: Link, view: View, inbox: Inbox, approver: Approver,
                                questions: list[Frame]) -> None:
    """Show each run that waits for an answer here, from its start, and ask its question."""
    for question in {str(question.get("run_id")): question for question in questions}.values():
        tool = question.get("tool") or "a tool"
        if not approver.can_ask:
            view.note(f"(a run of this thread waits for your approval of {tool}: answer in the web chat "
                      "or in `goldenpath chat`; a message sent here waits behind it)")
            continue
        view.note(f"(a run of this thread waits for your approval of {tool}; here it is)")
        await follow(link, view, inbox, approver, str(question.get("run_id")), question.get("thread_id"))
