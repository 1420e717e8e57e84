"""`goldenpath chat` managing threads at the prompt: `/threads` (a page at a time), `/search`, `/rename`
and `/open` (switch, and the thread's recent history), as a person sees them on a pseudo-terminal
against a real server process. The threads are made over HTTP beside the terminal, as another tab
or device of the user's would."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from entrypoints.chat_client.threads import PAGE, run_summary
from tests.e2e.processes import ProcessHarness, procs_fixture  # noqa: F401
from tests.e2e.test_terminal_approvals import as_alice, send
from tests.e2e.test_terminal_client import (  # noqa: F401  (the `terminals` fixture)
    CTRL_D,
    PROMPT,
    Terminal,
    log_in,
    open_chat,
    start,
    terminals_fixture,
)

MULTIPLY = "What is 17 * 23?"
WHEN = r"(?:just now|\d+ min ago)"  # "just now", or later on a slow machine
HISTORY_END = r"── your next message goes to this thread ──\n"


async def titles(alice: Any) -> dict[str, str]:
    status, body = await alice.http("GET", "/api/threads")
    assert status == 200, body
    return {thread["thread_id"]: thread["title"] for thread in body["threads"]}


def command(chat: Terminal, line: str) -> None:
    chat.type(line + "\n")


async def test_threads_come_a_page_at_a_time_and_search_finds_titles_and_message_text(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    alice = await as_alice(server)
    # The oldest thread: titled by its first message, and holding "2 + 3" in its second only.
    first = await send(alice, MULTIPLY)
    await send(alice, "What is 2 + 3?", thread_id=first["thread_id"])
    for n in range(1, PAGE + 1):  # a full page of newer ones, so the oldest is on the second page
        await send(alice, f"hello number {n}")

    chat = open_chat(terminals, server, tmp_path)
    await log_in(chat)
    command(chat, "/threads")
    await chat.expect(r"your threads, most recent first:\n")
    for number, n in enumerate(range(PAGE, 0, -1), start=1):
        await chat.expect(rf" +{number}\. hello number {n}  · {WHEN} · thr_\w+\n")
    await chat.expect(r"\(/open N switches to one; /threads more for the next page\)\n")
    await chat.expect(PROMPT)
    assert MULTIPLY not in chat.screen

    command(chat, "/threads more")
    await chat.expect(r"your threads, continued:\n")
    await chat.expect(rf" +{PAGE + 1}\. What is 17 \* 23\?  · {WHEN} · {first['thread_id']}\n")
    await chat.expect(r"\(/open N switches to one\)\n")
    await chat.expect(PROMPT)
    command(chat, "/threads more")
    await chat.expect(r"\(that was the last page\)\n")
    await chat.expect(PROMPT)

    # By message text (not in the title), by title in another case, and nothing.
    command(chat, "/search 2 + 3")
    found = await chat.expect(r"threads holding “2 \+ 3”, most recent first:\n")
    await chat.expect(rf" +1\. What is 17 \* 23\?  · {WHEN} · {first['thread_id']}\n")
    end = await chat.expect(PROMPT)
    assert "hello number" not in chat.screen[found.end():end.start()]
    command(chat, "/search HELLO NUMBER 7")
    found = await chat.expect(r"threads holding “HELLO NUMBER 7”, most recent first:\n")
    await chat.expect(r" +1\. hello number 7  ·")
    end = await chat.expect(PROMPT)
    assert not re.search(r" 2\. ", chat.screen[found.end():end.start()])
    command(chat, "/search no such words anywhere")
    await chat.expect(r"\(no threads holding “no such words anywhere”\)\n")
    await chat.expect(PROMPT)

    chat.type(CTRL_D)
    assert await chat.wait_exit() == 0
    assert "Traceback" not in chat.screen


async def test_open_switches_and_shows_the_history_and_rename_renames_the_current_thread(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    alice = await as_alice(server)
    multiply = (await send(alice, MULTIPLY))["thread_id"]
    desk = (await send(alice, "Remember that my desk is 4B"))["thread_id"]

    chat = open_chat(terminals, server, tmp_path)
    await log_in(chat)
    command(chat, "/rename Too early")  # no thread yet: nothing renamed
    await chat.expect(r"\(no thread to rename yet: send a message first, or /open one\)\n")
    await chat.expect(PROMPT)

    command(chat, "/threads")
    await chat.expect(r" +1\. Remember that my desk is 4B  ·")
    await chat.expect(r" +2\. What is 17 \* 23\?  ·")
    await chat.expect(PROMPT)
    command(chat, "/open 2")
    await chat.expect(rf"── “What is 17 \* 23\?” \({multiply}\): 2 message\(s\) ──\n")
    await chat.expect(r"you: What is 17 \* 23\?\n")
    await chat.expect(r'  tools: calculator \{"expression": "17 \* 23"\} → 391\n')
    await chat.expect(r"17 \* 23 = 391\.\n")
    await chat.expect(HISTORY_END)
    await chat.expect(PROMPT)

    # The next message goes to the thread opened, and /rename renames that one.
    chat.type("What is 2 + 3?\n")
    await chat.expect(r"2 \+ 3 = 5\.\n")
    await chat.expect(PROMPT)
    command(chat, "/rename   Multiplication   homework ")
    await chat.expect(r"\(renamed to “Multiplication homework”\)\n")
    await chat.expect(PROMPT)
    assert await titles(alice) == {multiply: "Multiplication homework", desk: "Remember that my desk is 4B"}
    status, body = await alice.http("GET", f"/api/threads/{multiply}/messages")
    assert status == 200 and [m["text"] for m in body["messages"] if m["role"] == "user"] == \
        [MULTIPLY, "What is 2 + 3?"]

    # By id; then what cannot be opened leaves the current thread as it was.
    command(chat, f"/open {desk}")
    await chat.expect(rf"── {desk}: 2 message\(s\) ──\n")
    await chat.expect(r"you: Remember that my desk is 4B\n")
    await chat.expect(r"  tools: \w+ ")
    await chat.expect(HISTORY_END)
    await chat.expect(PROMPT)
    command(chat, "/open 9")
    await chat.expect(r"\(no thread 9 listed: /threads lists them\)\n")
    await chat.expect(PROMPT)
    command(chat, "/open thr_not_there")
    await chat.expect(r"could not open thr_not_there: .+\n")
    await chat.expect(PROMPT)
    command(chat, "/rename Desk notes")
    await chat.expect(r"\(renamed to “Desk notes”\)\n")
    await chat.expect(PROMPT)
    assert await titles(alice) == {multiply: "Multiplication homework", desk: "Desk notes"}

    chat.type(CTRL_D)
    assert await chat.wait_exit() == 0
    assert "Traceback" not in chat.screen


async def test_opening_a_thread_whose_run_is_going_shows_that_run_live_to_its_end(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    # The builtin model answers "tell me a story" with its help text, two words every 150 ms: seconds.
    server = await start(procs, delay_ms=150)
    alice = await as_alice(server)
    chat = open_chat(terminals, server, tmp_path)
    await log_in(chat)
    # Started elsewhere once the client is up, so it is still going when opened, however slow the machine.
    status, body = await alice.http("POST", "/api/chat/message", json={"message": "tell me a story"})
    assert status == 202, body
    command(chat, f"/open {body['thread_id']}")
    await chat.expect(r"you: tell me a story\n")
    await chat.expect(r"  \(still going: shown below\)\n")
    await chat.expect(HISTORY_END)
    await chat.expect(r"built-in")
    await chat.expect(r"connect a real model\.\n", timeout=60)
    await chat.expect(PROMPT)
    status, run = await alice.http("GET", f"/api/runs/{body['run_id']}")
    assert status == 200 and run["status"] == "completed"

    chat.type(CTRL_D)
    assert await chat.wait_exit() == 0


def test_a_runs_line_says_each_tool_call_and_how_the_run_ended_if_it_did_not_complete() -> None:
    def event(kind: str, **data: Any) -> dict[str, Any]:
        return {"type": kind, "data": {"tool_call_id": "c1", **data}}

    asked = [event("tool_executing", tool="delete_notes", arguments={"query": "code"}),
             event("tool_completed", tool="delete_notes", error="denied")]
    assert run_summary({"status": "completed", "events": asked}) == \
        'tools: delete_notes {"query": "code"} ✗ denied'
    assert run_summary({"status": "failed", "error": "model_error", "events": []}) == "(failed: model_error)"
    assert run_summary({"status": "cancelled", "events": asked[:1]}) == \
        'tools: delete_notes {"query": "code"} …; (stopped)'
    assert run_summary({"status": "completed", "events": []}) == ""
