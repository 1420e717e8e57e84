"""The user's threads at the prompt: `/threads` and `/search` list them, `/rename` renames the current
one, `/open` switches to one and shows its recent history.

Its own module because it is the client's only part that talks HTTP besides the login and the
questions waiting: a listing is remembered (its numbers, its next page) between two commands, and
the history is drawn from the stored timeline, not from the socket.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from entrypoints.chat_client.inbox import Frame

if TYPE_CHECKING:
    from entrypoints.chat_client.link import Link
    from entrypoints.chat_client.views import View

PAGE = 10  # threads a listing shows at a time
HISTORY = 20  # the messages shown on opening a thread, the newest ones
GOING = frozenset({"queued", "running"})  # a run that may still stream: followed after its history


@dataclass
class Listing:
    """The last `/threads` or `/search`: every thread shown so far (numbered from 1) and its next page."""

    query: str | None = None
    threads: list[Frame] = field(default_factory=list)
    next_cursor: str | None = None


@dataclass(frozen=True)
class Opened:
    """A thread switched to: its id, and the run of it still going (shown live from its start), if any."""

    thread_id: str
    going_run_id: str | None = None


class Threads:
    def __init__(self, link: Link, view: View) -> None:
        self._link = link
        self._view = view
        self._listing = Listing()

    async def list(self, query: str | None, current: str | None) -> None:
        """The first page of the user's threads (those holding `query`), most recently updated first."""
        self._listing = Listing(query=query)
        await self._page(None, current)

    async def more(self, current: str | None) -> None:
        """The next page of the last listing."""
        if not self._listing.threads:
            self._view.note("(nothing listed yet: /threads or /search TEXT)")
        elif self._listing.next_cursor is None:
            self._view.note("(that was the last page)")
        else:
            await self._page(self._listing.next_cursor, current)

    async def rename(self, thread_id: str | None, title: str) -> None:
        if thread_id is None:
            self._view.note("(no thread to rename yet: send a message first, or /open one)")
            return
        if not title.strip():
            self._view.note("(usage: /rename NEW TITLE)")
            return
        answer = await self._link.request("PATCH", f"/api/threads/{quote(thread_id, safe='')}",
                                          json_body={"title": title}, failed="could not rename the thread")
        if answer is None:
            return
        status, body = answer
        if status == 200 and isinstance(body, dict):
            self._view.note(f"(renamed to “{body.get('title')}”)")
            for listed in self._listing.threads:
                if listed.get("thread_id") == thread_id:
                    listed["title"] = body.get("title")
        else:
            self._view.note(f"could not rename the thread: {_reason(status, body)}")

    async def open(self, ref: str) -> Opened | None:
        """Switch to thread `ref` (a number of the last listing, or a thread id) and show its history."""
        ref = ref.strip()
        if not ref:
            self._view.note("(usage: /open N, a number from /threads, or /open THREAD_ID)")
            return None
        title = None
        if ref.isdigit():
            number = int(ref)
            if not 1 <= number <= len(self._listing.threads):
                self._view.note(f"(no thread {number} listed: /threads lists them)")
                return None
            listed = self._listing.threads[number - 1]
            ref, title = str(listed.get("thread_id")), listed.get("title")
        answer = await self._link.request("GET", f"/api/threads/{quote(ref, safe='')}/timeline",
                                          params={"limit": str(HISTORY)}, failed="could not open the thread")
        if answer is None:
            return None
        status, body = answer
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("items"), list):
            self._view.note(f"could not open {ref}: {_reason(status, body)}")
            return None
        items = [item for item in body["items"] if isinstance(item, dict)]
        width = max(shutil.get_terminal_size().columns, 40)
        self._view.note("\n".join(history_lines(ref, title, items, older=bool(body.get("before")),
                                                width=width)))
        return _opened(ref, items)

    async def _page(self, cursor: str | None, current: str | None) -> None:
        listing = self._listing
        params = {"limit": str(PAGE)}
        if listing.query is not None:
            params["q"] = listing.query
        if cursor is not None:
            params["cursor"] = cursor
        answer = await self._link.request("GET", "/api/threads", params=params,
                                          failed="could not list threads")
        if answer is None:
            return
        status, body = answer
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("threads"), list):
            self._view.note(f"could not list threads: {_reason(status, body)}")
            return
        page = [thread for thread in body["threads"] if isinstance(thread, dict)]
        first_number = len(listing.threads) + 1
        listing.threads += page
        listing.next_cursor = body.get("next_cursor") if isinstance(body.get("next_cursor"), str) else None
        self._view.note("\n".join(listing_lines(listing, page, first_number, current)))


