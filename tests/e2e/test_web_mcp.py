"""A person's own MCP server, in the web chat: a real Chromium (Playwright) against a real server and a
real MCP server (tests/integration/mcp_servers.py, a process of its own on a free port).

The Tools dialog lists the tools the assistant can use; its form adds a server with a secret header,
which is never shown again; the server's tools appear, the builtin model calls one by name in the chat
("use vault__echo_token with {}") and answers with what it returned (the header it saw); Remove takes
the server and its tools away. A URL the server refuses shows the server's own message in the form.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Dialog, Locator, Page, expect

from tests.e2e.client import Server, User
from tests.e2e.test_web_chat import (  # noqa: F401  (browser, open_page: fixtures)
    WAIT_MS,
    ask,
    browser,
    by_id,
    open_page,
    sign_in,
)
from tests.integration.mcp_servers import HttpMcpServer

TOKEN = "Bearer tok-123"
VAULT_TOOLS = ["vault__add", "vault__echo_token", "vault__fail", "vault__huge", "vault__lookup",
               "vault__slow", "vault__whoami"]
BUILTIN_TOOLS = ["calculator", "current_time", "save_note", "search_notes", "delete_notes"]
PRIVATE_OK = {"allow_private_networks": True}  # the test MCP server listens on 127.0.0.1


@pytest.fixture
async def mcp_server() -> AsyncIterator[HttpMcpServer]:
    """The test tools over Streamable HTTP; started and stopped off the event loop (it waits for them)."""
    server = HttpMcpServer()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def signed_up(server: Server, page: Page) -> User:
    """Create an account in the page; the same account over HTTP, with the page's token."""
    username = f"web_{secrets.token_hex(4)}"
    await sign_in(page, username, create=True)
    token = await page.evaluate("sessionStorage.getItem('goldenpath.token')")
    user = User(server=server, username=username, user_id="", token=token)
    status, body = await user.http("GET", "/api/me")
    assert status == 200, body
    user.user_id = body["user_id"]
    return user


async def open_tools(page: Page) -> Locator:
    await page.get_by_role("button", name="Tools", exact=True).click()
    dialog = page.get_by_role("dialog", name="Tools")
    await expect(dialog).to_be_visible(timeout=WAIT_MS)
    # Its lists come from the server: wait for the builtin tools, which are always there.
    await expect(tool(dialog, "calculator")).to_be_visible(timeout=WAIT_MS)
    return dialog


def tool(dialog: Locator, name: str) -> Locator:
    return dialog.locator(f'[data-testid="tool-item"][data-tool="{name}"]')


def server_item(dialog: Locator, name: str) -> Locator:
    return dialog.locator(f'[data-testid="mcp-server"][data-name="{name}"]')


def vault_tools(dialog: Locator) -> Locator:
    return dialog.locator('[data-testid="tool-item"][data-tool^="vault__"]')


async def accept_next_confirm(page: Page) -> asyncio.Future[str]:
    """Accept the next window.confirm(); the future holds its message."""
    shown: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def accept(dialog: Dialog) -> None:
        if not shown.done():
            shown.set_result(dialog.message)
        await dialog.accept()

    page.once("dialog", accept)
    return shown


