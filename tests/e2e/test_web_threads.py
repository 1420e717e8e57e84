"""Threads a person can manage, through the page in a real Chromium: rename in place, search (titles and
message text), edit a past message and send it again (a fork), delete with undo; and an accessibility
scan with axe-core (from npm, fetched at test time) with no serious or critical violations."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.e2e.client import register
from tests.e2e.test_web_chat import (  # noqa: F401  (browser and open_page are fixtures)
    WAIT_MS,
    ask,
    browser,
    by_id,
    open_page,
    sign_in,
    stored_messages,
    thread_id_of,
)
from tests.helpers import eventually


def item(page: Page, thread_id: str) -> Any:
    inside = f'[data-testid="thread-item"][data-thread-id="{thread_id}"]'
    return by_id(page, "thread-list").locator(f"li:has({inside})")


async def ended(page: Page) -> None:
    run = by_id(page, "run-timeline").last
    await expect(run).to_have_attribute("data-status", "completed", timeout=WAIT_MS)


async def test_rename_search_fork_and_undo_delete_through_the_page(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server()
    user = await register(server)
    page = await open_page(server, viewport={"width": 1200, "height": 900})
    await sign_in(page, user.username)
    await ask(page, "Remember that my bike is blue")
    await ended(page)
    await ask(page, "What is 3 + 4?")
    await ended(page)
    first = await thread_id_of(page)
    await by_id(page, "new-chat-button").click()
    await ask(page, "What is 6 * 7?")
    await ended(page)
    second = await thread_id_of(page)
    assert second != first

    # Rename in place: Enter saves (PATCH), the server's title shows.
    await item(page, first).get_by_test_id("thread-rename").click()
    box = by_id(page, "thread-rename-input")
    await expect(box).to_be_focused()
    await box.fill("  Bike   notes ")
    await box.press("Enter")
    await expect(item(page, first).get_by_test_id("thread-title")).to_have_text("Bike notes")
    status, body = await user.http("GET", "/api/threads")
    assert {t["thread_id"]: t["title"] for t in body["threads"]}[first] == "Bike notes"
    # Escape keeps the old name.
    await item(page, first).get_by_test_id("thread-rename").click()
    await by_id(page, "thread-rename-input").fill("not this")
    await by_id(page, "thread-rename-input").press("Escape")
    await expect(item(page, first).get_by_test_id("thread-title")).to_have_text("Bike notes")

    # Search: a title word, then words of a message; no match says so.
    search = by_id(page, "thread-search")
    await search.fill("bike")
    await expect(by_id(page, "thread-item")).to_have_count(1, timeout=WAIT_MS)
    await expect(item(page, first)).to_be_visible()
    await search.fill("6 * 7")
    await expect(by_id(page, "thread-item")).to_have_count(1, timeout=WAIT_MS)
    await expect(item(page, second)).to_be_visible()
    await search.fill("zebra")
    await expect(by_id(page, "thread-item")).to_have_count(0, timeout=WAIT_MS)
    await expect(by_id(page, "threads-empty")).to_have_text("No chats match.")
    await search.fill("")
    await expect(by_id(page, "thread-item")).to_have_count(2, timeout=WAIT_MS)

    # Edit the second message of the first chat and send it again: a new chat with the history before it.
    await item(page, first).get_by_test_id("thread-item").click()
    await expect(by_id(page, "user-message")).to_have_count(2, timeout=WAIT_MS)
    await by_id(page, "user-message").nth(1).get_by_test_id("edit-message").click()
    edit = by_id(page, "edit-input")
    await expect(edit).to_be_focused()
    await edit.fill("What is my bike?")
    await by_id(page, "edit-send").click()
    elsewhere = "(old) => location.hash.startsWith('#thread=') && !old.includes(location.hash)"
    await page.wait_for_function(elsewhere, arg=[f"#thread={first}", f"#thread={second}"], timeout=WAIT_MS)
    fork = await thread_id_of(page)
    await ended(page)
    await expect(by_id(page, "answer").last).to_contain_text("blue")
    await expect(by_id(page, "user-message")).to_have_count(2)
    await expect(by_id(page, "user-message").last).to_contain_text("What is my bike?")
    await expect(item(page, fork)).to_be_visible(timeout=WAIT_MS)
    assert len(await stored_messages(user, first)) == 4  # the original stays as it was

    # Delete with undo: hidden at once, Undo brings it back, nothing deleted on the server.
    await item(page, second).get_by_test_id("thread-delete").click()
    await expect(item(page, second)).to_have_count(0)
    await expect(by_id(page, "undo-toast")).to_contain_text("Deleted")
    await by_id(page, "undo-button").click()
    await expect(item(page, second)).to_have_count(1)
    status, _ = await user.http("GET", f"/api/threads/{second}/messages")
    assert status == 200
    # Without undo it is gone after a few seconds, on the server too.
    await item(page, second).get_by_test_id("thread-delete").click()
    await expect(item(page, second)).to_have_count(0)
    await expect(by_id(page, "undo-button")).to_be_hidden(timeout=WAIT_MS)

    async def gone() -> bool:
        return (await user.http("GET", f"/api/threads/{second}/messages"))[0] == 404

    await eventually(gone, timeout=WAIT_MS / 1000, interval=0.1, what="the chat deleted on the server")


@pytest.fixture(scope="module")
def axe_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """axe-core's axe.min.js, from npm at test time (no copy lives in this repository)."""
    npm = shutil.which("npm")
    assert npm, "npm is needed for the accessibility scan (axe-core from npm)"
    where = tmp_path_factory.mktemp("axe")
    done = subprocess.run([npm, "pack", "axe-core@4", "--silent"], cwd=where, capture_output=True,
                          text=True, timeout=120, check=True)
    archive = where / done.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        member = tar.extractfile("package/axe.min.js")
        assert member is not None
        return member.read().decode()


async def scan(page: Page, axe: str) -> list[dict[str, Any]]:
    await page.add_script_tag(content=axe)
    result = await page.evaluate(
        "async () => (await axe.run(document)).violations"
        ".map((v) => ({id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target)}))")
    return [v for v in result if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_axe_finds_no_serious_violations(make_server: Any, open_page: Any, axe_source: str,  # noqa: F811
                                              scheme: str) -> None:
    server = await make_server()
    user = await register(server)
    page = await open_page(server, viewport={"width": 1200, "height": 900}, bypass_csp=True,
                           color_scheme=scheme)
    assert await scan(page, axe_source) == []  # the sign-in form
    await sign_in(page, user.username)
    await ask(page, "What is 17 * 23?")
    await ended(page)
    await by_id(page, "tool-toggle").click()
    await ask(page, "Remember that my code is **7** and `x`")
    await ended(page)
    assert await scan(page, axe_source) == []
    phone = await open_page(server, viewport={"width": 375, "height": 740}, bypass_csp=True,
                            color_scheme=scheme)
    await sign_in(phone, user.username)
    await phone.goto(f"{server.base_url}/#thread={await thread_id_of(page)}", timeout=WAIT_MS)
    await expect(by_id(phone, "answer")).to_have_count(2, timeout=WAIT_MS)
    assert await scan(phone, axe_source) == []

