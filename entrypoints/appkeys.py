"""Typed application state: every web.AppKey of the server in one place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from adapters.bridge import AgentWebSocketBridge
from adapters.persistence.database import Database
from adapters.run_control import LocalRunControl, RedisRunControl
from container import Container, Settings
from domain.approvals import ApprovalService
from domain.auth import AuthService
from domain.chat import ChatService
from domain.conversations import ConversationService
from domain.entities import User
from domain.errors import DomainError
from domain.factory import ExecutionEngineFactory
from domain.mcp import McpServers
from domain.runs import RunRegistry
from domain.tools.catalog import ToolCatalog


class ServerNotReady(DomainError):
    code = "server_not_ready"


@dataclass(slots=True)
class Services:
    """The object graph resolved once at startup; handlers use these, never the container."""

    auth: AuthService
    chat: ChatService
    approvals: ApprovalService
    mcp: McpServers
    tools: ToolCatalog
    runs: RunRegistry
    conversations: ConversationService
    factory: ExecutionEngineFactory
    bridge: AgentWebSocketBridge
    control: LocalRunControl | RedisRunControl
    database: Database


@dataclass(slots=True)
class Lifecycle:
    ready: bool = False
    draining: bool = False
    boot: asyncio.Task[None] | None = None
    housekeeping: asyncio.Task[None] | None = None
    services: Services | None = None


CONTAINER = web.AppKey("container", Container)
SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)

REQUEST_ID = web.RequestKey("request_id", str)
USER = web.RequestKey("user", User)


def services(app: web.Application) -> Services:
    """The app's services once it is ready; server_not_ready before."""
    resolved = app[LIFECYCLE].services
    if resolved is None:
        raise ServerNotReady("The server is starting or stopping; retry shortly.")
    return resolved
