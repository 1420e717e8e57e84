"""A server started with no secret settings: its own random key, never a published one; exposure warned."""

from __future__ import annotations

import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import jwt
from dependency_injector import providers

from container import Container
from container.settings import PUBLISHED_JWT_SECRETS
from tests.conftest import make_settings, start_server
from tests.e2e.client import Server, register
from tests.e2e.processes import ProcessHarness, procs_fixture  # noqa: F401  (the `procs` fixture)

ROOT = Path(__file__).resolve().parents[2]
# A value written after JWT_SECRET in a doc (`JWT_SECRET=...`, `jwt_secret: ...`); a command
# substitution such as "$(python3 ...)" is no secret and does not match.
_ASSIGNED = re.compile(r"JWT_SECRET[\"'`]?\s*[=:]\s*[\"'`]?([^\s\"'`$()]+)", re.IGNORECASE)
WARNING = "reachable from other machines"


def published_secrets() -> set[str]:
    """Every secret anyone could have read: the old built-in default, and any printed in the docs."""
    docs = [ROOT / "README.md", *(p for p in (ROOT / "docs").rglob("*") if p.is_file())]
    printed = {found for doc in docs for found in _ASSIGNED.findall(doc.read_text(errors="replace"))}
    return set(PUBLISHED_JWT_SECRETS) | printed


async def status_of_me(server: Server, token: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(
        server.base_url + "/api/me", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        return response.status


def container_for(tmp_path: Path) -> Container:
    container = Container()
    container.settings.override(providers.Object(make_settings(tmp_path)))
    return container


async def test_a_token_signed_with_any_published_secret_is_refused(make_server, tmp_path: Path) -> None:
    server = await make_server()
    assert server.container.settings().auth.jwt_secret is None
    victim = await register(server)
    assert await status_of_me(server, victim.token) == 200
    claims = jwt.decode(victim.token, options={"verify_signature": False})
    now = datetime.now(UTC)
    claims |= {"iat": int(now.timestamp()), "exp": int((now + timedelta(hours=1)).timestamp())}
    secrets = published_secrets()
    assert "goldenpath-development-secret-do-not-use-in-production" in secrets
    forged = {secret: jwt.encode(claims, secret, algorithm="HS256") for secret in secrets}
    assert {secret: await status_of_me(server, token) for secret, token in forged.items()} == \
        dict.fromkeys(secrets, 401)


async def test_the_generated_secret_is_private_and_tokens_survive_a_restart(tmp_path: Path) -> None:
    first, runner = await start_server(container_for(tmp_path))
    try:
        user = await register(first)
    finally:
        await runner.cleanup()
    path = tmp_path / "jwt-secret"  # beside the test's SQLite file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again, runner = await start_server(container_for(tmp_path))
    try:
        assert await status_of_me(again, user.token) == 200
    finally:
        await runner.cleanup()


async def test_a_development_server_on_a_public_address_warns_in_one_line(procs: ProcessHarness) -> None:
    development = procs.env(ENV="development")
    exposed = procs.start(development, host="0.0.0.0")
    await exposed.wait_ready()
    assert await exposed.stop() == 0
    assert sum(WARNING in line for line in exposed.log().splitlines()) == 1

    private = procs.start(development, host="127.0.0.1")
    await private.wait_ready()
    assert await private.stop() == 0
    assert WARNING not in private.log()
