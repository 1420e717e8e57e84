"""The web chat's history is the timeline: a real Chromium against a real server. A reload (mid-run or
after the end) redraws every run from GET /api/threads/{id}/timeline exactly as it was drawn live; tool
cards fold to one line; thinking folds once the answer starts; answers are safe Markdown; dark mode and
a phone layout; how long a 500-run thread takes to open (measured, printed, not asserted)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from playwright.async_api import Page, expect

from tests.e2e.client import register
from tests.e2e.test_durable_runs import STEPS, STEPS_ANSWER
from tests.e2e.test_web_chat import (  # noqa: F401  (browser and open_page are fixtures)
    ARTIFACTS,
    WAIT_MS,
    ask,
    browser,
    by_id,
    open_page,
    sign_in,
    thread_id_of,
)

# Each run as drawn: status, every step's text (thinking fold, tool cards with their one-line view and
# open state), the answer, the usage line and the outcome.
SNAPSHOT = """() => Array.from(document.querySelectorAll('[data-testid="run-timeline"]')).map((run) => {
  const text = (node) => node ? node.textContent.replace(/\\s+/g, ' ').trim() : null;
  return {
    status: run.dataset.status,
    steps: Array.from(run.querySelectorAll('.run-steps > *')).map(text),
    tools: Array.from(run.querySelectorAll('[data-testid="tool-card"]')).map((card) => [
      card.dataset.tool, card.dataset.status,
      card.querySelector('[data-testid="tool-toggle"]').getAttribute('aria-expanded'), text(card)]),
    answer: text(run.querySelector('[data-testid="answer"]')),
    answerHtml: run.querySelector('[data-testid="answer"]').innerHTML,
    usage: text(run.querySelector('[data-testid="run-usage"]')),
    outcome: text(run.querySelector('[data-testid="run-status"]:not([hidden])')),
  };
})"""

ALL_ENDED = """(n) => { const runs = document.querySelectorAll('[data-testid="run-timeline"]');
  return runs.length === n && Array.from(runs).every((r) => ['completed', 'error', 'cancelled']
    .includes(r.dataset.status)); }"""


async def snapshot(page: Page) -> list[dict[str, Any]]:
    return await page.evaluate(SNAPSHOT)


async def ended_as(page: Page, status: str) -> None:
    await expect(by_id(page, "run-timeline").last).to_have_attribute("data-status", status, timeout=WAIT_MS)


async def all_ended(page: Page, count: int) -> None:
    await page.wait_for_function(ALL_ENDED, arg=count, timeout=WAIT_MS)


async def test_reload_after_the_end_redraws_the_timeline_as_it_was_live(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server(model={"builtin_delay_ms": 30})
    user = await register(server)
    page = await open_page(server, viewport={"width": 1200, "height": 900})
    await sign_in(page, user.username)

    await ask(page, STEPS.format(n=41))
    await ended_as(page, "completed")
    await ask(page, "tell me a story")  # stopped: its outcome is part of the timeline too
    await expect(by_id(page, "run-timeline").last.get_by_test_id("answer")).not_to_be_empty(timeout=WAIT_MS)
    await by_id(page, "stop-button").click()
    await ended_as(page, "cancelled")
    await ask(page, "What is 17 * 23?")
    await all_ended(page, 3)
    live = await snapshot(page)
    assert [r["status"] for r in live] == ["completed", "cancelled", "completed"]
    assert STEPS_ANSWER.format(n=41) in live[0]["answer"]
    assert [t[0] for t in live[0]["tools"]] == ["calculator", "save_note", "search_notes"]
    assert all(t[2] == "false" for r in live for t in r["tools"])  # finished cards are one line
    assert live[0]["usage"] and live[1]["outcome"] == "Stopped"

    await page.reload(timeout=WAIT_MS)
    await all_ended(page, 3)
    assert await snapshot(page) == live


async def test_reload_mid_run_draws_the_start_and_resumes_live_to_the_same_end(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server(model={"builtin_delay_ms": 60}, tools={"pause_ms": 400})
    user = await register(server)
    watcher = await open_page(server, viewport={"width": 1200, "height": 900})  # stays live throughout
    await sign_in(watcher, user.username)
    page = await open_page(server, viewport={"width": 1200, "height": 900})
    await sign_in(page, user.username)

    await ask(page, STEPS.format(n=52))
    thread_id = await thread_id_of(page)
    await watcher.goto(f"{server.base_url}/#thread={thread_id}", timeout=WAIT_MS)
    run = by_id(page, "run-timeline").last
    await expect(run.locator('[data-testid="tool-card"][data-status="ok"]')).to_have_count(1, timeout=WAIT_MS)
    await page.reload(timeout=WAIT_MS)
    # The history has the run's start; the rest comes live.
    run = by_id(page, "run-timeline").last
    first_tool = run.get_by_test_id("tool-card").first
    await expect(first_tool).to_have_attribute("data-status", "ok", timeout=WAIT_MS)
    assert await run.get_attribute("data-status") in ("running", "pending", "waiting"), \
        "the reload came after the end: the test did not reload mid-run"
    await all_ended(page, 1)
    await all_ended(watcher, 1)
    resumed = await snapshot(page)
    assert resumed == await snapshot(watcher)
    assert resumed[0]["status"] == "completed" and STEPS_ANSWER.format(n=52) in resumed[0]["answer"]
    assert len(resumed[0]["tools"]) == 3
    await page.reload(timeout=WAIT_MS)
    await all_ended(page, 1)
    assert await snapshot(page) == resumed


async def test_tool_cards_fold_and_open_and_answers_are_safe_markdown(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server()
    user = await register(server)
    page = await open_page(server, viewport={"width": 1200, "height": 900})
    await sign_in(page, user.username)

    await ask(page, "What is 17 * 23?")
    run = by_id(page, "run-timeline").last
    await expect(run).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    card = run.get_by_test_id("tool-card")
    toggle = card.get_by_test_id("tool-toggle")
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    await expect(card.get_by_test_id("tool-result")).to_be_hidden()
    await expect(card.get_by_test_id("tool-summary")).to_contain_text("391")
    await expect(card.get_by_test_id("tool-duration")).to_be_visible()
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    await expect(card.get_by_test_id("tool-result")).to_be_visible()
    await expect(card.get_by_test_id("tool-arguments")).to_contain_text("17 * 23")
    await toggle.focus()
    await page.keyboard.press("Enter")
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    await expect(card.get_by_test_id("tool-result")).to_be_hidden()
    thought = run.get_by_test_id("thought-toggle")
    if await thought.count():  # the thinking lines folded once the answer started
        await expect(thought).to_have_text(re.compile(r"Thought for \d+\.\d s"))
        await expect(run.get_by_test_id("thinking").first).to_be_hidden()

    # Markdown in the answer becomes nodes; HTML stays text.
    fact = ("my code is **bold**, `x = 1` and [docs](https://example.com/a) and [bad](javascript:alert(1)) "
            "<img src=x onerror=window.__pwned=1>")
    await ask(page, f"Remember that {fact}")
    run = by_id(page, "run-timeline").last
    await expect(run).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    answer = run.get_by_test_id("answer")
    await expect(answer.locator("strong")).to_have_text("bold")
    await expect(answer.locator("code")).to_have_text("x = 1")
    link = answer.locator("a")
    await expect(link).to_have_count(1)
    await expect(link).to_have_attribute("href", "https://example.com/a")
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(answer.locator("img")).to_have_count(0)
    await expect(answer).to_contain_text("<img src=x")
    await expect(answer).to_contain_text("[bad](javascript:alert(1))")
    assert await page.evaluate("window.__pwned") is None


async def test_dark_mode_follows_the_system_and_the_phone_layout_fits(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server()
    user = await register(server, f"dana_{'x' * 10}")
    page = await open_page(server, viewport={"width": 375, "height": 740}, has_touch=True,
                           color_scheme="dark")
    await sign_in(page, user.username)
    await ask(page, "What is 17 * 23?")
    await ended_as(page, "completed")
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    channels = [int(c) for c in background[background.index("(") + 1:background.index(")")].split(",")[:3]]
    assert max(channels) < 60, background  # dark
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= 375
    name = by_id(page, "current-user")
    await expect(name).to_be_visible()
    # The user's name is shown whole, not cut to two letters.
    assert await name.evaluate("(el) => el.scrollWidth <= el.clientWidth + 1"), "the name is cut"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-dark-phone.png"
    shot.unlink(missing_ok=True)
    await page.screenshot(path=str(shot), full_page=True, timeout=WAIT_MS)
    assert shot.stat().st_size > 1000


async def test_a_thread_of_500_runs_opens_from_its_end(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server(security={"messages_per_minute": 100_000})
    user = await register(server)
    status, body = await user.http("POST", "/api/chat/message",
                                   json={"message": "What is 0 + 0?", "wait": True})
    assert status == 200, body
    thread_id = body["thread_id"]
    gate = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        async with gate:
            status, body = await user.http("POST", "/api/chat/message",
                                           json={"message": f"What is {n} + 1?", "thread_id": thread_id,
                                                 "wait": True})
            assert status == 200, body

    made = time.monotonic()
    await asyncio.gather(*(one(n) for n in range(1, 500)))
    made = time.monotonic() - made
    page = await open_page(server, viewport={"width": 1200, "height": 900})
    await sign_in(page, user.username)
    drawn = """() => { const c = document.querySelector('[data-testid="conversation"]');
      const runs = c.querySelectorAll('[data-testid="run-timeline"]');
      return c.getAttribute('aria-busy') === 'false' && runs.length >= 20 &&
        Array.from(runs).every((r) => r.dataset.status === 'completed') && runs.length; }"""
    started = time.monotonic()
    await page.goto(f"{server.base_url}/#thread={thread_id}", timeout=WAIT_MS)  # as a click in the sidebar
    await page.wait_for_function(drawn, timeout=WAIT_MS)
    opened = time.monotonic() - started
    started = time.monotonic()
    await page.reload(timeout=WAIT_MS)  # the whole page again: scripts, sign-in check, the thread
    first = await (await page.wait_for_function(drawn, timeout=WAIT_MS)).json_value()
    reloaded = time.monotonic() - started
    report = (f"500-run thread: made in {made:.1f} s; opened in {opened * 1000:.0f} ms, "
              f"reloaded in {reloaded * 1000:.0f} ms ({first} runs on the last page)")
    print("\n" + report)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "web-500-runs-open.txt").write_text(report + "\n")
    # Older pages come on demand, nothing twice.
    await by_id(page, "load-earlier").click()
    count = "(n) => document.querySelectorAll('[data-testid=\"run-timeline\"]').length > n"
    await page.wait_for_function(count, arg=first, timeout=WAIT_MS)
    ids = await by_id(page, "run-timeline").evaluate_all("(runs) => runs.map((r) => r.dataset.runId)")
    assert len(set(ids)) == len(ids)
