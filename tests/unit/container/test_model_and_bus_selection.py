"""An unknown model provider or bus backend is refused at start; the builtin model never loads openai."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dependency_injector import providers

from container import Container, Settings
from container.settings import BusSettings, ModelSettings

ROOT = Path(__file__).resolve().parents[3]


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter, so what other tests imported cannot hide an import."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GOLDENPATH_")}
    return subprocess.run([sys.executable, "-c", code], env=clean | env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("variable", "value", "allowed"), [
    ("GOLDENPATH_MODEL__PROVIDER", "gpt", "'builtin' or 'openai'"),
    ("GOLDENPATH_BUS__BACKEND", "kafka", "'memory' or 'redis'"),
])
def test_serve_refuses_an_unknown_choice_in_one_line(variable: str, value: str, allowed: str,
                                                     tmp_path: Path) -> None:
    done = python("import sys; from entrypoints.cli import main; sys.exit(main(['serve', '--port', '0']))",
                  **{variable: value, "GOLDENPATH_DATABASE__URL": f"sqlite:///{tmp_path}/gp.db"})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: {variable}: Input should be {allowed}"]


def container_with(**sections: object) -> Container:
    # model_construct skips validation: a value the settings would refuse reaches the container.
    container = Container()
    container.settings.override(providers.Object(Settings.model_construct(**sections)))
    return container


async def test_the_container_raises_on_a_provider_it_does_not_know() -> None:
    container = container_with(model=ModelSettings.model_construct(provider="gpt"))
    with pytest.raises(ValueError, match="GOLDENPATH_MODEL__PROVIDER='gpt'"):
        await container.chat_model()


async def test_the_container_raises_on_a_bus_backend_it_does_not_know() -> None:
    container = container_with(bus=BusSettings.model_construct(backend="kafka"))
    with pytest.raises(ValueError, match="GOLDENPATH_BUS__BACKEND='kafka'"):
        await container.message_rate_limiter()
    with pytest.raises(Exception, match="kafka"):
        container.event_bus()


OPENAI_LOADED = """
import asyncio, sys
import entrypoints.app, entrypoints.cli
from container import Container

async def main():
    container = Container()
    await container.chat_model()
    await container.shutdown_resources()

asyncio.run(main())
print("openai" in sys.modules)
"""


@pytest.mark.parametrize(("provider", "loaded"), [("builtin", "False"), ("openai", "True")])
def test_only_the_openai_provider_imports_openai(provider: str, loaded: str) -> None:
    done = python(OPENAI_LOADED, GOLDENPATH_MODEL__PROVIDER=provider)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == loaded
