"""The web chat when the server process dies mid-run: a real Chromium, a real process SIGKILLed while
a tool runs and started again on the same port. The page reconnects by itself, says the run picks
up where it left off, and ends with the one true answer, drawn once."""

from __future__ import annotations

import signal
from typing import Any

from playwright.async_api import expect

from tests.e2e.client import register
from tests.e2e.processes import ProcessHarness, procs_fixture  # noqa: F401  (the `procs` fixture)
from tests.e2e.test_durable_runs import STEPS, STEPS_ANSWER, durable_env
from tests.e2e.test_web_chat import WAIT_MS, ask, browser, by_id, open_page, sign_in  # noqa: F401


async def test_a_run_whose_server_died_finishes_in_the_page_after_the_restart(
        procs: ProcessHarness, open_page: Any) -> None:  # noqa: F811
    env = durable_env(procs)
    first = await procs.start_ready(env)
    user = await register(first.server)
    page = await open_page(first.server)
    await sign_in(page, user.username)

    await ask(page, STEPS.format(n=77))
    run = by_id(page, "run-timeline").last
    # The note save (step 2) is held open by tools.pause_ms: killed while it runs.
    await expect(run.get_by_test_id("tool-name").filter(has_text="save_note")).to_have_count(1)
    first.kill()
    assert await first.wait_exit(10) == -signal.SIGKILL

    second = procs.start(env, port=first.port)  # the same address: the page reconnects to it
    await second.wait_ready()
    await expect(run).to_have_attribute("data-status", "completed", timeout=3 * WAIT_MS)
    await expect(run.get_by_test_id("answer")).to_have_text(STEPS_ANSWER.format(n=77))
    note = run.get_by_test_id("thinking").filter(has_text="picking up where it left off")
    await expect(note).to_have_count(1)
    await expect(run.get_by_test_id("tool-name").filter(has_text="save_note")).to_have_count(1)
    await expect(by_id(page, "run-timeline")).to_have_count(1)
    assert await second.stop() == 0
