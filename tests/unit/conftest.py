"""Unit tests build their own container with every outside system replaced by a fake."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dependency_injector import providers

from container import Container, Settings
from tests.conftest import make_settings
from tests.fakes import (
    FixedClock,
    InMemoryApprovalGrantRepository,
    InMemoryAuditLog,
    InMemoryEventLog,
    InMemoryMcpServerRepository,
    InMemoryMessageRepository,
    InMemoryNoteRepository,
    InMemoryRunRepository,
    InMemoryThreadRepository,
    InMemoryUserRepository,
    SequentialIds,
)


@dataclass
class Fakes:
    clock: FixedClock
    events: InMemoryEventLog
    audit: InMemoryAuditLog
    threads: InMemoryThreadRepository
    messages: InMemoryMessageRepository
    runs: InMemoryRunRepository
    notes: InMemoryNoteRepository
    users: InMemoryUserRepository
    grants: InMemoryApprovalGrantRepository
    mcp_servers: InMemoryMcpServerRepository


@pytest.fixture
def fakes() -> Fakes:
    threads, messages = InMemoryThreadRepository(), InMemoryMessageRepository()
    grants = InMemoryApprovalGrantRepository()
    runs = InMemoryRunRepository(threads, messages, grants)
    return Fakes(clock=FixedClock(datetime(2026, 11, 21, 12, 0, tzinfo=UTC)),
                 events=InMemoryEventLog(runs), audit=InMemoryAuditLog(), threads=threads,
                 messages=messages, runs=runs,
                 notes=InMemoryNoteRepository(), users=InMemoryUserRepository(), grants=grants,
                 mcp_servers=InMemoryMcpServerRepository())


@pytest.fixture
def unit_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def fake_container(fakes: Fakes, unit_settings: Settings) -> Container:
    """The real container, every adapter that talks to the outside overridden by a fake."""
    container = Container()
    container.settings.override(providers.Object(unit_settings))
    container.clock.override(providers.Object(fakes.clock))
    container.ids.override(providers.Object(SequentialIds()))
    container.database.override(providers.Object(None))
    container.event_log.override(providers.Object(fakes.events))
    container.audit_log.override(providers.Object(fakes.audit))
    container.users.override(providers.Object(fakes.users))
    container.threads.override(providers.Object(fakes.threads))
    container.messages.override(providers.Object(fakes.messages))
    container.runs.override(providers.Object(fakes.runs))
    container.notes.override(providers.Object(fakes.notes))
    container.grants.override(providers.Object(fakes.grants))
    container.mcp_server_repository.override(providers.Object(fakes.mcp_servers))
    return container
