"""How server frames are shown: one JSON line each for programs (--json), or a run as a person reads it.

Both views take the same calls, so the socket, the run and the prompt never ask which one is in use.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import sys
from typing import Any, Protocol

from entrypoints.chat_client.inbox import Frame

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class View(Protocol):
    def raw(self, frame: Frame) -> None: ...
    def show(self, frame: Frame) -> None: ...
    def begin(self) -> None: ...
    def end(self) -> None: ...
    def prompt(self, text: str) -> None: ...
    def prompt_done(self, *, ended: bool) -> None: ...
    def note(self, text: str) -> None: ...


class JsonView:
    """--json: every server frame as one line on stdout, for programs; text for people goes to stderr."""

    def raw(self, frame: Frame) -> None:
        sys.stdout.write(json.dumps(frame, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def show(self, frame: Frame) -> None:
        pass

    def begin(self) -> None:
        pass

    def end(self) -> None:
        pass

    def prompt(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def prompt_done(self, *, ended: bool) -> None:
        if ended:
            self.prompt("\n")

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _shown_result(result: Any, limit: int = 200) -> str:
    # The calculator answers {"expression", "value"}: the expression was just shown, the value is news.
    if isinstance(result, dict) and "value" in result:
        result = result["value"]
    text = _compact(result)
    return text if len(text) <= limit else text[:limit - 1] + "…"


class HumanView:
    """The run as a person reads it. On a terminal a spinner stands in while the agent works;
    elsewhere (a pipe, a file) every step is a plain line."""

    def __init__(self) -> None:
        self._out = sys.stdout
        self._tty = self._out.isatty()
        self._spinner: asyncio.Task[None] | None = None
        self._label = ""
        self._midline = False  # the answer is being written on the current line
        self._prompt: str | None = None  # shown and waiting for a line
        self._streamed = False
        self._denied: set[str] = set()  # tool calls whose "denied" was said already, by approval_decided
        self._handlers = {
            "ack": self._on_ack, "run_resumed": self._on_resumed, "agent_thinking": self._on_thinking,
            "approval_required": self._on_approval_required, "approval_decided": self._on_approval_decided,
            "tool_executing": self._on_tool_executing, "tool_completed": self._on_tool_completed,
            "agent_message_delta": self._on_delta, "agent_completed": self._on_completed,
            "agent_error": self._on_agent_error, "agent_cancelled": self._on_cancelled,
            "error": self._on_error,
        }

    def raw(self, frame: Frame) -> None:
        pass

    def show(self, frame: Frame) -> None:
        handler = self._handlers.get(frame.get("type", ""))
        if handler is not None:
            data = frame.get("data")
            handler(frame, data if isinstance(data, dict) else {})

    def begin(self) -> None:
        self._streamed = False
        self._wait("thinking…")

    def end(self) -> None:
        self._stop_spinner()
        if self._midline:
            self._write("\n")
            self._midline = False

    def prompt(self, text: str) -> None:
        self.end()  # a spinner would write over it
        self._prompt = text
        self._write(text)

    def prompt_done(self, *, ended: bool) -> None:
        self._prompt = None
        if ended:
            self._write("\n")  # leave the shell's prompt on a line of its own

    def note(self, text: str) -> None:
        self.end()
        if self._prompt is not None:  # e.g. "reconnecting…" while idle: below the prompt, then it again
            self._write("\n")
        print(text, file=sys.stderr, flush=True)
        if self._prompt is not None:
            self._write(self._prompt)

    # -- the events ---------------------------------------------------------------------------

    def _on_ack(self, frame: Frame, data: Frame) -> None:
        if frame.get("status") == "queued":
            self._wait("queued behind this thread's current run…")

    def _on_resumed(self, frame: Frame, data: Frame) -> None:
        # What streamed after the checkpoint comes again: say so, and start the answer over
        # from the checkpoint's text (a terminal cannot take printed text back).
        self.end()
        self._line("(the server was restarted; picking up where it left off)")
        self._streamed = False
        if text := str(data.get("text") or ""):
            self._stream(text)

    def _on_thinking(self, frame: Frame, data: Frame) -> None:
        text = str(data.get("text") or "")
        if self._tty:
            self._wait(f"thinking… {text}")
        else:
            self._line(f"thinking… {text}")

    def _on_approval_required(self, frame: Frame, data: Frame) -> None:
        self._line(f"? tool {data.get('tool')} {_compact(data.get('arguments'))} asks for your approval")
        self._wait("waiting for your approval…")

    def _on_approval_decided(self, frame: Frame, data: Frame) -> None:
        by, approved = data.get("by"), data.get("approved") is True
        if by == "timeout":
            self._line("✗ timed out: nobody answered in time")
            return
        if approved:
            self._line("✓ approved by your standing grant" if by == "grant" else "✓ approved")
        else:
            self._denied.add(str(data.get("tool_call_id")))
            self._line(f"✗ denied: {data['reason']}" if data.get("reason") else "✗ denied")
        self._wait("thinking…")

    def _on_tool_executing(self, frame: Frame, data: Frame) -> None:
        self._line(f"→ tool {data.get('tool')} {_compact(data.get('arguments'))}")
        self._wait(f"running {data.get('tool')}…")

    def _on_tool_completed(self, frame: Frame, data: Frame) -> None:
        if data.get("error") == "denied" and str(data.get("tool_call_id")) in self._denied:
            pass  # approval_decided said so a line ago
        elif "error" in data:
            self._line(f"✗ {data['error']}")
        else:
            self._line(f"← {_shown_result(data.get('result'))} ({data.get('duration_ms', '?')} ms)")
        self._wait("thinking…")

    def _on_delta(self, frame: Frame, data: Frame) -> None:
        self._stream(str(data.get("delta") or ""))

    def _on_completed(self, frame: Frame, data: Frame) -> None:
        if not self._streamed:  # no delta came (a model that does not stream): the whole answer
            self._stream(str(data.get("text") or ""))
        self.end()

    def _on_agent_error(self, frame: Frame, data: Frame) -> None:
        self._line(f"error: {data.get('message') or data.get('code') or 'the run failed'}")

    def _on_cancelled(self, frame: Frame, data: Frame) -> None:
        self._line("(stopped)")

    def _on_error(self, frame: Frame, data: Frame) -> None:
        self._line(f"error: {frame.get('message') or frame.get('code')}")

    # -- writing ------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _line(self, text: str) -> None:
        self.end()
        self._write(text + "\n")

    def _stream(self, text: str) -> None:
        self._stop_spinner()
        self._write(text)
        self._streamed = True
        if text:
            self._midline = not text.endswith("\n")

    def _wait(self, label: str) -> None:
        self._label = label
        if self._tty and self._spinner is None:
            self.end()
            self._spinner = asyncio.get_running_loop().create_task(self._spin())

    def _stop_spinner(self) -> None:
        if self._spinner is not None:
            self._spinner.cancel()
            self._spinner = None
            self._write("\r\x1b[K")

    async def _spin(self) -> None:
        for glyph in itertools.cycle(SPINNER):
            # Cut to the width: a wrapped line could not be rubbed out with \r.
            width = max(shutil.get_terminal_size().columns - 3, 10)
            self._write(f"\r{glyph} {self._label[:width]}\x1b[K")
            await asyncio.sleep(0.1)