def listing_lines(listing: Listing, page: list[Frame], first_number: int, current: str | None,
                  now: datetime | None = None) -> list[str]:
    what = f"threads holding “{listing.query}”" if listing.query is not None else "your threads"
    if not page:
        return [f"(no {what})" if first_number == 1 else "(no more threads)"]
    lines = [f"{what}, most recent first:" if first_number == 1 else f"{what}, continued:"]
    for number, thread in enumerate(page, start=first_number):
        mark = "*" if thread.get("thread_id") == current else " "
        lines.append(f"{mark}{number:>3}. {thread.get('title') or '(untitled)'}  "
                     f"· {_ago(thread.get('updated_at'), now)} · {thread.get('thread_id')}")
    more = "; /threads more for the next page" if listing.next_cursor else ""
    lines.append(f"(/open N switches to one{more})")
    return lines


def history_lines(thread_id: str, title: Any, items: list[Frame], *, older: bool, width: int) -> list[str]:
    """The thread's recent history: each message, and under each of the user's, its run in one line."""
    name = f"“{title}” ({thread_id})" if title else thread_id
    lines = [f"── {name}: {'the last ' if older else ''}{len(items)} message(s) ──"]
    if older:
        lines.append("(older messages not shown)")
    for item in items:
        message = item.get("message") if isinstance(item.get("message"), dict) else {}
        text = str(message.get("text") or "")
        if message.get("role") == "user":
            lines.append(f"you: {text}")
        else:
            lines.append(text)
        run = item.get("run")
        if isinstance(run, dict) and (summary := run_summary(run)):
            lines.append(_cut(f"  {summary}", width))
    lines.append("── your next message goes to this thread ──")
    return lines


def run_summary(run: Frame) -> str:
    """One line for a run: its tool calls (tool, arguments, result) and how it ended if not completed."""
    calls: dict[str, dict[str, Any]] = {}
    for event in run.get("events") or []:
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(data, dict):
            continue
        call_id = str(data.get("tool_call_id"))
        if event.get("type") == "tool_executing":
            calls.setdefault(call_id, {})["start"] = data
        elif event.get("type") == "tool_completed":
            calls.setdefault(call_id, {})["end"] = data
    status = run.get("status")
    if status in GOING:  # its events are shown live, from its start, after the history
        return _outcome(run)
    parts = [_call(call) for call in calls.values()]
    parts += [] if status in ("completed", None) else [_outcome(run)]
    if not parts:
        return ""
    return ("tools: " if calls else "") + "; ".join(parts)


def _call(call: dict[str, Any]) -> str:
    start, end = call.get("start") or {}, call.get("end") or {}
    tool = start.get("tool") or end.get("tool") or "a tool"
    shown = f"{tool} {_compact(start.get('arguments'))}" if start else str(tool)
    if not end:
        return f"{shown} …"
    if "error" in end:
        return f"{shown} ✗ {end['error']}"
    result = end.get("result")
    if isinstance(result, dict) and "value" in result:  # the calculator: the value is the news
        result = result["value"]
    return f"{shown} → {_compact(result)}"


def _outcome(run: Frame) -> str:
    status = run.get("status")
    if status == "failed":
        return f"(failed: {run.get('error') or 'error'})"
    if status == "cancelled":
        return "(stopped)"
    if status == "waiting":
        return "(waits for your approval)"
    if status in GOING:
        return "(still going: shown below)"
    return f"({status})"


def _opened(thread_id: str, items: list[Frame]) -> Opened:
    runs = [item["run"] for item in items if isinstance(item.get("run"), dict)]
    last = runs[-1] if runs else None
    if last is None or last.get("status") not in GOING or not isinstance(last.get("run_id"), str):
        return Opened(thread_id)
    return Opened(thread_id, last["run_id"])


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _ago(stamp: Any, now: datetime | None = None) -> str:
    try:
        moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return "?"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return moment.strftime("%Y-%m-%d")


def _reason(status: int, body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return "no such thread" if status == 404 else f"the server answered HTTP {status}"
