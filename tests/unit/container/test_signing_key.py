"""The JWT secret when none is set: generated once, private, shared by processes that start together."""

from __future__ import annotations

import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from container.settings import PUBLISHED_JWT_SECRETS, Settings
from container.signing_key import UnusableSecretFile, jwt_secret, read_or_create, secret_path
from tests.conftest import make_settings


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///var/goldenpath.db", "var/jwt-secret"),
    ("sqlite+aiosqlite:////srv/gp/data.db", "/srv/gp/jwt-secret"),
    ("sqlite://", "var/jwt-secret"),
    ("sqlite:///:memory:", "var/jwt-secret"),
    ("postgresql+asyncpg://gp@db:5432/gp", "var/jwt-secret"),
])
def test_the_secret_is_kept_beside_the_sqlite_file_else_in_var(url: str, path: str) -> None:
    assert secret_path(url) == Path(path)


def test_a_generated_secret_is_random_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "var" / "jwt-secret"
    secret = read_or_create(path)
    assert len(secret) >= 48
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_or_create(path) == secret
    assert read_or_create(tmp_path / "elsewhere" / "jwt-secret") != secret
    assert [p.name for p in path.parent.iterdir()] == ["jwt-secret"]  # no draft left behind


def test_processes_that_start_together_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "jwt-secret"
    together = threading.Barrier(8)

    def start() -> str:
        together.wait(timeout=10)
        return read_or_create(path)

    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: start(), range(8)))
    assert secrets == {path.read_text().strip()}
    assert [p.name for p in tmp_path.iterdir()] == ["jwt-secret"]


@pytest.mark.parametrize("content", ["", "short\n"])
def test_an_unusable_secret_file_stops_the_start_and_says_what_to_do(tmp_path: Path, content: str) -> None:
    path = tmp_path / "jwt-secret"
    path.write_text(content)
    with pytest.raises(UnusableSecretFile, match="GOLDENPATH_AUTH__JWT_SECRET"):
        read_or_create(path)


def test_a_configured_secret_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth={"jwt_secret": "c" * 40})
    assert jwt_secret(settings) == "c" * 40
    assert not (tmp_path / "jwt-secret").exists()


def test_without_a_setting_the_secret_is_generated_beside_the_database(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.auth.jwt_secret is None
    assert jwt_secret(settings) == (tmp_path / "jwt-secret").read_text().strip()


@pytest.mark.parametrize("env", ["development", "test", "production"])
def test_a_published_secret_is_refused_in_every_environment(env: str) -> None:
    for published in PUBLISHED_JWT_SECRETS:
        with pytest.raises(ValidationError, match="published"):
            Settings(_env_file=None, env=env, auth={"jwt_secret": published})


def test_production_still_refuses_to_start_without_a_secret() -> None:
    with pytest.raises(ValidationError, match="set GOLDENPATH_AUTH__JWT_SECRET to a random secret"):
        Settings(_env_file=None, env="production",
                 database={"url": "postgresql+asyncpg://gp@db:5432/gp"})
