"""create_app(container): the aiohttp application, its routes and its ordered start and stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

from aiohttp import web
from loguru import logger

from adapters.close_codes import CloseCode
from adapters.websocket import SocketConnection
from container import Container
from container.lifecycle import start_resources
from entrypoints.agui import agui_run
from entrypoints.appkeys import CONTAINER, LIFECYCLE, SETTINGS, Lifecycle, Services
from entrypoints.http.handlers import routes
from entrypoints.http.parser_errors import log_parser_errors_in_one_line
from entrypoints.metrics import install_metrics
from entrypoints.middlewares import authentication, edge, errors, request_ids, security_headers
from entrypoints.openapi import openapi
from entrypoints.sse import run_events
from entrypoints.ws import close_revoked_sockets, websocket
from entrypoints.ws_limits import bound_received_frames

STATIC = Path(__file__).parent / "static"


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _boot(app: web.Application) -> None:
    """Resources (database, migrations, logs), bridge, factory, then ready.

    It runs after the listener opened, so a client that comes early gets 1013 or 503 and
    retries, instead of a connection refused or a half-built server.
    """
    container = app[CONTAINER]
    await start_resources(container)
    bridge = await container.bridge()
    await bridge.start()
    app[LIFECYCLE].services = Services(
        auth=await container.auth_service(),
        chat=await container.chat_service(),
        approvals=await container.approval_service(),
        mcp=await container.mcp_servers(),
        tools=await container.tool_catalog(),
        runs=await container.run_registry(),
        conversations=await container.conversation_service(),
        factory=await container.engine_factory(),
        bridge=bridge,
        control=container.run_control(),  # depends on no async resource: a plain object
        database=await container.database(),
    )
    await app[LIFECYCLE].services.control.start(app[LIFECYCLE].services.runs.cancel,
                                                partial(close_revoked_sockets, bridge))
    housekeeper = await container.housekeeper()
    await housekeeper.boot()  # end what a crashed predecessor left running before taking new runs
    app[LIFECYCLE].housekeeping = asyncio.create_task(housekeeper.run_forever(), name="housekeeping")
    app[LIFECYCLE].ready = True
    logger.info("goldenpath ready (env={})", app[SETTINGS].env)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    boot = asyncio.create_task(_boot(app), name="boot")
    app[LIFECYCLE].boot = boot
    yield
    app[LIFECYCLE].ready = False
    if not boot.done():
        boot.cancel()
    with contextlib.suppress(BaseException):
        await boot
    housekeeping = app[LIFECYCLE].housekeeping
    if housekeeping is not None:
        housekeeping.cancel()
        with contextlib.suppress(BaseException):
            await housekeeping
    resolved = app[LIFECYCLE].services
    if resolved is not None:
        await resolved.factory.shutdown()
        await resolved.tools.aclose()  # the operator's stdio MCP servers stop with the server
        await resolved.control.stop()
        await resolved.bridge.stop()
    await app[CONTAINER].shutdown_resources()


async def wait_ready(app: web.Application) -> None:
    """For embedding and tests: returns once the app is ready, raises if its boot failed."""
    boot = app[LIFECYCLE].boot
    if boot is not None:
        await asyncio.shield(boot)


async def _drain(app: web.Application) -> None:
    """On shutdown: not ready, finish or cancel runs within the grace period, close sockets with 1001."""
    lifecycle = app[LIFECYCLE]
    lifecycle.draining = True
    services = lifecycle.services
    if services is None:
        return
    await services.runs.drain(app[SETTINGS].server.shutdown_grace_s)
    # Event streams (SSE) end by themselves with their run's terminal event; sockets are closed.
    sockets = [c for c in services.bridge.connections() if isinstance(c, SocketConnection)]
    await asyncio.gather(*(c.close(CloseCode.GOING_AWAY, "server shutting down") for c in sockets),
                         return_exceptions=True)


def create_app(container: Container) -> web.Application:
    settings = container.settings()
    app = web.Application(
        middlewares=[request_ids, errors, edge, authentication],
        client_max_size=settings.server.max_body_bytes,
    )
    app[CONTAINER] = container
    app[SETTINGS] = settings
    app[LIFECYCLE] = Lifecycle()
    app.add_routes(routes)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/api/runs/{run_id}/events", run_events)
    app.router.add_post("/api/agui", agui_run)
    app.router.add_get("/api/openapi.json", openapi)  # public, generated from the models
    app.router.add_get("/", _index)
    app.router.add_static("/static", STATIC)
    app.cleanup_ctx.append(_lifecycle)
    app.on_response_prepare.append(security_headers)  # CSP and friends on every response
    log_parser_errors_in_one_line()
    bound_received_frames(settings.server.ws_receive_queue_bytes)
    install_metrics(app)  # GET /metrics (no auth: internal scraping) and the event-loop lag probe
    app.on_shutdown.append(_drain)
    return app
