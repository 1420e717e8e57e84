"""The `goldenpath` command as an operator uses it: migrate, users, audit, serve."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

BIN = Path(sys.executable).parent / "goldenpath"


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "GOLDENPATH_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db",
            "GOLDENPATH_AUTH__ARGON2_TIME_COST": "1", "GOLDENPATH_AUTH__ARGON2_MEMORY_KIB": "1024",
            "GOLDENPATH_AUTH__ARGON2_PARALLELISM": "1", "GOLDENPATH_MODEL__BUILTIN_DELAY_MS": "0"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_migrate_users_serve_and_audit(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert run_cli(env, "migrate").returncode == 0
    added = run_cli(env, "users", "add", "carol", "--password", "carol-password-1")
    assert added.returncode == 0 and "added carol" in added.stdout
    again = run_cli(env, "users", "add", "carol", "--password", "carol-password-1")
    assert again.returncode == 2 and "taken" in again.stderr
    assert "carol" in run_cli(env, "users", "list").stdout

    port = free_port()
    server = subprocess.Popen([str(BIN), "serve", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(base + "/ready") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            async with session.post(base + "/api/auth/login",
                                    json={"username": "carol", "password": "carol-password-1"}) as r:
                token = (await r.json())["access_token"]
            async with session.post(base + "/api/chat/message", json={"message": "hi", "wait": True},
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200 and (await r.json())["status"] == "completed"
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0, output
    assert token not in output and "carol-password-1" not in output

    trail = run_cli(env, "audit").stdout.splitlines()
    actions = [line.split()[2] for line in trail]
    assert actions == ["user.registered", "engine.created", "run.started", "run.ended",
                       "engine.cleaned_up"]
    assert "outcome=completed" in trail[3]
