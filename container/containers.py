"""Container: the one composition root; every object of the server is wired here."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TypeVar

from dependency_injector import containers, providers

from adapters.bridge import AgentWebSocketBridge
from adapters.event_bus import InMemoryEventBus
from adapters.mcp.lazy import LazyMcpToolSource, LazyNetworkGuard
from adapters.models.builtin import BuiltinChatModel
from adapters.persistence.audit_log import SqlAlchemyAuditLog
from adapters.persistence.database import Database
from adapters.persistence.event_log import SqlAlchemyEventLog
from adapters.persistence.grants import SqlAlchemyApprovalGrantRepository
from adapters.persistence.mcp_servers import SqlAlchemyMcpServerRepository
from adapters.persistence.notes import SqlAlchemyNoteRepository
from adapters.persistence.repositories import SqlAlchemyRunRepository, SqlAlchemyUserRepository
from adapters.persistence.threads import SqlAlchemyMessageRepository, SqlAlchemyThreadRepository
from adapters.redis_bus import RedisEventBus
from adapters.redis_rate_limit import RedisMessageRateLimit
from adapters.run_control import LocalRunControl, RedisRunControl
from adapters.security.cipher import SecretBox
from adapters.security.passwords import Argon2PasswordHasher
from adapters.security.tokens import JwtTokenService
from adapters.system import RandomIds, SystemClock
from container.settings import Settings
from container.signing_key import jwt_secret, mcp_secret
from domain.approval_policy import ApprovalGate
from domain.approvals import ApprovalService, WaitingRuns
from domain.auth import AuthService, PasswordPolicy
from domain.chat import ChatLimits, ChatService
from domain.conversations import ConversationService
from domain.factory import ExecutionEngineFactory
from domain.housekeeping import Housekeeper
from domain.leases import LeasePolicy
from domain.limits import EngineLimits
from domain.mcp import McpServers
from domain.ports import ChatModel, Clock
from domain.ratelimit import RateLimiter
from domain.runs import RunRegistry
from domain.tools import ToolBox
from domain.tools import builtin_tools as make_builtin_tools
from domain.tools.catalog import ToolCatalog

BatchWriter = TypeVar("BatchWriter", SqlAlchemyEventLog, SqlAlchemyAuditLog)


async def _database(settings: Settings) -> AsyncIterator[Database]:
    """The engine connects lazily; migrations run at boot (entrypoints.app) or by `goldenpath migrate`."""
    database = Database(settings.database.url, echo=settings.database.echo,
                        pool_size=settings.database.pool_size)
    try:
        yield database
    finally:
        await database.dispose()


async def _started(
    writer: Callable[[Database], BatchWriter], database: Database
) -> AsyncIterator[BatchWriter]:
    """A batch writer on the database (event log, audit log): started with the app, flushed at stop."""
    started = writer(database)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


def _operator_server_names(settings: Settings) -> list[str]:
    return [server.name for server in settings.mcp.servers]


def _bus_backend(settings: Settings) -> str:
    return settings.bus.backend


def _redis_url(settings: Settings) -> str:
    return settings.bus.redis_url.get_secret_value()


def _unknown(variable: str, value: object) -> ValueError:
    """The settings refuse it first; this keeps a value they accept but nobody wired from passing."""
    return ValueError(f"{variable}={value!r} has no adapter in the container")


async def _chat_model(settings: Settings) -> AsyncIterator[ChatModel]:
    """The model of `model.provider`. One resource, not a Selector of two: dependency-injector
    starts every resource of a container, so the OpenAI client was built even when unused; and
    openai is imported here, not at the top, so a server on the builtin model never loads it."""
    match settings.model.provider:
        case "builtin":
            yield BuiltinChatModel(delay_s=settings.model.builtin_delay_ms / 1000)
        case "openai":
            from adapters.models.openai_chat import OpenAIChatModel

            model = OpenAIChatModel(
                base_url=settings.model.base_url,
                api_key=settings.model.api_key.get_secret_value(),
                model=settings.model.name,
                timeout_s=settings.model.timeout_s,
                max_retries=settings.model.max_retries,
            )
            try:
                yield model
            finally:
                await model.aclose()
        case unknown:
            raise _unknown("GOLDENPATH_MODEL__PROVIDER", unknown)


def _lease_policy(settings: Settings, owner: str) -> LeasePolicy:
    return LeasePolicy(owner=owner, ttl_s=settings.runs.lease_ttl_s)


def _retention(settings: Settings) -> timedelta:
    return timedelta(days=settings.runs.event_retention_days)


def _process_id(settings: Settings) -> str:
    """The name this process owns runs under: stable across restarts, so a process that comes back
    takes back at once the runs its predecessor held (housekeeping), instead of waiting for their
    leases to lapse. On an ephemeral port (0: tests, embedding) a name of its own."""
    if settings.server.instance_id:
        return settings.server.instance_id
    if settings.server.port:
        return f"{socket.gethostname()}:{settings.server.port}"
    return f"proc_{secrets.token_hex(6)}"


async def _message_rate_limit(
    settings: Settings, clock: Clock
) -> AsyncIterator[RateLimiter | RedisMessageRateLimit]:
    """Counted in this process with the in-process bus (one process); in Redis with the Redis bus."""
    local = RateLimiter(per_minute=settings.security.messages_per_minute, clock=clock)
    match settings.bus.backend:
        case "memory":
            yield local
        case "redis":
            shared = RedisMessageRateLimit(_redis_url(settings), settings.bus.channel,
                                           per_minute=settings.security.messages_per_minute,
                                           fallback=local)
            try:
                yield shared
            finally:
                await shared.aclose()
        case unknown:
            raise _unknown("GOLDENPATH_BUS__BACKEND", unknown)


class Container(containers.DeclarativeContainer):
    settings = providers.Singleton(Settings)

    # -- limits: each field from its setting, so a default is written once (container/settings.py)
    engine_limits = providers.Factory(
        EngineLimits,
        max_engines_per_user=settings.provided.limits.max_engines_per_user,
        max_engines_total=settings.provided.limits.max_engines_total,
        run_timeout_s=settings.provided.limits.run_timeout_s,
        max_steps=settings.provided.limits.max_steps,
        model_timeout_s=settings.provided.model.timeout_s,
        delta_window_s=settings.provided.runs.delta_window_s,
    )
    chat_limits = providers.Factory(
        ChatLimits,
        max_message_chars=settings.provided.limits.max_message_chars,
        max_pending_runs_per_user=settings.provided.limits.max_pending_runs_per_user,
    )

    # -- system
    clock = providers.Singleton(SystemClock)
    ids = providers.Singleton(RandomIds)
    process_id = providers.Singleton(_process_id, settings)
    lease = providers.Singleton(_lease_policy, settings, process_id)

    # -- resources, started and stopped with the app
    database = providers.Resource(_database, settings=settings)
    event_log = providers.Resource(_started, SqlAlchemyEventLog, database=database)
    audit_log = providers.Resource(_started, SqlAlchemyAuditLog, database=database)

    # -- repositories
    users = providers.Singleton(SqlAlchemyUserRepository, database)
    threads = providers.Singleton(SqlAlchemyThreadRepository, database)
    messages = providers.Singleton(SqlAlchemyMessageRepository, database)
    runs = providers.Singleton(SqlAlchemyRunRepository, database)
    notes = providers.Singleton(SqlAlchemyNoteRepository, database)
    grants = providers.Singleton(SqlAlchemyApprovalGrantRepository, database)
    secret_box = providers.Singleton(SecretBox, providers.Callable(mcp_secret, settings))
    mcp_server_repository = providers.Singleton(SqlAlchemyMcpServerRepository, database, box=secret_box)

    # -- security
    password_hasher = providers.Singleton(
        Argon2PasswordHasher,
        time_cost=settings.provided.auth.argon2_time_cost,
        memory_cost_kib=settings.provided.auth.argon2_memory_kib,
        parallelism=settings.provided.auth.argon2_parallelism,
    )
    token_service = providers.Singleton(
        JwtTokenService,
        secret=providers.Callable(jwt_secret, settings),
        ttl_s=settings.provided.auth.token_ttl_s,
        clock=clock,
    )

    # -- the agent: model, tools, the one bridge, the one engine factory
    bus_backend = providers.Callable(_bus_backend, settings)
    redis_url = providers.Callable(_redis_url, settings)
    event_bus = providers.Selector(
        bus_backend,
        memory=providers.Singleton(InMemoryEventBus),
        redis=providers.Singleton(RedisEventBus, url=redis_url, channel=settings.provided.bus.channel),
    )
    run_control = providers.Selector(
        bus_backend,
        memory=providers.Singleton(LocalRunControl),
        redis=providers.Singleton(RedisRunControl, url=redis_url, prefix=settings.provided.bus.channel,
                                  owner=process_id),
    )
    chat_model = providers.Resource(_chat_model, settings)
    toolbox = providers.Singleton(
        ToolBox,
        tools=providers.Callable(make_builtin_tools, notes=notes, ids=ids, clock=clock),
        timeout_s=settings.provided.limits.tool_timeout_s,
        pause_s=settings.provided.tools.pause_s,
        policies=settings.provided.approvals.tools,
    )
    mcp_guard = providers.Singleton(LazyNetworkGuard,
                                    allow_private_networks=settings.provided.mcp.allow_private_networks)
    mcp_source = providers.Singleton(
        LazyMcpToolSource, operator_servers=settings.provided.mcp.servers, servers=mcp_server_repository,
        settings=settings.provided.mcp, guard=mcp_guard,
    )
    tool_catalog = providers.Singleton(ToolCatalog, builtin=toolbox, sources=providers.List(mcp_source),
                                       external_call_limit=settings.provided.mcp.max_calls_per_run)
    approval_gate = providers.Singleton(ApprovalGate, grants=grants, clock=clock,
                                        timeout_s=settings.provided.approvals.timeout_s)
    bridge = providers.Singleton(AgentWebSocketBridge, event_log=event_log, bus=event_bus)
    engine_factory = providers.Singleton(
        ExecutionEngineFactory,
        bridge=bridge,
        model=chat_model,
        tools=tool_catalog,
        clock=clock,
        audit=audit_log,
        limits=engine_limits,
        gate=approval_gate,
    )

    # -- use cases
    message_rate_limiter = providers.Resource(_message_rate_limit, settings, clock)
    auth_service = providers.Singleton(
        AuthService,
        users=users,
        hasher=password_hasher,
        tokens=token_service,
        ids=ids,
        clock=clock,
        audit=audit_log,
        policy=providers.Factory(PasswordPolicy, min_length=settings.provided.auth.min_password_length),
    )
    run_registry = providers.Singleton(RunRegistry, factory=engine_factory)
    waiting_runs = providers.Singleton(WaitingRuns, runs=runs, events=event_log, factory=engine_factory,
                                       registry=run_registry, audit=audit_log, clock=clock, lease=lease)
    chat_service = providers.Singleton(
        ChatService,
        factory=engine_factory,
        registry=run_registry,
        threads=threads,
        messages=messages,
        runs=runs,
        events=event_log,
        audit=audit_log,
        ids=ids,
        clock=clock,
        limits=chat_limits,
        lease=lease,
        control=run_control,
        waiting=waiting_runs,
        rate_limiter=message_rate_limiter,
    )
    mcp_servers = providers.Singleton(
        McpServers, servers=mcp_server_repository, guard=mcp_guard, catalog=tool_catalog, clock=clock,
        audit=audit_log, operator_names=providers.Callable(_operator_server_names, settings),
        max_per_user=settings.provided.mcp.max_servers_per_user,
    )
    approval_service = providers.Singleton(
        ApprovalService, runs=runs, events=event_log, grants=grants, resumer=chat_service,
        factory=engine_factory, registry=run_registry, audit=audit_log, clock=clock, ids=ids, lease=lease,
    )
    housekeeper = providers.Singleton(
        Housekeeper,
        runs=runs,
        events=event_log,
        factory=engine_factory,
        registry=run_registry,
        audit=audit_log,
        clock=clock,
        lease=lease,
        retention=providers.Callable(_retention, settings),
        resumer=chat_service,
        max_takeovers=settings.provided.runs.max_takeovers,
        waiting=waiting_runs,
    )
    conversation_service = providers.Singleton(
        ConversationService, threads=threads, messages=messages, runs=runs, events=event_log, ids=ids,
        clock=clock,
    )
