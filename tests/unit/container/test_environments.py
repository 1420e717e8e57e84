"""Environments: production refuses unsafe settings; the container picks adapters from settings."""

from __future__ import annotations

import pytest
from dependency_injector import providers
from pydantic import ValidationError

from adapters.event_bus import InMemoryEventBus
from adapters.models.builtin import BuiltinChatModel
from adapters.models.openai_chat import OpenAIChatModel
from adapters.redis_bus import RedisEventBus
from adapters.redis_rate_limit import RedisMessageRateLimit
from adapters.run_control import LocalRunControl, RedisRunControl
from container import Container, Settings
from domain.ratelimit import RateLimiter

SAFE = {
    "env": "production",
    "auth": {"jwt_secret": "x" * 48},
    "database": {"url": "postgresql+asyncpg://gp@db:5432/gp"},
    "mcp": {"secret_key": "k" * 48},
}


def production(**changes) -> Settings:
    values = {**SAFE, **changes}
    return Settings(_env_file=None, **values)


def test_a_safe_production_configuration_starts() -> None:
    assert production().env == "production"
    assert production(server={"processes": 3}, bus={"backend": "redis"}).server.processes == 3


@pytest.mark.parametrize(("changes", "says"), [
    ({"auth": {}}, "GOLDENPATH_AUTH__JWT_SECRET"),
    ({"auth": {"jwt_secret": "short"}}, "GOLDENPATH_AUTH__JWT_SECRET"),
    ({"database": {"url": "sqlite+aiosqlite:///var/gp.db"}}, "GOLDENPATH_DATABASE__URL"),
    ({"server": {"processes": 2}}, "GOLDENPATH_BUS__BACKEND=redis"),
    ({"model": {"provider": "openai"}}, "GOLDENPATH_MODEL__API_KEY"),
    ({"mcp": {}}, "GOLDENPATH_MCP__SECRET_KEY"),
    ({"mcp": {"secret_key": "short"}}, "GOLDENPATH_MCP__SECRET_KEY"),
])
def test_production_refuses_each_unsafe_setting_and_says_what_to_set(changes, says) -> None:
    with pytest.raises(ValidationError, match=says):
        production(**changes)


def test_development_keeps_its_embedded_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.env == "development" and settings.database.url.startswith("sqlite")
    assert settings.bus.backend == "memory" and settings.model.provider == "builtin"


def container_for(settings: Settings) -> Container:
    container = Container()
    container.settings.override(providers.Object(settings))
    return container


async def test_the_container_picks_the_embedded_adapters_by_default() -> None:
    container = container_for(Settings(_env_file=None))
    assert isinstance(container.event_bus(), InMemoryEventBus)
    assert isinstance(container.run_control(), LocalRunControl)
    assert isinstance(await container.chat_model(), BuiltinChatModel)
    assert isinstance(await container.message_rate_limiter(), RateLimiter)
    await container.shutdown_resources()


async def test_the_container_picks_redis_and_openai_from_settings() -> None:
    container = container_for(Settings(
        _env_file=None, bus={"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"},
        model={"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "name": "m"}))
    bus = container.event_bus()
    assert isinstance(bus, RedisEventBus)
    assert isinstance(container.run_control(), RedisRunControl)
    model = await container.chat_model()
    assert isinstance(model, OpenAIChatModel) and model.name == "openai:m"
    assert isinstance(await container.message_rate_limiter(), RedisMessageRateLimit)
    await container.shutdown_resources()
    await bus.stop()
    await container.run_control().stop()
