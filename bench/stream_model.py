"""An OpenAI-compatible streaming test model: the `stream` section's stand-in for a real model.

`POST /v1/chat/completions` with `"stream": true` answers server-sent events as OpenAI does:
--chunks content chunks, chunk i written at start + i / --rate s on an absolute schedule (a late
chunk does not push the next ones back), then a chunk with `finish_reason: "stop"` and an empty
delta, then the usage chunk (`choices: []`) when `stream_options.include_usage` asks for it, then
`data: [DONE]`. Each chunk's content is its send time, `f"{ms % 1_000_000:06d} "` (7 characters),
taken right before the write: a client on the same machine computes each token's lag as
`(now_ms - token) % 1_000_000`. Tools and messages are ignored. `GET /health`: 200.

Cheap on purpose (it runs beside the servers under test on a 2-core machine): each answer's
frames are encoded once per request around the 7 bytes that change.
Run: python -m bench.stream_model --port P --chunks N --rate R
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

from aiohttp import web

from bench.small_server import arguments, serve, with_health

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def token() -> bytes:
    """The send time in ms, modulo 10^6, six digits and a space."""
    return b"%06d " % (int(time.time() * 1000) % 1_000_000)


class Answer:
    """One streamed answer's frames, pre-encoded but for each chunk's token."""

    __slots__ = ("first", "head", "rest", "stop", "usage")

    def __init__(self, ident: str, model: str, chunks: int, usage: bool) -> None:
        created = int(time.time())
        head = (f'data: {{"id":"{ident}","object":"chat.completion.chunk","created":{created},'
                f'"model":{json.dumps(model)},').encode()
        choice = b'"choices":[{"index":0,"delta":{'
        self.first = head + choice + b'"role":"assistant","content":"'
        self.head = head + choice + b'"content":"'
        self.rest = b'"},"finish_reason":null}]}\n\n'
        self.stop = head + choice + b'},"finish_reason":"stop"}]}\n\n'
        self.usage = head + b'"choices":[],"usage":' + json.dumps(
            {"prompt_tokens": 1, "completion_tokens": chunks, "total_tokens": chunks + 1},
            separators=(",", ":")).encode() + b"}\n\n" if usage else b""


def make_app(chunks: int, rate: float) -> web.Application:
    ids = itertools.count(1)
    interval = 1.0 / rate

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "not JSON"}}, status=400)
        if not isinstance(body, dict) or body.get("stream") is not True:
            return web.json_response({"error": {"message": "this test server only streams"}}, status=400)
        options = body.get("stream_options") or {}
        answer = Answer(f"chatcmpl-bench-{next(ids)}", str(body.get("model", "bench")), chunks,
                        bool(isinstance(options, dict) and options.get("include_usage")))
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for i in range(chunks):
                delay = start + i * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await response.write((answer.first if i == 0 else answer.head) + token() + answer.rest)
            await response.write(answer.stop + answer.usage + DONE)
            await response.write_eof()
        except (ConnectionError, RuntimeError):  # the client went away mid-answer
            pass
        return response


    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return with_health(app)


def main() -> None:
    parser = arguments()
    parser.add_argument("--chunks", type=int, default=200, help="content chunks per answer")
    parser.add_argument("--rate", type=float, default=50.0, help="content chunks per second")
    args = parser.parse_args()
    serve(make_app(args.chunks, args.rate), args.host, args.port)


if __name__ == "__main__":
    main()
