"""A person in the loop, in the web chat: a real Chromium (Playwright) against a real server.

The builtin model's "Forget my locker code" calls delete_notes, whose policy is `ask`: the run waits,
the page shows an approval card, and the person's Approve or Deny goes over the page's socket. The
card comes back after a reload and shows on another tab, and so does the decision.
"""

from __future__ import annotations

import secrets
from typing import Any

from playwright.async_api import Locator, Page, expect

from tests.e2e.client import Server, User, register
from tests.e2e.test_web_chat import (  # noqa: F401  (browser, open_page: fixtures)
    WAIT_MS,
    ask,
    browser,
    by_id,
    open_page,
    sign_in,
    thread_id_of,
)

REMEMBER = "Remember that my locker code is 4417"
FORGET = "Forget my locker code"
APPROVED = "Done: I forgot your locker code is 4417."
DENIED = "OK, I did not use delete_notes: you did not approve it."
NOTHING_LEFT = "I had nothing noted about locker code, so there was nothing to forget."


async def notes_of(user: User) -> list[str]:
    notes = await user.server.container.notes()
    return [n.text for n in await notes.search(user.user_id, "locker code")]


async def user_of_page(server: Server, page: Page, username: str) -> User:
    """The account the page signed up, with the page's own token (sessionStorage)."""
    token = await page.evaluate("sessionStorage.getItem('goldenpath.token')")
    me = User(server=server, username=username, user_id="", token=token)
    status, body = await me.http("GET", "/api/me")
    assert status == 200, body
    me.user_id = body["user_id"]
    return me


def thread_item(page: Page, thread_id: str) -> Locator:
    return by_id(page, "thread-list").locator(f'[data-testid="thread-item"][data-thread-id="{thread_id}"]')


async def remember_then_ask_to_forget(page: Page) -> tuple[Locator, Locator]:
    """Save the note, then ask to forget it; return the waiting run and its approval card."""
    runs = by_id(page, "run-timeline")
    await ask(page, REMEMBER)
    await expect(runs.first).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    await ask(page, FORGET)
    await expect(runs).to_have_count(2)
    run = runs.last
    card = run.get_by_test_id("approval-card")
    await expect(card).to_have_attribute("data-state", "pending", timeout=WAIT_MS)
    await expect(run).to_have_attribute("data-status", "waiting")
    return run, card


async def expect_question(card: Locator) -> None:
    """The card asks about delete_notes with its arguments, and has its two buttons and the box."""
    await expect(card).to_have_count(1)
    await expect(card).to_have_attribute("data-tool", "delete_notes")
    await expect(card.get_by_test_id("approval-tool")).to_have_text("delete_notes")
    await expect(card.get_by_test_id("approval-arguments")).to_contain_text('"query": "locker code"')
    await expect(card.get_by_role("button", name="Approve", exact=True)).to_be_enabled()
    await expect(card.get_by_role("button", name="Deny", exact=True)).to_be_enabled()
    await expect(card.get_by_role("checkbox", name="Always allow in this thread")).not_to_be_checked()


async def expect_outcome(card: Locator, state: str, text: str) -> None:
    await expect(card).to_have_attribute("data-state", state, timeout=WAIT_MS)
    await expect(card.get_by_test_id("approval-outcome")).to_have_text(text)
    await expect(card.get_by_role("button")).to_have_count(0)
    await expect(card.get_by_role("checkbox")).to_have_count(0)


