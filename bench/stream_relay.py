"""A bare relay: the floor goldenpath's token streaming is compared with in the `stream` section.

An aiohttp WebSocket server that takes the frames of bench/stream_load.py as goldenpath does (no
auth, as bench/bare_server.py: `ready` at once, whatever the handshake carries). Each `chat`
frame opens a streamed chat completion at --model-url over one shared aiohttp.ClientSession,
reads its raw server-sent events line by line, `json.loads` each data line and forwards each
non-empty `delta.content` as a frame shaped like goldenpath's `agent_message_delta` event; then
one `agent_completed` with the whole text. Nothing is stored; nothing is grouped.
Run: python -m bench.stream_relay --port P --model-url http://127.0.0.1:Q/v1
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from datetime import UTC, datetime

import aiohttp
from aiohttp import web

from bench.small_server import arguments, serve, with_health

TERMINAL_OK = "agent_completed"
_dumps = json.JSONEncoder(separators=(",", ":")).encode  # compact, as goldenpath's frames are


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Relay:
    def __init__(self, model_url: str) -> None:
        self.completions = model_url.rstrip("/") + "/chat/completions"
        self.client: aiohttp.ClientSession | None = None
        self.ids = itertools.count(1)
        self.tasks: set[asyncio.Task] = set()

    async def start(self, app: web.Application) -> None:
        self.client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                            timeout=aiohttp.ClientTimeout(total=None, sock_read=60))

    async def stop(self, app: web.Application) -> None:
        for task in self.tasks:
            task.cancel()
        if self.client is not None:
            await self.client.close()

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(heartbeat=20.0, max_msg_size=64 * 1024)
        await sock.prepare(request)
        await sock.send_str(_dumps({"type": "ready", "user_id": "bare", "connection_id": "bare"}))
        async for msg in sock:
            if msg.type != web.WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(msg.data)
            except ValueError:
                await sock.send_str(_dumps({"type": "error", "code": "invalid_json", "message": "not JSON"}))
                continue
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "chat":
                task = asyncio.create_task(self.run(sock, frame))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif kind == "ping":
                await sock.send_str('{"type":"pong"}')
            elif kind != "auth":
                await sock.send_str(_dumps({"type": "error", "code": "unknown_type", "message": str(kind)}))
        return sock

    async def run(self, sock: web.WebSocketResponse, frame: dict) -> None:
        """One chat: its stream relayed delta by delta, then the terminal event."""
        n = next(self.ids)
        run_id, thread_id = f"run_bare{n:016x}", frame.get("thread_id") or f"thr_bare{n:016x}"
        await sock.send_str(_dumps({"type": "ack", "client_message_id": frame.get("client_message_id"),
                                    "run_id": run_id, "thread_id": thread_id, "status": "running"}))
        seq = 0

        async def send(kind: str, data: dict) -> None:
            nonlocal seq
            seq += 1
            await sock.send_str(_dumps({"type": kind, "run_id": run_id, "thread_id": thread_id, "seq": seq,
                                        "cursor": f"{seq:020d}", "ts": now_iso(), "data": data}))

        text: list[str] = []
        started = time.monotonic()
        body = {"model": "bench-relay", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": str(frame.get("message", ""))}]}
        assert self.client is not None
        try:
            async with self.client.post(self.completions, json=body) as response:
                response.raise_for_status()
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    for choice in json.loads(data).get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            text.append(content)
                            await send("agent_message_delta", {"delta": content})
            await send(TERMINAL_OK, {"message_id": f"msg_bare{n:016x}", "text": "".join(text), "usage": {
                "model_calls": 1, "duration_ms": round((time.monotonic() - started) * 1e3)}})
        except (aiohttp.ClientError, ValueError, ConnectionError) as error:
            with contextlib.suppress(Exception):  # the socket may be what failed
                await send("agent_error", {"code": "model_unavailable", "message": repr(error)})


def make_app(model_url: str) -> web.Application:
    relay = Relay(model_url)


    app = web.Application()
    app.on_startup.append(relay.start)
    app.on_shutdown.append(relay.stop)
    app.router.add_get("/ws", relay.ws)
    return with_health(app)


def main() -> None:
    parser = arguments()
    parser.add_argument("--model-url", required=True, help="the OpenAI-compatible base URL, .../v1")
    args = parser.parse_args()
    serve(make_app(args.model_url), args.host, args.port)


if __name__ == "__main__":
    main()
