"""`goldenpath chat` when a run asks before a tool runs: the question, `approve? [y/N/a]`, and the run
going on, as a person sees it on a pseudo-terminal against a real server process.

The builtin model's "Forget my locker code" calls delete_notes, whose policy is `ask`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.client import PASSWORD, User
from tests.e2e.processes import BIN, ProcessHarness, ServerProcess, procs_fixture  # noqa: F401
from tests.e2e.test_terminal_client import (  # noqa: F401  (the `terminals` fixture)
    CTRL_C,
    CTRL_D,
    PROMPT,
    Relay,
    Terminal,
    client_env,
    log_in,
    open_chat,
    start,
    terminals_fixture,
)

REMEMBER = "Remember that my locker code is 4417"
FORGET = "Forget my locker code"
ASK = r"approve\? \[y/N/a\] "
QUESTION = r'\? tool delete_notes \{"query": "locker code"\} asks for your approval\n'
EXPLAINED = r"\(y lets delete_notes run this once; N, Enter or anything else says no; a lets it run"
DONE = r"Done: I forgot your locker code is 4417\.\n"
DENIED = r"OK, I did not use delete_notes: you did not approve it\.\n"


async def as_alice(server: ServerProcess) -> User:
    """Alice over HTTP, beside her terminal: what another tab or device of hers does."""
    async with aiohttp.ClientSession() as session, session.post(
            server.base_url + "/api/auth/login", json={"username": "alice", "password": PASSWORD},
            timeout=aiohttp.ClientTimeout(total=20)) as response:
        assert response.status == 200, await response.text()
        token = (await response.json())["access_token"]
    return User(server=server.server, username="alice", user_id="", token=token)


async def send(alice: User, message: str, **fields: Any) -> dict[str, Any]:
    status, body = await alice.http("POST", "/api/chat/message", json={"message": message, "wait": True,
                                                                       **fields})
    assert status == 200, body
    return body


async def remember(chat: Terminal) -> None:
    chat.type(REMEMBER + "\n")
    await chat.expect(r"Got it\. I'll remember that your locker code is 4417\.\n")
    await chat.expect(PROMPT)


async def test_yes_runs_the_tool_no_does_not_and_always_answers_for_this_thread(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    chat = open_chat(terminals, server, tmp_path)
    await log_in(chat)

    # y: the tool runs and the run answers.
    await remember(chat)
    chat.type(FORGET + "\n")
    await chat.expect(QUESTION)
    await chat.expect(EXPLAINED)
    await chat.expect(ASK)
    chat.type("y\n")
    await chat.expect(r"✓ approved\n")
    await chat.expect(r'→ tool delete_notes \{"query": "locker code"\}\n')
    await chat.expect(DONE)
    await chat.expect(PROMPT)

    # Enter (no): the tool does not run, and the model says so.
    await remember(chat)
    chat.type(FORGET + "\n")
    await chat.expect(QUESTION)
    await chat.expect(ASK)
    chat.type("\n")
    denied = await chat.expect(r"✗ denied\n")
    answer = await chat.expect(DENIED)
    assert "✗" not in chat.screen[denied.end():answer.start()]  # the tool's "denied" is not said twice
    await chat.expect(PROMPT)

    # a: approved, and a grant for delete_notes in this thread...
    chat.type(FORGET + "\n")
    await chat.expect(QUESTION)
    await chat.expect(ASK)
    chat.type("a\n")
    await chat.expect(r"\(from now on delete_notes runs in this thread without asking\)\n")
    await chat.expect(r"✓ approved\n")
    await chat.expect(DONE)
    await chat.expect(PROMPT)
    alice = await as_alice(server)
    status, body = await alice.http("GET", "/api/approvals/grants")
    assert status == 200 and [(g["tool"], g["scope"]) for g in body["grants"]] == [("delete_notes", "thread")]

    # ... which answers the next call in this thread: no question.
    asked_before = len(chat.screen)
    chat.type(FORGET + "\n")
    await chat.expect(r"✓ approved by your standing grant\n")
    await chat.expect(r"I had nothing noted about locker code, so there was nothing to forget\.\n")
    await chat.expect(PROMPT)
    assert "approve?" not in chat.screen[asked_before:]
    assert len(re.findall(EXPLAINED, chat.screen)) == 1  # the help, once

    chat.type(CTRL_D)
    assert await chat.wait_exit() == 0
    assert "Traceback" not in chat.screen


async def test_ctrl_c_at_the_question_stops_the_run_not_the_client(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    chat = open_chat(terminals, server, tmp_path)
    await log_in(chat)
    chat.type(FORGET + "\n")
    await chat.expect(ASK)
    chat.type(CTRL_C)
    await chat.expect(r"\(stopped\)\n")
    await chat.expect(PROMPT)
    # The keyboard is the prompt's again.
    chat.type("What is 2 + 2?\n")
    await chat.expect(r"2 \+ 2 = 4\.\n")
    await chat.expect(PROMPT)
    alice = await as_alice(server)
    status, body = await alice.http("GET", "/api/approvals/pending")
    assert status == 200 and body == {"approvals": []}


async def test_a_question_left_open_is_asked_when_the_client_starts_in_its_thread(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    alice = await as_alice(server)
    thread_id = (await send(alice, REMEMBER))["thread_id"]
    waiting = await send(alice, FORGET, thread_id=thread_id)  # asked in another tab, left open
    assert waiting["status"] == "waiting"
    elsewhere = await send(alice, FORGET)  # and in another thread
    assert elsewhere["status"] == "waiting"

    chat = open_chat(terminals, server, tmp_path, "--thread", thread_id)
    await chat.expect(r"Password for alice: ")
    chat.type(PASSWORD + "\n")
    await chat.expect(r"\(runs wait for your approval in 1 other thread\(s\): "
                      rf"`--thread {elsewhere['thread_id']}` to answer there\)\n")
    await chat.expect(r"\(a run of this thread waits for your approval of delete_notes; here it is\)\n")
    await chat.expect(QUESTION)
    await chat.expect(ASK)
    chat.type("y\n")
    await chat.expect(r"✓ approved\n")
    await chat.expect(DONE)
    await chat.expect(PROMPT)
    assert (await alice.http("GET", f"/api/runs/{waiting['run_id']}"))[1]["status"] == "completed"


async def test_after_a_reconnect_the_open_question_is_asked_and_a_decision_elsewhere_takes_it_back(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    relay = Relay(server.port)
    await relay.start()
    try:
        chat = Terminal(["chat", "--url", f"http://127.0.0.1:{relay.port}", "--user", "alice"],
                        client_env(), tmp_path)
        terminals.append(chat)
        await log_in(chat)
        await remember(chat)
        alice = await as_alice(server)
        status, threads = await alice.http("GET", "/api/threads")
        thread_id = threads["threads"][0]["thread_id"]
        # Another tab of hers asks in this thread; the terminal sits at its prompt, not showing it...
        waiting = await send(alice, FORGET, thread_id=thread_id)
        assert waiting["status"] == "waiting"
        # ... until its connection drops and it comes back: then it asks.
        relay.cut()
        await chat.expect(r"reconnecting…\n")
        await chat.expect(QUESTION)
        await chat.expect(ASK)

        # Decided in the other tab: the question goes away and the run is shown to its end.
        question = (await alice.http("GET", "/api/approvals/pending"))[1]["approvals"][0]
        status, body = await alice.http("POST", f"/api/runs/{waiting['run_id']}/approvals",
                                        json={"tool_call_id": question["tool_call_id"], "approve": True})
        assert status == 202, body
        await chat.expect(r"✓ approved\n")
        await chat.expect(DONE)
        await chat.expect(PROMPT)
    finally:
        await relay.close()


async def test_one_message_on_a_terminal_is_asked_too(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    alice = await as_alice(server)
    await send(alice, REMEMBER)
    chat = open_chat(terminals, server, tmp_path, "--message", FORGET, GOLDENPATH_PASSWORD=PASSWORD)
    await chat.expect(QUESTION)
    await chat.expect(ASK)
    chat.type("y\n")
    await chat.expect(DONE)
    assert await chat.wait_exit() == 0


async def test_one_message_from_a_script_never_reads_its_stdin_and_the_question_times_out(
        procs: ProcessHarness, tmp_path: Path) -> None:
    server = await start(procs, approvals__timeout_s="1", runs__lease_ttl_s="1")
    done = subprocess.run(
        [str(BIN), "chat", "--url", server.base_url, "--user", "alice", "--message", FORGET],
        env=client_env(GOLDENPATH_PASSWORD=PASSWORD), cwd=tmp_path, input="y\n",
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "the run waits for your approval of delete_notes" in done.stderr
    assert "approve?" not in done.stdout + done.stderr
    assert "✗ timed out" in done.stdout and "(stopped)" in done.stdout
