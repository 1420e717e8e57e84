"""A real OpenAI-compatible chat server for tests: scripted replies streamed as SSE, requests recorded."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Reply = Callable[[web.Request, "FakeOpenAI"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Received:
    body: dict[str, Any]
    authorization: str | None


class FakeOpenAI:
    """POST /v1/chat/completions answers with the next scripted reply (or the standing one)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.disconnected = asyncio.Event()
        self._replies: deque[Reply] = deque()
        self._standing: Reply | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def script(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    def always(self, reply: Reply) -> None:
        self._standing = reply

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        # Cancel a handler when its client hangs up, so a hanging reply never delays the shutdown.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.received.append(Received(await request.json(), request.headers.get("Authorization")))
        reply = self._replies.popleft() if self._replies else self._standing
        if reply is None:
            return web.json_response({"error": {"message": "nothing scripted"}}, status=418)
        return await reply(request, self)


def chunk(delta: dict[str, Any] | None = None, *, finish_reason: str | None = None,
          usage: tuple[int, int] | None = None) -> dict[str, Any]:
    """One chat.completion.chunk; with usage, the final chunk with empty choices."""
    body: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": "test-model"}
    if usage is None:
        body["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None,
                            "finish_reason": finish_reason}]
    else:
        prompt, completion = usage
        body["choices"] = []
        body["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}
    return body


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, data: dict[str, Any] | str) -> None:
    line = data if isinstance(data, str) else json.dumps(data)
    await response.write(f"data: {line}\n\n".encode())


def stream(*deltas: dict[str, Any], finish_reason: str | None = "stop",
           usage: tuple[int, int] | None = (12, 7), done: bool = True,
           extra_lines: tuple[str, ...] = ()) -> Reply:
    """A whole streamed answer: one chunk per delta, a finish chunk, the usage chunk, [DONE].

    finish_reason=None, usage=None or done=False leave that line out, as servers that cut an
    answer short (or are merely terse) do; the response still ends cleanly."""

    async def reply(request: web.Request, server: FakeOpenAI) -> web.StreamResponse:
        response = await _open_stream(request)
        for line in extra_lines:
            await _send(response, line)
        for delta in deltas:
            await _send(response, chunk(delta))
        if finish_reason is not None:
            await _send(response, chunk(finish_reason=finish_reason))
        if usage is not None:
            await _send(response, chunk(usage=usage))
        if done:
            await _send(response, "[DONE]")
        await response.write_eof()
        return response

    return reply


def paced(*pieces: str, pause_s: float) -> Reply:
    """Streams the text pieces one by one, `pause_s` apart, as a real model does."""

    async def reply(request: web.Request, server: FakeOpenAI) -> web.StreamResponse:
        response = await _open_stream(request)
        await _send(response, chunk({"role": "assistant", "content": ""}))
        for piece in pieces:
            await _send(response, chunk({"content": piece}))
            await asyncio.sleep(pause_s)
        await _send(response, chunk(finish_reason="stop"))
        await _send(response, "[DONE]")
        await response.write_eof()
        return response

    return reply


def text(*pieces: str, usage: tuple[int, int] = (12, 7)) -> Reply:
    return stream({"role": "assistant", "content": ""}, *({"content": piece} for piece in pieces),
                  usage=usage)


def tool_call(name: str, *argument_pieces: str, call_id: str = "call_abc123", index: int = 0) -> Reply:
    """A tool call as OpenAI streams it: id and name in the first piece only, arguments in pieces."""
    first = {"index": index, "id": call_id, "type": "function",
             "function": {"name": name, "arguments": ""}}
    rest = [{"index": index, "function": {"arguments": piece}} for piece in argument_pieces]
    return stream({"role": "assistant", "content": None, "tool_calls": [first]},
                  *({"tool_calls": [piece]} for piece in rest), finish_reason="tool_calls")


def reasoning(thoughts: tuple[str, ...], answer: str, *, field: str = "reasoning_content") -> Reply:
    return stream({"role": "assistant", "content": ""}, *({field: thought} for thought in thoughts),
                  {"content": answer})


def malformed() -> Reply:
    return stream({"content": "never read"}, extra_lines=("{this is not json",))


def error(status: int, message: str, *, headers: dict[str, str] | None = None) -> Reply:
    """An error in OpenAI's shape: {"error": {"message", "type", "code"}}."""

    async def reply(request: web.Request, server: FakeOpenAI) -> web.StreamResponse:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                          "code": None}}
        return web.json_response(body, status=status, headers=headers)

    return reply


def hang(seconds: float) -> Reply:
    async def reply(request: web.Request, server: FakeOpenAI) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await text("too late")(request, server)

    return reply


def text_then_drop(*pieces: str) -> Reply:
    """Streams some text, then the connection dies mid-answer."""

    async def reply(request: web.Request, server: FakeOpenAI) -> web.StreamResponse:
        response = await _open_stream(request)
        await _send(response, chunk({"role": "assistant", "content": ""}))
        for piece in pieces:
            await _send(response, chunk({"content": piece}))
        assert request.transport is not None
        request.transport.close()
        return response

    return reply


def endless(piece: str) -> Reply:
    """Streams forever until the client hangs up, which sets server.disconnected."""

    async def reply(request: web.Request, server: FakeOpenAI) -> web.StreamResponse:
        response = await _open_stream(request)
        try:
            await _send(response, chunk({"role": "assistant", "content": piece}))
            for _ in range(250):
                await asyncio.sleep(0.02)
                await response.write(b": keep-alive\n\n")
        except (ConnectionError, asyncio.CancelledError):
            server.disconnected.set()
            raise
        return response

    return reply
