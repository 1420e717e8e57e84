"""Threads a person can manage, over real HTTP: rename, search (paged), fork at a message, and the
timeline a client redraws a thread from (a page of messages with each run's events)."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.client import Server, User, chat, register, until_ready


async def say(user: User, *messages: str, thread_id: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Send the messages in one thread (a new one unless given); its id and every run's live events."""
    seen: list[dict[str, Any]] = []
    async with user.connect() as ws:
        await until_ready(ws)
        for text in messages:
            fields = {"thread_id": thread_id} if thread_id else {}
            ack, events = await chat(ws, text, **fields)
            thread_id = ack["thread_id"]
            seen += events
    assert thread_id is not None
    return thread_id, seen


async def test_rename_is_the_owners_and_says_what_a_title_is(server: Server) -> None:
    alice, bob = await register(server), await register(server)
    thread_id, _ = await say(alice, "What is 2 + 2?")
    status, body = await alice.http("PATCH", f"/api/threads/{thread_id}",
                                    json={"title": "  Sums   at  home "})
    assert status == 200 and body["thread_id"] == thread_id and body["title"] == "Sums at home"
    status, body = await alice.http("GET", "/api/threads")
    assert [t["title"] for t in body["threads"]] == ["Sums at home"]
    status, body = await bob.http("PATCH", f"/api/threads/{thread_id}", json={"title": "mine now"})
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await alice.http("PATCH", f"/api/threads/{thread_id}", json={"title": "   "})
    assert status == 422 and body["error"]["code"] == "validation_error"


async def test_search_finds_titles_and_message_text_of_the_callers_threads_only(server: Server) -> None:
    alice, bob = await register(server), await register(server)
    garden, _ = await say(alice, "Remember that the garden gate code is 7788")
    await say(alice, "What is 6 * 7?")
    await say(bob, "Remember that my garden is green")
    status, body = await alice.http("GET", "/api/threads", params={"q": "GARDEN"})
    assert status == 200 and [t["thread_id"] for t in body["threads"]] == [garden]
    # The answer's words count too: the builtin model answered "... your garden gate code is 7788."
    status, body = await alice.http("GET", "/api/threads", params={"q": "7788"})
    assert [t["thread_id"] for t in body["threads"]] == [garden]
    status, body = await alice.http("GET", "/api/threads", params={"q": "100%_"})  # LIKE wildcards are text
    assert body["threads"] == []


async def test_threads_come_a_page_at_a_time_with_nothing_missed_or_repeated(server: Server) -> None:
    alice = await register(server)
    made = [(await say(alice, f"What is {n} + {n}?"))[0] for n in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, body = await alice.http("GET", "/api/threads", params=params)
        assert status == 200 and len(body["threads"]) <= 2
        seen += [t["thread_id"] for t in body["threads"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))  # most recently updated first
    status, body = await alice.http("GET", "/api/threads", params={"cursor": "not-a-cursor"})
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await alice.http("GET", "/api/threads", params={"limit": "0"})
    assert status == 400


async def test_fork_copies_the_history_before_a_message_and_only_the_callers(server: Server) -> None:
    alice, bob = await register(server), await register(server)
    thread_id, _ = await say(alice, "Remember that my bike is blue", "What is 3 + 4?", "What is my bike?")
    status, body = await alice.http("GET", f"/api/threads/{thread_id}/messages")
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    second = messages[2]
    at_second = {"message_id": second["message_id"]}
    status, body = await alice.http("POST", f"/api/threads/{thread_id}/fork", json=at_second)
    assert status == 201, body
    assert body["message"]["text"] == "What is 3 + 4?" and body["thread"]["thread_id"] != thread_id
    fork = body["thread"]["thread_id"]
    status, body = await alice.http("GET", f"/api/threads/{fork}/messages")
    copied = [(m["role"], m["text"]) for m in body["messages"]]
    assert copied == [(m["role"], m["text"]) for m in messages[:2]]
    # The edited message runs in the fork, with the copied history before it.
    _, events = await say(alice, "What is my bike?", thread_id=fork)
    assert "blue" in events[-1]["data"]["text"]
    status, body = await alice.http("GET", f"/api/threads/{thread_id}/messages")
    assert len(body["messages"]) == 6  # the original is untouched
    # Another user's thread, an assistant's message, an unknown one: not found.
    status, body = await bob.http("POST", f"/api/threads/{thread_id}/fork", json=at_second)
    assert status == 404
    status, body = await alice.http("POST", f"/api/threads/{thread_id}/fork",
                                    json={"message_id": messages[1]["message_id"]})
    assert status == 404
    status, body = await alice.http("POST", f"/api/threads/{fork}/fork", json=at_second)
    assert status == 404  # that message is the original thread's, not the fork's


async def test_the_timeline_is_the_thread_as_seen_live_a_page_at_a_time(server: Server) -> None:
    alice, bob = await register(server), await register(server)
    thread_id, live = await say(alice, "What is 2 + 3?", "Remember that my desk is 4B", "hello")
    status, body = await alice.http("GET", f"/api/threads/{thread_id}/timeline")
    assert status == 200 and body["before"] is None
    items = body["items"]
    assert [i["message"]["role"] for i in items] == ["user", "assistant"] * 3
    runs = [i["run"] for i in items if "run" in i]
    assert len(runs) == 3 and all(i["message"]["role"] == "user" for i in items if "run" in i)
    stored = [event for run in runs for event in run["events"]]
    assert [(e["run_id"], e["seq"], e["type"], e["data"]) for e in stored] == \
        [(e["run_id"], e["seq"], e["type"], e["data"]) for e in live]
    assert all(run["status"] == "completed" for run in runs)
    # Paged from the end: the newest two messages, then the rest, nothing twice.
    status, first = await alice.http("GET", f"/api/threads/{thread_id}/timeline", params={"limit": "2"})
    assert [i["message"]["text"] for i in first["items"]][-2] == "hello" and first["before"]
    pages = [first]
    for _ in range(len(items)):  # at most a page per message: a cursor that never ends fails, not hangs
        if not pages[-1]["before"]:
            break
        status, page = await alice.http("GET", f"/api/threads/{thread_id}/timeline",
                                        params={"limit": "2", "before": pages[-1]["before"]})
        assert status == 200, page
        pages.append(page)
    assert pages[-1]["before"] is None
    texts = [i["message"]["text"] for page in reversed(pages) for i in page["items"]]
    assert texts == [i["message"]["text"] for i in items]
    status, body = await bob.http("GET", f"/api/threads/{thread_id}/timeline")
    assert status == 404 and "4B" not in json.dumps(body)