async def test_add_a_server_use_its_tool_in_the_chat_and_remove_it(
        make_server: Any, open_page: Any, mcp_server: HttpMcpServer) -> None:  # noqa: F811
    server = await make_server(mcp=PRIVATE_OK)
    page = await open_page(server, viewport={"width": 1200, "height": 820})
    user = await signed_up(server, page)

    dialog = await open_tools(page)
    for name in BUILTIN_TOOLS:
        await expect(tool(dialog, name)).to_have_attribute("data-source", "builtin")
    await expect(tool(dialog, "delete_notes").get_by_test_id("tool-asks")).to_have_text("Asks first")
    await expect(tool(dialog, "calculator").get_by_test_id("tool-asks")).to_have_count(0)
    await expect(vault_tools(dialog)).to_have_count(0)
    await expect(dialog.get_by_test_id("mcp-server")).to_have_count(0)
    await expect(dialog.get_by_test_id("mcp-servers-empty")).to_be_visible()

    # Name, URL, and two headers (a second row added); the values are typed into password boxes.
    await dialog.get_by_label("Name", exact=True).fill("vault")
    await dialog.get_by_label("URL", exact=True).fill(mcp_server.url)
    first = dialog.get_by_role("group", name="Header 1")
    await first.get_by_label("Header name").fill("Authorization")
    await expect(first.get_by_label("Value")).to_have_attribute("type", "password")
    await first.get_by_label("Value").fill(TOKEN)
    await dialog.get_by_role("button", name="Add a header").click()
    second = dialog.get_by_role("group", name="Header 2")
    await expect(second.get_by_label("Header name")).to_be_focused()
    await second.get_by_label("Header name").fill("X-User")
    await second.get_by_label("Value").fill("alice")
    await dialog.get_by_role("button", name="Add server").click()

    vault = server_item(dialog, "vault")
    await expect(vault).to_be_visible(timeout=WAIT_MS)
    await expect(vault.get_by_test_id("mcp-server-url")).to_have_text(mcp_server.url)
    await expect(vault.get_by_test_id("mcp-server-headers")).to_have_text("Headers: Authorization, X-User")
    await expect(dialog.get_by_test_id("mcp-form-error")).to_be_hidden()
    await expect(dialog.get_by_test_id("tools-status")).to_have_text("Added vault: 7 tools.", timeout=WAIT_MS)
    # The form is empty again: no secret stays in the page, nor shows anywhere in the dialog.
    await expect(dialog.get_by_label("Name", exact=True)).to_have_value("")
    await expect(dialog.get_by_test_id("mcp-header-value")).to_have_count(1)
    await expect(dialog.get_by_test_id("mcp-header-value")).to_have_value("")
    await expect(dialog).not_to_contain_text("tok-123")
    await expect(dialog).not_to_contain_text("alice")
    assert "tok-123" not in await page.content()

    # Its tools are listed as the user's own, next to the builtin ones.
    await expect(vault_tools(dialog)).to_have_count(len(VAULT_TOOLS), timeout=WAIT_MS)
    for name in VAULT_TOOLS:
        await expect(tool(dialog, name)).to_have_attribute("data-source", "yours")
    await expect(tool(dialog, "vault__echo_token").get_by_test_id("tool-item-description")).to_have_text(
        "Returns the Authorization header this call carried ('' without one).")
    await expect(tool(dialog, "calculator")).to_be_visible()
    await expect(dialog.get_by_test_id("tools-unreachable")).to_be_hidden()
    status, body = await user.http("GET", "/api/mcp/servers")
    assert status == 200, body
    listed = [(s["name"], s["header_names"]) for s in body["servers"]]
    assert listed == [("vault", ["Authorization", "X-User"])], body

    # Escape closes the dialog and gives the focus back to the Tools button.
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="Tools", exact=True)).to_be_focused()

    # In the chat, the builtin model calls the tool by name; the MCP server saw the header.
    await ask(page, "use vault__echo_token with {}")
    run = by_id(page, "run-timeline").last
    await expect(run).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    card = run.get_by_test_id("tool-card")
    await expect(card).to_have_attribute("data-tool", "vault__echo_token")
    await expect(card).to_have_attribute("data-status", "ok")
    await expect(card.get_by_test_id("tool-result")).to_contain_text(TOKEN)
    await expect(run.get_by_test_id("answer")).to_contain_text(TOKEN)
    await expect(by_id(page, "error-area")).to_be_hidden()

    # Remove, confirmed: the server and its tools are gone, the builtin ones stay.
    dialog = await open_tools(page)
    await expect(vault_tools(dialog)).to_have_count(len(VAULT_TOOLS), timeout=WAIT_MS)
    confirmed = await accept_next_confirm(page)
    await vault.get_by_role("button", name="Remove server vault").click()
    assert "vault" in await asyncio.wait_for(confirmed, WAIT_MS / 1000)
    await expect(server_item(dialog, "vault")).to_have_count(0, timeout=WAIT_MS)
    await expect(dialog.get_by_test_id("tools-status")).to_have_text("Removed vault.")
    await expect(vault_tools(dialog)).to_have_count(0, timeout=WAIT_MS)
    for name in BUILTIN_TOOLS:
        await expect(tool(dialog, name)).to_be_visible()
    await expect(dialog.get_by_test_id("mcp-servers-empty")).to_be_visible()
    status, body = await user.http("GET", "/api/mcp/servers")
    assert status == 200 and body == {"servers": []}, body


