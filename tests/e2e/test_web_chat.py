"""The web chat as a person uses it: a real Chromium (Playwright) against a real server on a free port.

Every test opens its own browser context; the browser is closed in the fixture whatever happens.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from adapters.websocket import SocketConnection
from entrypoints.appkeys import services
from tests.e2e.client import PASSWORD, Server, User, register

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-features=LocalNetworkAccessChecks"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_MS = 10_000  # the longest any single wait in this file may take

# No skip when Chromium is missing: .ci/run installs it, and a skip would hide that it did not.


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                    headless=True, timeout=30_000)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[Any]:
    """open_page(server, **context_options) -> a page in a fresh context; every context closed at the end."""
    contexts = []

    async def open_(server: Server, **options: Any) -> Page:
        context = await browser.new_context(**options)
        contexts.append(context)
        context.set_default_timeout(WAIT_MS)
        page = await context.new_page()
        await page.goto(server.base_url + "/", timeout=WAIT_MS)
        return page

    try:
        yield open_
    finally:
        for context in contexts:
            await context.close()


def by_id(page: Page, testid: str) -> Any:
    return page.get_by_test_id(testid)


async def sign_in(page: Page, username: str, *, create: bool = False) -> None:
    """Fill the form like a person and press Log in (or Create account); wait for the chat view."""
    await by_id(page, "login-username").fill(username)
    await by_id(page, "login-password").fill(PASSWORD)
    await by_id(page, "register-button" if create else "login-button").click()
    await expect(by_id(page, "message-input")).to_be_visible(timeout=WAIT_MS)
    await expect(by_id(page, "auth-error")).to_be_hidden()
    await expect(by_id(page, "current-user")).to_have_text(username)


async def ask(page: Page, text: str) -> None:
    await by_id(page, "message-input").fill(text)
    await by_id(page, "send-button").click()


async def thread_id_of(page: Page) -> str:
    """The thread the page shows, from location.hash (#thread=<id>), once the server named it."""
    await page.wait_for_function("/^#thread=.+/.test(location.hash)", timeout=WAIT_MS)
    match = re.fullmatch(r"#thread=(.+)", await page.evaluate("location.hash"))
    assert match is not None
    return match.group(1)


async def stored_messages(user: User, thread_id: str) -> list[dict[str, Any]]:
    status, body = await user.http("GET", f"/api/threads/{thread_id}/messages")
    assert status == 200, body
    return body["messages"]


async def test_register_ask_and_see_the_calculator_card_and_391(make_server: Any, open_page: Any) -> None:
    server = await make_server()
    page = await open_page(server, viewport={"width": 1200, "height": 820})
    await sign_in(page, f"web_{secrets.token_hex(4)}", create=True)

    await ask(page, "What is 17 * 23?")
    run = by_id(page, "run-timeline").last
    await expect(run).to_have_attribute("data-status", "completed", timeout=WAIT_MS)

    card = run.get_by_test_id("tool-card")
    await expect(card).to_have_count(1)
    await expect(card).to_have_attribute("data-tool", "calculator")
    await expect(card).to_have_attribute("data-status", "ok")
    await expect(card.get_by_test_id("tool-name")).to_have_text("calculator")
    await expect(card.get_by_test_id("tool-arguments")).to_contain_text("17 * 23")
    await expect(card.get_by_test_id("tool-result")).to_contain_text("391")
    await expect(card.get_by_test_id("tool-error")).to_have_count(0)
    await expect(run.get_by_test_id("answer")).to_contain_text("391")
    await expect(by_id(page, "user-message").last).to_contain_text("What is 17 * 23?")
    await expect(by_id(page, "error-area")).to_be_hidden()
    await expect(by_id(page, "stop-button")).to_be_hidden()

    # The new chat shows up in the sidebar, marked as the current one.
    thread_id = await thread_id_of(page)
    item = page.locator(f'[data-testid="thread-item"][data-thread-id="{thread_id}"]')
    await expect(item).to_have_attribute("aria-current", "page")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-chat-391.png"
    shot.unlink(missing_ok=True)
    await page.screenshot(path=str(shot), full_page=True, timeout=WAIT_MS)
    assert shot.stat().st_size > 1000


async def test_stop_ends_a_streaming_run_and_the_thread_goes_on(make_server: Any, open_page: Any) -> None:
    server = await make_server(model={"builtin_delay_ms": 80})
    user = await register(server)
    page = await open_page(server)
    await sign_in(page, user.username)

    await ask(page, "tell me a story")
    run = by_id(page, "run-timeline").last
    answer = run.get_by_test_id("answer")
    await expect(answer).not_to_be_empty(timeout=WAIT_MS)  # the answer has started streaming
    await expect(run).to_have_attribute("data-status", "running")
    stop = by_id(page, "stop-button")
    await expect(stop).to_be_visible()
    await stop.click()

    await expect(run).to_have_attribute("data-status", "cancelled", timeout=2_500)
    await expect(run.get_by_test_id("run-status")).to_contain_text("Stopped")
    await expect(stop).to_be_hidden()
    thread_id = await thread_id_of(page)
    stopped_run_id = await run.get_attribute("data-run-id")
    status, body = await user.http("GET", f"/api/runs/{stopped_run_id}")
    assert status == 200 and body["status"] == "cancelled", body
    assert await answer.text_content()  # what streamed before the stop stays on the page

    # The same thread takes the next message.
    await ask(page, "What is 17 * 23?")
    runs = by_id(page, "run-timeline")
    await expect(runs).to_have_count(2)
    await expect(runs.last).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    await expect(runs.last.get_by_test_id("answer")).to_contain_text("391")
    assert await thread_id_of(page) == thread_id
    assert [m["role"] for m in await stored_messages(user, thread_id)][-2:] == ["user", "assistant"]


async def test_reload_shows_the_same_thread_with_its_history(make_server: Any, open_page: Any) -> None:
    server = await make_server()
    user = await register(server)
    page = await open_page(server)
    await sign_in(page, user.username)

    await ask(page, "What is 17 * 23?")
    await expect(by_id(page, "run-timeline").last).to_have_attribute("data-status", "completed",
                                                                      timeout=WAIT_MS)
    thread_id = await thread_id_of(page)
    answer = await by_id(page, "answer").last.text_content() or ""
    assert "391" in answer

    await page.reload(timeout=WAIT_MS)

    assert await page.evaluate("location.hash") == f"#thread={thread_id}"
    await expect(by_id(page, "chat-view")).to_be_visible()
    await expect(by_id(page, "user-message")).to_have_count(1, timeout=WAIT_MS)
    await expect(by_id(page, "user-message")).to_contain_text("What is 17 * 23?")
    await expect(by_id(page, "answer")).to_have_count(1)
    await expect(by_id(page, "answer")).to_have_text(answer)
    await expect(by_id(page, "run-timeline")).to_have_attribute("data-status", "completed")
    item = by_id(page, "thread-list").locator(f'[data-testid="thread-item"][data-thread-id="{thread_id}"]')
    await expect(item).to_be_visible()
    await expect(item).to_have_attribute("aria-current", "page")
    await expect(by_id(page, "error-area")).to_be_hidden()
    await expect(by_id(page, "empty-state")).to_be_hidden()


async def test_cut_socket_mid_run_reconnects_and_the_run_finishes(make_server: Any, open_page: Any) -> None:
    server = await make_server(model={"builtin_delay_ms": 100})
    user = await register(server)
    page = await open_page(server)
    await sign_in(page, user.username)
    bridge = services(server.app).bridge

    def sockets() -> list[SocketConnection]:
        return [c for c in bridge.connections_of(user.user_id) if isinstance(c, SocketConnection)]

    # Note every time the banner shows, so a short outage cannot slip between two looks.
    await page.evaluate("""() => {
        const banner = document.querySelector('[data-testid="reconnecting-banner"]');
        window.__bannerShown = 0;
        window.__statusOnReconnect = null;
        new MutationObserver(() => {
            if (!banner.hidden) window.__bannerShown += 1;
            else if (window.__bannerShown && window.__statusOnReconnect === null) {
                const runs = document.querySelectorAll('[data-testid="run-timeline"]');
                window.__statusOnReconnect = runs.length ? runs[runs.length - 1].dataset.status : "";
            }
        }).observe(banner, {attributes: true, attributeFilter: ["hidden"]});
    }""")

    await ask(page, "tell me a story")
    run = by_id(page, "run-timeline").last
    answer = run.get_by_test_id("answer")
    await expect(answer).not_to_be_empty(timeout=WAIT_MS)
    run_id = await run.get_attribute("data-run-id")
    assert run_id
    cut = sockets()
    assert len(cut) == 1, cut
    for connection in cut:
        await connection.close(1012, "test cuts the socket")

    banner = by_id(page, "reconnecting-banner")
    await page.wait_for_function("window.__bannerShown > 0", timeout=WAIT_MS)
    await expect(banner).to_be_hidden(timeout=WAIT_MS)  # reconnected
    # The page was back while the run still went on: the rest of it streamed over the new socket.
    assert await page.evaluate("window.__statusOnReconnect") == "running"
    await expect(run).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    fresh = sockets()
    assert len(fresh) == 1 and fresh[0] is not cut[0]

    status, body = await user.http("GET", f"/api/runs/{run_id}")
    assert status == 200 and body["status"] == "completed", body
    stored = [m for m in await stored_messages(user, await thread_id_of(page))
              if m["role"] == "assistant" and m.get("run_id") == run_id]
    assert len(stored) == 1 and len(stored[0]["text"].split()) > 20, stored
    await expect(answer).to_have_text(stored[0]["text"])
    await expect(by_id(page, "run-timeline")).to_have_count(1)
    await expect(by_id(page, "user-message")).to_have_count(1)
    await expect(by_id(page, "error-area")).to_be_hidden()


async def test_narrow_screen_has_no_sideways_scroll_and_tab_reaches_the_message_box(
    make_server: Any, open_page: Any
) -> None:
    server = await make_server()
    user = await register(server)
    page = await open_page(server, viewport={"width": 375, "height": 740}, has_touch=True)
    width = "document.scrollingElement.scrollWidth"

    await expect(by_id(page, "login-username")).to_be_visible()
    assert await page.evaluate(width) <= 375
    await sign_in(page, user.username)
    assert await page.evaluate(width) <= 375
    await ask(page, "What is 17 * 23?")
    await expect(by_id(page, "run-timeline").last).to_have_attribute("data-status", "completed",
                                                                      timeout=WAIT_MS)
    await expect(by_id(page, "answer").last).to_contain_text("391")
    assert await page.evaluate(width) <= 375
    # A long word with no place to break must wrap, not push the page sideways.
    await ask(page, "https://example.com/" + "a-very-long-path-without-spaces" * 5)
    await expect(by_id(page, "run-timeline")).to_have_count(2)
    await expect(by_id(page, "run-timeline").last).to_have_attribute("data-status", "completed",
                                                                      timeout=WAIT_MS)
    assert await page.evaluate(width) <= 375
    thread_hash = "#thread=" + await thread_id_of(page)

    async def arrive() -> None:
        """Open the chat afresh, so keyboard focus starts at the top of the page."""
        await page.reload(timeout=WAIT_MS)
        await expect(by_id(page, "answer").first).to_contain_text("391", timeout=WAIT_MS)
        assert await page.evaluate(width) <= 375

    focused = "document.activeElement?.dataset?.testid || document.activeElement?.tagName"
    box = by_id(page, "message-input")

    # Tab alone, from the top of the page, reaches the message box.
    await arrive()
    order = []
    for _ in range(15):
        await page.keyboard.press("Tab")
        order.append(await page.evaluate(focused))
        if order[-1] == "message-input":
            break
    assert order[-1] == "message-input", f"Tab went {order} and never reached the message box"
    await expect(box).to_be_focused()
    await expect(box).to_be_in_viewport()
    await page.keyboard.type("typed by keyboard")
    await expect(box).to_have_value("typed by keyboard")

    # The first Tab stop is the skip link; following it focuses the box and stays in this chat.
    await arrive()
    await page.keyboard.press("Tab")
    await expect(by_id(page, "skip-link")).to_be_focused()
    await expect(by_id(page, "skip-link")).to_be_in_viewport()
    await page.keyboard.press("Enter")
    await expect(box).to_be_focused()
    assert await page.evaluate("location.hash") == thread_hash
    await expect(by_id(page, "user-message")).to_have_count(2)
    await expect(by_id(page, "answer").first).to_contain_text("391")
