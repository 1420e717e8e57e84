"""Shared fixtures: settings for tests and a real server on a free port."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from dependency_injector import providers
from loguru import logger

from container import Container, Settings
from entrypoints.app import create_app, wait_ready
from tests.e2e.client import PASSWORD, Server
from tests.integration.fake_openai_server import FakeOpenAI


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Test settings: a fresh SQLite file, cheap argon2, no streaming pause; sections override."""
    base: dict[str, dict[str, Any]] = {
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path}/goldenpath.db"},
        "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1},
        "model": {"builtin_delay_ms": 0},
        # Port 0: the servers tests start listen on a free port, and each gets an instance id of
        # its own (the default, HOST:PORT, would be the same for every app in this process).
        "server": {"port": 0, "ws_auth_timeout_s": 1.0, "shutdown_grace_s": 2.0},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Settings(env="test", _env_file=None, **base)


async def start_server(container: Container) -> tuple[Server, web.AppRunner]:
    app = create_app(container)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await wait_ready(app)
    except BaseException:
        # A server that fails to boot must not leave its listening socket to be garbage-collected
        # in some later test, which then fails with an unrelated ResourceWarning.
        await runner.cleanup()
        raise
    return Server(base_url=f"http://127.0.0.1:{port}", app=app, container=container), runner


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """An OpenAI-compatible server on a free port that answers as each test scripts it."""
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def container(settings: Settings) -> Container:
    container = Container()
    container.settings.override(providers.Object(settings))
    return container


@pytest.fixture
async def server(container: Container) -> AsyncIterator[Server]:
    running, runner = await start_server(container)
    try:
        yield running
    finally:
        await runner.cleanup()


@pytest.fixture
async def make_server(tmp_path: Path):
    """Start servers with custom settings sections and container overrides; all stopped at the end."""
    runners: list[web.AppRunner] = []

    async def start(override: Any = None, **sections: dict[str, Any]) -> Server:
        container = Container()
        container.settings.override(providers.Object(make_settings(tmp_path, **sections)))
        if override is not None:
            override(container)
        running, runner = await start_server(container)
        runners.append(runner)
        return running

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


@pytest.fixture(scope="session", autouse=True)
def whole_run_log() -> Iterator[None]:
    """Every log line of the whole test run goes to a file; it must hold no password and no token."""
    path = Path(__file__).resolve().parents[1] / "test-artifacts" / "test-run.log"
    path.parent.mkdir(exist_ok=True)
    handler = logger.add(path, level="INFO", mode="w", format="{time} {level} {name} {message} {extra}",
                         backtrace=False, diagnose=False)
    yield
    logger.remove(handler)
    text = path.read_text(errors="replace")
    assert PASSWORD not in text, f"a test user's password is in the logs ({path})"
    issued = [token for token in _JWT.findall(text) if _issued_here(token)]
    assert not issued, f"an access token the server issued is in the logs ({path})"


def _issued_here(token: str) -> bool:
    """Tests log fake JWTs on purpose (to check redaction); a real one names this server as issuer."""
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return False
    return isinstance(claims, dict) and claims.get("iss") == "goldenpath"