async def test_a_refused_server_shows_the_reason_in_the_form_on_a_phone(
        make_server: Any, open_page: Any) -> None:  # noqa: F811
    server = await make_server(mcp=PRIVATE_OK)
    page = await open_page(server, viewport={"width": 375, "height": 740}, has_touch=True)
    user = await signed_up(server, page)
    width = "document.scrollingElement.scrollWidth"

    # By keyboard: the Tools button opens the dialog with the focus inside it.
    tools_button = page.get_by_role("button", name="Tools", exact=True)
    await tools_button.focus()
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Tools")
    await expect(dialog).to_be_visible(timeout=WAIT_MS)
    await expect(tool(dialog, "calculator")).to_be_visible(timeout=WAIT_MS)
    assert await dialog.evaluate("(d) => d.contains(document.activeElement)")
    assert await page.evaluate(width) <= 375
    assert await dialog.evaluate("(d) => d.scrollWidth <= d.clientWidth")

    # The fields in order, by Tab; a URL the server refuses: its message shows in the form.
    await dialog.get_by_label("Name", exact=True).focus()
    await page.keyboard.type("bad")
    await page.keyboard.press("Tab")
    await expect(dialog.get_by_label("URL", exact=True)).to_be_focused()
    await page.keyboard.type("ftp://x")
    await page.keyboard.press("Tab")
    await expect(dialog.get_by_role("group", name="Header 1").get_by_label("Header name")).to_be_focused()
    await dialog.get_by_role("button", name="Add server").click()

    status, body = await user.http("POST", "/api/mcp/servers", json={"name": "bad", "url": "ftp://x"})
    assert status == 422, body
    error = dialog.get_by_test_id("mcp-form-error")
    await expect(error).to_be_visible(timeout=WAIT_MS)
    await expect(error).to_have_text(body["error"]["message"])
    await expect(dialog.get_by_label("URL", exact=True)).to_be_focused()  # the message is about the URL
    await expect(dialog.get_by_label("URL", exact=True)).to_have_value("ftp://x")  # kept, to be fixed
    await expect(dialog.get_by_test_id("mcp-server")).to_have_count(0)
    assert await page.evaluate(width) <= 375
    assert await dialog.evaluate("(d) => d.scrollWidth <= d.clientWidth")

    # A header value without a name is caught before it is sent.
    await dialog.get_by_label("URL", exact=True).fill("https://tools.example.com/mcp")
    await dialog.get_by_role("group", name="Header 1").get_by_label("Value").fill("secret")
    await dialog.get_by_role("button", name="Add server").click()
    await expect(error).to_have_text("Give each header with a value a name (e.g. Authorization).")
    await expect(dialog.get_by_role("group", name="Header 1").get_by_label("Header name")).to_be_focused()

    # Escape closes it; the focus is back on the Tools button, and the page did not move sideways.
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(tools_button).to_be_focused()
    assert await page.evaluate(width) <= 375
    status, body = await user.http("GET", "/api/mcp/servers")
    assert status == 200 and body == {"servers": []}, body
