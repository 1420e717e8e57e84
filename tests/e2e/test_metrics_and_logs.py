"""Observability from outside: /metrics after real runs, and what the logs of a session hold."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from dependency_injector import providers
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from container import Container
from container.logging import configure_logging, reset_logging
from container.settings import LogSettings
from entrypoints.app import create_app
from entrypoints.appkeys import services
from entrypoints.metrics import METRICS
from tests.conftest import make_settings
from tests.e2e.client import PASSWORD, Server, chat, register, until_ready
from tests.helpers import eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(server: Server) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(server.base_url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        return parse(await response.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# -- metrics ----------------------------------------------------------------------------------


async def test_metrics_are_served_with_zeros_before_the_app_is_ready(tmp_path: Path) -> None:
    container = Container()
    container.settings.override(providers.Object(make_settings(tmp_path)))
    app = create_app(container)  # not started: no services yet
    samples = parse(generate_latest(app[METRICS].registry).decode())
    assert value(samples, "goldenpath_ready") == 0
    assert value(samples, "goldenpath_engines_created_total") == 0
    assert value(samples, "goldenpath_engines_active") == 0
    assert value(samples, "goldenpath_runs_total", outcome="completed") == 0
    assert value(samples, "goldenpath_websockets_open") == 0
    assert value(samples, "goldenpath_engine_creation_seconds_count") == 0
    assert value(samples, "goldenpath_event_loop_tasks") == 0


async def test_metrics_after_a_chat(make_server: Any) -> None:
    server: Server = await make_server()
    before = await scrape(server)  # no Authorization: scraped on an internal port
    assert value(before, "goldenpath_ready") == 1
    assert value(before, "goldenpath_engines_created_total") == 0

    user = await register(server)
    async with user.connect() as ws, user.connect() as other:
        await until_ready(ws)
        await until_ready(other)
        ack, events = await chat(ws, "What is 17 * 23?")
        assert events[-1]["type"] == "agent_completed"
        await services(server.app).chat.wait(user.user_id, ack["run_id"])  # the run's task is over
        during = await scrape(server)
        assert value(during, "goldenpath_websockets_open") == 2

    assert value(during, "goldenpath_engines_created_total") >= 1
    assert value(during, "goldenpath_engines_active") == 0
    assert value(during, "goldenpath_engines_cleaned_up_total") == value(
        during, "goldenpath_engines_created_total")
    assert value(during, "goldenpath_engines_rejected_total") == 0
    assert value(during, "goldenpath_engines_timed_out_total") == 0
    assert value(during, "goldenpath_runs_total", outcome="completed") >= 1
    assert value(during, "goldenpath_runs_total", outcome="failed") == 0
    assert value(during, "goldenpath_runs_total", outcome="cancelled") == 0
    assert value(during, "goldenpath_runs_active") == 0
    created = value(during, "goldenpath_engines_created_total")
    assert value(during, "goldenpath_engine_creation_seconds_count") == created
    assert value(during, "goldenpath_engine_creation_seconds_bucket", le="+Inf") == created
    assert value(during, "goldenpath_engine_creation_seconds_sum") > 0
    # every event of the run was stored and reached both of the user's sockets
    assert value(during, "goldenpath_events_published_total") >= len(events)
    assert value(during, "goldenpath_frames_delivered_total") >= 2 * len(events)
    assert value(during, "goldenpath_frames_dropped_total") == 0
    # the run's rows and events went through the group committer
    assert value(during, "goldenpath_db_writes_total") >= value(during, "goldenpath_db_commits_total") >= 1
    assert value(during, "goldenpath_event_loop_lag_seconds") >= 0
    assert ("goldenpath_event_loop_wakeup_lag_seconds_count", ()) in during

    async def sockets_closed() -> bool:
        return value(await scrape(server), "goldenpath_websockets_open") == 0

    await eventually(sockets_closed, what="every socket closed in the gauge")


async def test_the_lag_probe_measures_a_blocked_loop(make_server: Any) -> None:
    server: Server = await make_server()
    probe = server.app[METRICS].probe
    counted = sum(probe.counts)

    async def measured_again() -> bool:
        return sum(probe.counts) > counted

    time.sleep(probe.interval_s + 0.3)  # block the loop: the probe's wake-up is late by >= 0.3 s
    await eventually(measured_again, what="a probe wake-up after the blocked loop")
    assert probe.last_s >= 0.25
    samples = await scrape(server)
    assert value(samples, "goldenpath_event_loop_wakeup_lag_seconds_sum") >= 0.25
    assert value(samples, "goldenpath_event_loop_wakeup_lag_seconds_bucket", le="0.1") < value(
        samples, "goldenpath_event_loop_wakeup_lag_seconds_count")


async def test_the_task_gauge_counts_the_loops_tasks(make_server: Any) -> None:
    server: Server = await make_server()
    registry = server.app[METRICS].registry

    def tasks() -> float:  # no await between the scrape and the count: both see the same loop
        return value(parse(generate_latest(registry).decode()), "goldenpath_event_loop_tasks")

    assert tasks() == len(asyncio.all_tasks()) >= 2  # this test's and the lag probe's at least
    before = tasks()
    release = asyncio.Event()
    waiting = [asyncio.create_task(release.wait()) for _ in range(5)]
    assert tasks() == before + 5
    release.set()
    await asyncio.gather(*waiting)
    assert tasks() == before
    assert value(await scrape(server), "goldenpath_event_loop_tasks") >= 2  # over HTTP too


# -- logs -------------------------------------------------------------------------------------


@contextmanager
def logging_to(out: io.StringIO, settings: LogSettings, *, production: bool) -> Iterator[None]:
    """The server's logging as `goldenpath serve` configures it, written to `out`; undone after."""
    root = logging.getLogger()
    level = root.level
    noisy = {name: logging.getLogger(name).level
             for name in ("aiohttp.access", "aiosqlite", "sqlalchemy.engine", "alembic")}
    configure_logging(settings, production=production, stream=out)
    try:
        yield
    finally:
        reset_logging()
        logger.add(sys.stderr)  # loguru's default, as configure_logging found it
        root.setLevel(level)
        for name, saved in noisy.items():
            logging.getLogger(name).setLevel(saved)