async def test_approve_from_the_card_runs_the_tool_and_the_answer_follows(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server()
    page = await open_page(server, viewport={"width": 1200, "height": 820})
    username = f"web_{secrets.token_hex(4)}"
    await sign_in(page, username, create=True)
    me = await user_of_page(server, page, username)

    run, card = await remember_then_ask_to_forget(page)
    await expect_question(card)
    thread_id = await thread_id_of(page)
    await expect(thread_item(page, thread_id).get_by_test_id("thread-asking")).to_be_visible()
    await expect(by_id(page, "stop-button")).to_be_visible()  # a waiting run can be stopped

    # By keyboard: the box, then Approve, then Deny; back to Approve and press Enter.
    await card.get_by_role("checkbox").focus()
    await page.keyboard.press("Tab")
    await expect(card.get_by_role("button", name="Approve", exact=True)).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(card.get_by_role("button", name="Deny", exact=True)).to_be_focused()
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Enter")

    await expect(run).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    await expect(run.get_by_test_id("answer")).to_have_text(APPROVED)
    await expect_outcome(card, "approved", "Approved")
    tool = run.get_by_test_id("tool-card")
    await expect(tool).to_have_attribute("data-tool", "delete_notes")
    await expect(tool).to_have_attribute("data-status", "ok")
    await expect(thread_item(page, thread_id).get_by_test_id("thread-asking")).to_have_count(0)
    await expect(by_id(page, "stop-button")).to_be_hidden()
    await expect(by_id(page, "error-area")).to_be_hidden()
    assert await notes_of(me) == []


async def test_the_card_is_back_after_a_reload_and_deny_keeps_the_note(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server()
    user = await register(server)
    page = await open_page(server)
    await sign_in(page, user.username)
    run, card = await remember_then_ask_to_forget(page)
    thread_id = await thread_id_of(page)
    run_id = await run.get_attribute("data-run-id")

    await page.reload(timeout=WAIT_MS)

    assert await page.evaluate("location.hash") == f"#thread={thread_id}"
    run = page.locator(f'[data-testid="run-timeline"][data-run-id="{run_id}"]')
    card = run.get_by_test_id("approval-card")
    await expect(card).to_have_attribute("data-state", "pending", timeout=WAIT_MS)
    await expect_question(card)
    await expect(run).to_have_attribute("data-status", "waiting")
    await expect(thread_item(page, thread_id).get_by_test_id("thread-asking")).to_be_visible()

    await card.get_by_role("button", name="Deny", exact=True).click()

    await expect(run).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    await expect(run.get_by_test_id("answer")).to_have_text(DENIED)
    await expect_outcome(card, "denied", "Denied")
    await expect(run.get_by_test_id("tool-card")).to_have_count(0)  # the tool never ran
    await expect(by_id(page, "run-timeline")).to_have_count(2)
    await expect(card).to_have_count(1)
    await expect(by_id(page, "error-area")).to_be_hidden()
    assert await notes_of(user) == ["my locker code is 4417"]
    status, body = await user.http("GET", "/api/approvals/pending")
    assert status == 200 and body == {"approvals": []}, body


async def test_another_tab_sees_the_question_and_the_decision_and_the_grant_holds(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server()
    user = await register(server)
    first = await open_page(server)
    await sign_in(first, user.username)
    run, card = await remember_then_ask_to_forget(first)
    thread_id = await thread_id_of(first)

    # A second tab (its own session) marks the thread in the sidebar and shows the card in it.
    second = await open_page(server)
    await sign_in(second, user.username)
    mark = thread_item(second, thread_id).get_by_test_id("thread-asking")
    await expect(mark).to_be_visible(timeout=WAIT_MS)
    await thread_item(second, thread_id).click()
    their_card = second.get_by_test_id("approval-card")
    await expect(their_card).to_have_attribute("data-state", "pending", timeout=WAIT_MS)
    await expect_question(their_card)

    # Decided in the first tab, remembered for this thread: the second tab follows.
    await card.get_by_role("checkbox", name="Always allow in this thread").check()
    await card.get_by_role("button", name="Approve", exact=True).click()
    await expect(run.get_by_test_id("answer")).to_have_text(APPROVED, timeout=WAIT_MS)
    await expect_outcome(card, "approved", "Approved")
    await expect_outcome(their_card, "approved", "Approved")
    their_run = second.get_by_test_id("run-timeline").last
    await expect(their_run.get_by_test_id("answer")).to_have_text(APPROVED, timeout=WAIT_MS)
    await expect(mark).to_have_count(0)
    status, body = await user.http("GET", "/api/approvals/grants")
    assert status == 200, body
    assert [(g["tool"], g["scope"], g.get("thread_id")) for g in body["grants"]] == [
        ("delete_notes", "thread", thread_id)]

    # The grant answers the next call in this thread: nobody is asked, and the card says why.
    await ask(second, FORGET)
    runs = second.get_by_test_id("run-timeline")
    await expect(runs).to_have_count(3)
    await expect(runs.last).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    await expect(runs.last.get_by_test_id("answer")).to_have_text(NOTHING_LEFT)
    await expect_outcome(runs.last.get_by_test_id("approval-card"), "approved",
                         "Approved by your standing grant")
    await expect(first.get_by_test_id("run-timeline")).to_have_count(3, timeout=WAIT_MS)
    await expect_outcome(first.get_by_test_id("run-timeline").last.get_by_test_id("approval-card"),
                         "approved", "Approved by your standing grant")
