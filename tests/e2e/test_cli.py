"""The `goldenpath` command as an operator uses it: migrate, users, audit, serve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.e2e.processes import ProcessHarness, procs_fixture  # noqa: F401  (the `procs` fixture)

BIN = Path(sys.executable).parent / "goldenpath"


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "GOLDENPATH_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db",
            "GOLDENPATH_AUTH__ARGON2_TIME_COST": "1", "GOLDENPATH_AUTH__ARGON2_MEMORY_KIB": "1024",
            "GOLDENPATH_AUTH__ARGON2_PARALLELISM": "1", "GOLDENPATH_MODEL__BUILTIN_DELAY_MS": "0"}


async def test_migrate_users_serve_and_audit(tmp_path: Path, procs: ProcessHarness) -> None:
    env = cli_env(tmp_path)
    assert run_cli(env, "migrate").returncode == 0
    added = run_cli(env, "users", "add", "carol", "--password", "carol-password-1")
    assert added.returncode == 0 and "added carol" in added.stdout
    again = run_cli(env, "users", "add", "carol", "--password", "carol-password-1")
    assert again.returncode == 2 and "taken" in again.stderr
    assert "carol" in run_cli(env, "users", "list").stdout

    server = procs.start(env)  # the operator's own settings, read from the environment
    await server.wait_ready(30)
    async with aiohttp.ClientSession() as session:
        async with session.post(server.base_url + "/api/auth/login",
                                json={"username": "carol", "password": "carol-password-1"}) as r:
            token = (await r.json())["access_token"]
        async with session.post(server.base_url + "/api/chat/message",
                                json={"message": "hi", "wait": True},
                                headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200 and (await r.json())["status"] == "completed"
    assert await server.stop(30) == 0, server.log()
    output = server.log()
    assert token not in output and "carol-password-1" not in output

    trail = run_cli(env, "audit").stdout.splitlines()
    actions = [line.split()[2] for line in trail]
    assert actions == ["user.registered", "engine.created", "run.started", "run.ended",
                       "engine.cleaned_up"]
    assert "outcome=completed" in trail[3]


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        served = run_cli(cli_env(tmp_path), "serve", "--host", "127.0.0.1", "--port", str(port))
    assert served.returncode == 1
    assert served.stderr.splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use; stop what uses it, or pick another port with --port "
        "or GOLDENPATH_SERVER__PORT"], served.stderr
    assert not (tmp_path / "cli.db").exists()  # it stopped before booting anything
