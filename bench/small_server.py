"""What the bench's own servers (bare server, test model, relay) share: a health route, a
host/port command line and a start with the file limit raised for thousands of sockets."""

from __future__ import annotations

import argparse
import resource

from aiohttp import web


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def with_health(app: web.Application) -> web.Application:
    """`GET /health` answers 200: the bench waits for it before a server is used."""
    app.router.add_get("/health", _health)
    return app


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return parser


def serve(app: web.Application, host: str, port: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    web.run_app(app, host=host, port=port, print=None, access_log=None)