@pytest.fixture
def json_logs() -> Iterator[Callable[[], list[str]]]:
    """Logging with log.json_lines and DEBUG; returns what it wrote so far, by line."""
    out = io.StringIO()
    with logging_to(out, LogSettings(level="DEBUG", json_lines=True), production=False):
        yield lambda: out.getvalue().splitlines()


def test_json_lines_in_production_readable_lines_in_development() -> None:
    for production, json_lines in ((True, None), (False, None), (False, True), (True, False)):
        out = io.StringIO()
        with logging_to(out, LogSettings(json_lines=json_lines), production=production), \
                logger.contextualize(request_id="req-1"):
            logging.getLogger("domain.test").info("hello %s", "world")
        line = out.getvalue().strip()
        if production if json_lines is None else json_lines:
            record = json.loads(line)["record"]
            assert record["message"] == "hello world" and record["extra"]["request_id"] == "req-1"
        else:
            assert line.endswith("hello world [request_id=req-1]"), line


def records(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line)["record"] for line in lines]


Logs = Callable[[], list[str]]


async def test_every_line_of_a_run_carries_its_user_run_and_request(make_server: Any,
                                                                    json_logs: Logs) -> None:
    server: Server = await make_server()
    user = await register(server)
    headers = {**user.auth, "X-Request-ID": "req-logs-ws-1"}
    async with websockets.connect(server.ws_url, additional_headers=headers, open_timeout=10) as ws:
        await until_ready(ws)
        ack, events = await chat(ws, "What is 17 * 23?")
        assert events[-1]["type"] == "agent_completed"
        await services(server.app).chat.wait(user.user_id, ack["run_id"])
    async with aiohttp.ClientSession() as session, session.post(
        server.base_url + "/api/chat/message", headers={**user.auth, "X-Request-ID": "req-logs-http-1"},
        json={"message": "What is 2 + 2?", "wait": True},
    ) as response:
        body = await response.json()
        assert response.status == 200 and body["status"] == "completed", body

    for run_id, request_id in ((ack["run_id"], "req-logs-ws-1"), (body["run_id"], "req-logs-http-1")):
        of_run = [r for r in records(json_logs())
                  if run_id in r["message"] or r["extra"].get("run_id") == run_id]
        messages = [r["message"] for r in of_run]
        assert f"run {run_id} started" in messages, messages
        assert f"run {run_id} ended completed" in messages, messages
        for record in of_run:
            assert record["extra"]["run_id"] == run_id, record
            assert record["extra"]["user_id"] == user.user_id, record
            assert record["extra"]["request_id"] == request_id, record


async def test_a_session_logs_no_password_and_no_token(make_server: Any, json_logs: Logs) -> None:
    server: Server = await make_server()
    user = await register(server)
    async with aiohttp.ClientSession() as session:
        async with session.post(server.base_url + "/api/auth/login",
                                json={"username": user.username, "password": PASSWORD + "!"}) as bad:
            assert bad.status == 401
        async with session.get(server.base_url + "/api/me",
                               headers={"Authorization": f"Bearer {user.token}x"}) as forged:
            assert forged.status == 401
    status, _ = await user.http("GET", "/api/threads")
    assert status == 200
    async with user.connect() as ws:  # the token in the Authorization header
        await until_ready(ws)
        await chat(ws, "What is 6 * 7?")
    async with websockets.connect(server.ws_url, open_timeout=10) as ws:  # the token in a first frame
        await ws.send(json.dumps({"type": "auth", "token": user.token}))
        await until_ready(ws)
        ack, _ = await chat(ws, "What is 7 * 8?")
        await services(server.app).chat.wait(user.user_id, ack["run_id"])

    lines = json_logs()
    assert sum(" started" in r["message"] for r in records(lines)) == 2  # the capture saw the session
    for line in lines:
        assert user.token not in line
        assert user.token.split(".")[1] not in line  # not even the payload
        assert PASSWORD not in line


async def test_tokens_and_secrets_written_by_mistake_are_redacted(json_logs: Logs) -> None:
    token = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c3JfMSJ9."
             "dGhpc2lzbm90YXJlYWxzaWduYXR1cmU")
    logger.info("headers: Authorization: Bearer {}", "opaque-api-key-123")
    logger.info("issued {}", token)
    logger.bind(note=f"token={token}").info("bound")
    logging.getLogger("domain.somewhere").warning("login with password=%s api_key: %s",
                                                  "hunter2hunter2", "sk-live-999")
    try:
        raise ValueError(f"bad token {token}")
    except ValueError:
        logger.exception("failed")

    lines = json_logs()
    text = "\n".join(lines)
    for secret in (token, "opaque-api-key-123", "hunter2hunter2", "sk-live-999", token.split(".")[1]):
        assert secret not in text
    messages = [r["message"] for r in records(lines)]
    assert "headers: Authorization: Bearer [redacted]" in messages
    assert "issued [redacted]" in messages
    assert "login with password=[redacted] api_key: [redacted]" in messages
