"""Interactive mode: the prompt, the slash commands, and stdin read inside the event loop.

Apart from `exchange` because only a person at a prompt needs it; `--message` sends one message and
reads the keyboard only for a question its run asks, and only on a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import termios
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from entrypoints.chat_client.approval import answer_open_questions, open_questions
from entrypoints.chat_client.exchange import exchange, follow
from entrypoints.chat_client.inbox import Fatal, Frame, Inbox, Signal
from entrypoints.chat_client.threads import Threads

if TYPE_CHECKING:
    from entrypoints.chat_client.approval import Approver
    from entrypoints.chat_client.link import Link
    from entrypoints.chat_client.views import View

HELP = ("/threads lists your threads, /help the other commands, /quit exits (so do Ctrl-D and Ctrl-C); "
        "Ctrl-C during a run stops it")
COMMANDS = """commands:
  /threads          your threads, most recent first, numbered (a page at a time)
  /threads more     the next page of the last listing (/threads or /search)
  /search TEXT      the threads whose title or messages hold TEXT
  /open N           switch to thread N of the last listing (or /open THREAD_ID) and show its recent history
  /rename TITLE     rename the current thread
  /new              your next message starts a new thread
  /help             this list
  /quit             exit (so do Ctrl-D and Ctrl-C at the prompt)
Ctrl-C during a run stops the run, not the client."""


async def converse(link: Link, view: View, inbox: Inbox, keyboard: Keyboard, approver: Approver,
                   thread_id: str | None) -> int:
    looked = link.connections
    threads = Threads(link, view)

    async def waiting_here() -> list[Frame]:
        """After a reconnect: the questions this thread's runs ask (none if they were looked at)."""
        nonlocal looked
        if link.connections == looked:
            return []
        looked = link.connections
        return await open_questions(link, view, thread_id)

    try:
        questions = await open_questions(link, view, thread_id, at_start=True)
        while True:
            # At the start, and after a reconnect (at the prompt or during a run): what waits here.
            await answer_open_questions(link, view, inbox, approver, questions or await waiting_here())
            line = await _prompt(keyboard, view, inbox, waiting_here)
            if line is None:
                break
            if isinstance(line, list):
                questions = line
                continue
            questions = []
            text = line.strip()
            if text == "/quit":
                break
            command, _, rest = text.partition(" ")
            if text == "/new":
                thread_id = None
                view.note("(your next message starts a new thread)")
            elif text in ("/help", "/?"):
                view.note(COMMANDS)
            elif command == "/threads" and rest.strip() == "more":
                await threads.more(thread_id)
            elif command == "/threads":
                if rest.strip():
                    view.note("(usage: /threads, then /threads more for the next page)")
                else:
                    await threads.list(None, thread_id)
            elif command == "/search":
                if rest.strip():
                    await threads.list(rest.strip(), thread_id)
                else:
                    view.note("(usage: /search TEXT)")
            elif command == "/rename":
                await threads.rename(thread_id, rest)
            elif command == "/open":
                if (opened := await threads.open(rest)) is not None:
                    thread_id = opened.thread_id
                    if opened.going_run_id is not None:  # still going: shown live, from its start
                        await follow(link, view, inbox, approver, opened.going_run_id, thread_id)
                    looked = link.connections
                    questions = await open_questions(link, view, thread_id)
            elif re.fullmatch(r"/[A-Za-z]+", command):  # a typo of a command, not a message to send
                view.note(f"(no command {command}: /help lists them)")
            elif text:
                _, thread_id = await exchange(link, view, inbox, approver, text, thread_id)
    finally:
        keyboard.pause()
    return 0


async def _prompt(keyboard: Keyboard, view: View, inbox: Inbox,
                  waiting_here: Callable[[], Awaitable[list[Frame]]]) -> str | list[Frame] | None:
    """The next line typed; None for Ctrl-D or Ctrl-C; or, after a reconnect, the questions that wait in
    this thread. Frames arriving meanwhile are only shown raw."""
    view.prompt("you> ")
    keyboard.listen()
    questions: list[Frame] = []
    line = None
    try:
        while (line := keyboard.next_line()) is None and not keyboard.ended:
            item = await inbox.get()
            if item is Signal.INTERRUPT:
                break
            if isinstance(item, Fatal):
                raise item
            if isinstance(item, dict):
                view.raw(item)
                if item.get("type") == "ready" and (questions := await waiting_here()):
                    break
    finally:
        keyboard.pause()
        view.prompt_done(ended=line is None)
    return questions or line


class Keyboard:
    """stdin, line by line, inside the event loop (no thread left stuck in a read on exit). It is read
    only while the prompt is up, so what is typed during a run waits in the terminal for the next one."""

    def __init__(self, inbox: Inbox) -> None:
        self._fd = sys.stdin.fileno()
        self._inbox = inbox
        self._lines: deque[str] = deque()
        self._partial = b""
        self._watching = False
        self.ended = False

    def next_line(self) -> str | None:
        return self._lines.popleft() if self._lines else None

    def listen(self) -> None:
        if self.ended or self._lines or self._watching:
            return
        try:
            asyncio.get_running_loop().add_reader(self._fd, self._read)
            self._watching = True
        except PermissionError:
            # A regular file (stdin redirected from one) cannot be watched, but it never blocks either.
            while not self._lines and not self.ended:
                self._read()

    def drop_typed_ahead(self) -> None:
        """On a terminal, before a question: what was typed before it showed is not its answer."""
        if not os.isatty(self._fd):
            return  # a script's answers come from a pipe or a file, written ahead on purpose
        self._lines.clear()
        self._partial = b""
        with contextlib.suppress(termios.error, OSError):
            termios.tcflush(self._fd, termios.TCIFLUSH)

    def pause(self) -> None:
        if self._watching:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._watching = False

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # the terminal went away
            data = b""
        if data:
            *complete, self._partial = (self._partial + data).split(b"\n")
            self._lines.extend(line.decode(errors="replace").rstrip("\r") for line in complete)
        else:
            self.ended = True
            self.pause()
            if self._partial:
                self._lines.append(self._partial.decode(errors="replace"))
                self._partial = b""
        self._inbox.put_nowait(Signal.TYPED)
