"""A bare aiohttp WebSocket server: the floor goldenpath is compared with.

It answers each text frame with the frames of a recorded goldenpath run (same count, same types,
same sizes), built from a template file, and nothing else: no auth, no database, no engine.
Run: python -m bench.bare_server --port P --template frames.json
"""

from __future__ import annotations

import argparse
import json
import resource

from aiohttp import web


def _frames(template: list[dict]) -> list[str]:
    """One JSON text per recorded frame, padded to the recorded size (in bytes)."""
    out = []
    for item in template:
        base = json.dumps({"type": item["type"], "pad": ""})
        out.append(json.dumps({"type": item["type"], "pad": "x" * max(0, item["size"] - len(base))}))
    return out


def make_app(frames: list[str]) -> web.Application:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(heartbeat=20.0)
        await sock.prepare(request)
        await sock.send_str(json.dumps({"type": "ready", "user_id": "bare", "connection_id": "bare"}))
        async for msg in sock:
            if msg.type == web.WSMsgType.TEXT:
                for frame in frames:
                    await sock.send_str(frame)
        return sock

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--template", required=True)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with open(args.template) as f:
        frames = _frames(json.load(f))
    web.run_app(make_app(frames), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
