"""Interactive mode: the prompt, the slash commands, and stdin read inside the event loop.

Apart from `exchange` because only a person at a prompt needs it; `--message` sends one message and
never reads the keyboard.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import deque
from typing import TYPE_CHECKING

from entrypoints.chat_client.exchange import exchange
from entrypoints.chat_client.inbox import Fatal, Inbox, Signal

if TYPE_CHECKING:
    from entrypoints.chat_client.link import Link
    from entrypoints.chat_client.views import View

HELP = "/new starts a new thread, /quit exits (so do Ctrl-D and Ctrl-C); Ctrl-C during a run stops it"


async def converse(link: Link, view: View, inbox: Inbox, thread_id: str | None) -> int:
    keyboard = Keyboard(inbox)
    try:
        while (line := await _prompt(keyboard, view, inbox)) is not None:
            text = line.strip()
            if text == "/quit":
                break
            if text == "/new":
                thread_id = None
                view.note("(your next message starts a new thread)")
            elif text in ("/help", "/?"):
                view.note(HELP)
            elif text:
                _, thread_id = await exchange(link, view, inbox, text, thread_id)
    finally:
        keyboard.pause()
    return 0


async def _prompt(keyboard: Keyboard, view: View, inbox: Inbox) -> str | None:
    """The next line typed; None for Ctrl-D or Ctrl-C. Frames arriving meanwhile are only shown raw."""
    view.prompt("you> ")
    keyboard.listen()
    try:
        while (line := keyboard.next_line()) is None and not keyboard.ended:
            item = await inbox.get()
            if item is Signal.INTERRUPT:
                break
            if isinstance(item, Fatal):
                raise item
            if isinstance(item, dict):
                view.raw(item)
    finally:
        keyboard.pause()
        view.prompt_done(ended=line is None)
    return line


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
