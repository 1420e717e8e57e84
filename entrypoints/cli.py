"""The `goldenpath` command: serve, users, migrate, audit."""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from domain.errors import DomainError
from entrypoints import chat_client

if TYPE_CHECKING:
    from container import Container

T = TypeVar("T")

# The server's modules (the container, SQLAlchemy, the model clients, ...) are imported by the
# commands that need them, not here: `goldenpath chat` starts in a fraction of a second.


def _container() -> Container:
    from container import Container
    from container.logging import configure_logging

    container = Container()
    settings = container.settings()
    configure_logging(settings.log, production=settings.env == "production")
    return container


async def _with_resources(container: Container, work: Callable[[Container], Awaitable[T]]) -> T:
    from container.lifecycle import start_resources

    await start_resources(container)
    try:
        return await work(container)
    finally:
        await container.shutdown_resources()


def serve(args: argparse.Namespace) -> int:
    from adapters.memory import return_large_buffers

    container = _container()
    settings = container.settings()
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    # What the process serves on is part of its identity (the name it owns runs under).
    settings.server.host, settings.server.port = host, port
    if settings.env == "development" and not _loopback(host):
        from loguru import logger

        logger.warning("development settings on {}, reachable from other machines: set "
                       "GOLDENPATH_ENV=production (and what it asks for) before exposing it", host)
    return_large_buffers()
    return asyncio.run(_serve(container, host, port))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


async def _serve(container: Container, host: str, port: int) -> int:
    """Listen at once, boot in the background, stop cleanly on SIGTERM or SIGINT."""
    from aiohttp import web
    from loguru import logger

    from entrypoints.app import create_app, wait_ready

    if (refused := await _cannot_listen(host, port)) is not None:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    app = create_app(container)
    grace = container.settings().server.shutdown_grace_s
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=grace + 5)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"goldenpath listening on http://{host}:{port}", flush=True)
        booted = asyncio.ensure_future(wait_ready(app))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({booted, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if booted.done() and booted.exception() is not None:
            logger.opt(exception=booted.exception()).critical("goldenpath could not start")
            exit_code = 1
        else:
            await stopped
        booted.cancel()
        logger.info("goldenpath stopping")
    finally:
        await runner.cleanup()
    logger.info("goldenpath stopped")
    return exit_code


async def _cannot_listen(host: str, port: int) -> str | None:
    """Why the address cannot be listened on, found before anything boots (a boot cut short by a
    failed listen ends in tracebacks); None when it can."""
    try:
        probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (f"port {port} on {host} is in use; stop what uses it, or pick another port with "
                    "--port or GOLDENPATH_SERVER__PORT")
        reason = exc.strerror if isinstance(exc, socket.gaierror) else os.strerror(exc.errno or 0)
        return (f"cannot listen on {host}:{port} ({reason}); pick another address with --host and --port "
                "or GOLDENPATH_SERVER__HOST and GOLDENPATH_SERVER__PORT")
    probe.close()
    await probe.wait_closed()
    return None


def users_add(args: argparse.Namespace) -> int:
    password = args.password or getpass.getpass(f"Password for {args.username}: ")

    async def work(container: Container) -> int:
        auth = await container.auth_service()
        user = await auth.register(args.username, password)
        print(f"added {user.username} ({user.id})")
        return 0

    return asyncio.run(_with_resources(_container(), work))


def users_list(args: argparse.Namespace) -> int:
    async def work(container: Container) -> int:
        users = await container.users()
        for user in await users.list():
            print(f"{user.id}  {user.username}  {user.created_at.isoformat()}")
        return 0

    return asyncio.run(_with_resources(_container(), work))


def migrate(args: argparse.Namespace) -> int:
    from adapters.persistence.database import Database

    async def run() -> None:
        database = Database(_container().settings().database.url)
        try:
            await database.migrate()
        finally:
            await database.dispose()

    asyncio.run(run())
    print("database is at the latest schema")
    return 0


def audit(args: argparse.Namespace) -> int:
    async def work(container: Container) -> int:
        audit_log = await container.audit_log()
        entries = await audit_log.list(user_id=args.user, limit=args.limit)
        for entry in reversed(list(entries)):
            parts = [entry.at.isoformat(timespec="seconds"), entry.user_id, entry.action.value]
            parts += [f"run={entry.run_id}"] if entry.run_id else []
            parts += [f"outcome={entry.outcome}"] if entry.outcome else []
            parts += [f"detail={entry.detail}"] if entry.detail else []
            print("  ".join(parts))
        return 0

    return asyncio.run(_with_resources(_container(), work))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goldenpath", description="A multi-user AI agent server.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="run the server")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=serve)

    users = commands.add_parser("users", help="manage users").add_subparsers(dest="users", required=True)
    p = users.add_parser("add", help="add a user (the password is prompted unless given)")
    p.add_argument("username")
    p.add_argument("--password", default=None, help="for scripts; prefer the prompt")
    p.set_defaults(func=users_add)
    p = users.add_parser("list", help="list users")
    p.set_defaults(func=users_list)

    p = commands.add_parser("migrate", help="bring the database schema up to date")
    p.set_defaults(func=migrate)

    p = commands.add_parser("audit", help="print the audit trail, oldest first")
    p.add_argument("--user", default=None, help="only this user id")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=audit)

    p = commands.add_parser("chat", help="chat with a server from the terminal")
    chat_client.add_arguments(p)
    p.set_defaults(func=chat_client.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:
        # One line per wrong setting, naming the variable to fix; the input is not echoed (a secret).
        for error in exc.errors():
            where = "__".join(str(part) for part in error["loc"]).upper()
            prefix = f"GOLDENPATH_{where}: " if where else ""
            print(f"error: {prefix}{error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
