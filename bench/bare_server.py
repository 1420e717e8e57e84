"""A bare aiohttp WebSocket server: the floor goldenpath is compared with.

It answers each text frame with the frames of a recorded goldenpath run (same count, same types,
same sizes), built from a template file, and nothing else: no auth, no database, no engine.
Run: python -m bench.bare_server --port P --template frames.json
"""

from __future__ import annotations

import json

from aiohttp import web

from bench.small_server import arguments, serve, with_health


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


    app = web.Application()
    app.router.add_get("/ws", ws)
    return with_health(app)


def main() -> None:
    parser = arguments()
    parser.add_argument("--template", required=True)
    args = parser.parse_args()
    with open(args.template) as f:
        frames = _frames(json.load(f))
    serve(make_app(frames), args.host, args.port)


if __name__ == "__main__":
    main()
