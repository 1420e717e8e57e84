"""The openai chat model: any OpenAI-compatible endpoint; the official client makes the request, its
raw server-sent events are read here."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import httpx2 as httpx
import openai
from openai import AsyncOpenAI

from domain.errors import ModelError
from domain.llm import (
    ChatMessage,
    ModelChunk,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)

RETRY_AFTER_CAP_S = 20.0


class OpenAIChatModel:
    """The `openai` ChatModel: retries only before its first piece, so nothing streams twice."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        timeout_s: float,
        max_retries: int,
        temperature: float | None = None,
        backoff_base_s: float = 0.5,
        client: AsyncOpenAI | None = None,
    ) -> None:
        self.name = f"openai:{model}"
        self._model = model
        self._api_key = api_key
        self._temperature = temperature
        self._max_retries = max_retries
        self._backoff_base_s = backoff_base_s
        # Local servers need no key, but the client refuses an empty one.
        # On aiohttp's transport: reading a stream piece by piece through the default one (httpx2
        # on anyio) costs ~250 us more CPU per piece (docs/performance.md).
        self._client = client or AsyncOpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0,
            http_client=openai.DefaultAioHttpClient(timeout=timeout_s),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        arguments = self._arguments(request)
        for attempt in itertools.count():
            yielded = False
            try:
                # The client's low-level post makes the request (auth, status errors); the raw
                # lines are read here. Its typed `create` costs ~1.5 ms more per request (it
                # walks the arguments against its types) and typed chunk objects ~6x the JSON
                # parse per chunk (docs/performance.md).
                response = await self._client.post("/chat/completions", cast_to=httpx.Response,
                                                    body=arguments, stream=True)
                try:
                    async for piece in _pieces(response):
                        yielded = True
                        yield piece
                finally:
                    await response.aclose()
                return
            except openai.APIError as error:
                delay = None if yielded else self._retry_delay(error, attempt)
                if delay is None:
                    raise self._model_error(error) from error
            except httpx.TimeoutException as error:  # a connection lost mid-answer is one too
                raise (_unreachable() if _refused(error) else _timed_out()) from error
            except httpx.TransportError as error:  # e.g. the connection dropped mid-answer
                raise _unreachable() from error
            await asyncio.sleep(delay)

    def _arguments(self, request: ModelRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self._model,
            "messages": [_message(message) for message in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            arguments["tools"] = [
                {"type": "function", "function": {"name": spec.name, "description": spec.description,
                                                  "parameters": dict(spec.parameters)}}
                for spec in request.tools
            ]
        if self._temperature is not None:
            arguments["temperature"] = self._temperature
        return arguments

    def _retry_delay(self, error: openai.APIError, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None when this error is final."""
        timed_out = isinstance(error, openai.APITimeoutError) and not _refused(error)
        if attempt >= self._max_retries or timed_out:
            return None
        if isinstance(error, openai.APIStatusError):
            if error.status_code != 429 and error.status_code < 500:
                return None
            retry_after = _retry_after(error.response.headers.get("retry-after"))
            if retry_after is not None:
                return min(retry_after, RETRY_AFTER_CAP_S)
        elif not isinstance(error, openai.APIConnectionError):
            return None
        return self._backoff_base_s * 2**attempt * random.uniform(0.5, 1.0)

    def _model_error(self, error: openai.APIError) -> ModelError:
        if isinstance(error, openai.APIResponseValidationError):
            return _bad_output("a response the client could not read")
        if isinstance(error, openai.APITimeoutError) and not _refused(error):
            return _timed_out()
        if isinstance(error, openai.APIConnectionError):  # APITimeoutError is one too
            return _unreachable()
        status = getattr(error, "status_code", None)
        if status in (401, 403):
            return ModelError("The model endpoint refused our credentials; check "
                              "GOLDENPATH_MODEL__API_KEY.", code="model_unauthorized")
        if status == 404:
            return ModelError(f"The model endpoint does not know the model {self._model!r}; check "
                              "GOLDENPATH_MODEL__NAME (and GOLDENPATH_MODEL__BASE_URL).",
                              code="model_not_found")
        if status == 429:
            return ModelError("The model endpoint is rate limiting us; try again in a minute.",
                              code="model_rate_limited")
        if status is not None and status >= 500:
            return ModelError(f"The model endpoint failed (HTTP {status}); try again in a moment.",
                              code="model_unavailable")
        detail = self._server_message(error)
        return ModelError(f"The model endpoint rejected the request: {detail}" if detail
                          else "The model endpoint rejected the request.", code="model_error")

    def _server_message(self, error: openai.APIError) -> str:
        """The server's own short explanation (e.g. context too long), with our key blanked out."""
        body = error.body
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str):
            return ""
        if self._api_key:
            message = message.replace(self._api_key, "***")
        return message.strip()[:300]


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}
                for call in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content}


async def _pieces(response: httpx.Response) -> AsyncIterator[ModelChunk]:
    """The domain's pieces of a chat completion's server-sent events, checked to the end: a
    stream with no `finish_reason` and no `[DONE]` was cut short."""
    chunks, finished, done = 0, False, False
    async for line in response.aiter_lines():
        if done or not line.startswith("data:"):
            continue  # blank separators, comments, event names; after [DONE], drained for reuse
        data = line[5:].strip()
        if data == "[DONE]":
            finished = done = True
            continue
        chunks += 1
        try:
            chunk = json.loads(data)
        except ValueError as error:
            raise _bad_output("a streamed line that is not JSON") from error
        if isinstance(chunk, dict) and chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            raise openai.APIError(message if isinstance(message, str) else "An error occurred during "
                                  "streaming", request=response.request, body=error)
        pieces, ends = _read(chunk)
        finished = finished or ends
        for piece in pieces:
            yield piece
    if not chunks:  # e.g. a plain JSON body from a server that ignored stream=True
        raise _bad_output("no streamed chunks")
    if not finished:
        raise _cut_short()


def _read(chunk: object) -> tuple[list[ModelChunk], bool]:
    """The domain's pieces in one streamed chunk, read defensively, and whether a choice says why
    the answer ended (the usage chunk some servers send last has no choices)."""
    if not isinstance(chunk, dict) or not isinstance(choices := chunk.get("choices"), list):
        raise _bad_output("a chunk without choices")
    pieces: list[ModelChunk] = []
    finished = False
    try:
        for choice in choices:
            reason = choice.get("finish_reason")
            finished = finished or (isinstance(reason, str) and bool(reason))
            delta = choice.get("delta")
            if not delta:
                continue
            # vLLM and DeepSeek say reasoning_content, Ollama says reasoning.
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                pieces.append(ReasoningDelta(_text(reasoning)))
            if content := delta.get("content"):
                pieces.append(TextDelta(_text(content)))
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                index = call.get("index")
                if not isinstance(index, int) or isinstance(index, bool):
                    raise TypeError("tool call index")
                pieces.append(ToolCallDelta(
                    index=index,
                    id=_text(call["id"]) if call.get("id") else None,
                    name=_text(function["name"]) if function.get("name") else None,
                    arguments=_text(function["arguments"]) if function.get("arguments") else "",
                ))
        if usage := chunk.get("usage"):
            pieces.append(UsageReport(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                      completion_tokens=int(usage.get("completion_tokens") or 0)))
    except (AttributeError, TypeError, ValueError) as error:
        raise _bad_output("a chunk that is not a chat completion chunk") from error
    return pieces, finished


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _retry_after(header: str | None) -> float | None:
    """Retry-After in seconds, from either of its forms (seconds or an HTTP date)."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _refused(error: BaseException) -> bool:
    """Whether a "timeout" was a connection that failed: the aiohttp transport of openai maps every
    aiohttp.ClientConnectionError to httpx2.ConnectTimeout, a refused connection (ClientConnectorError)
    and a server that hung up before answering (ServerDisconnectedError, e.g. a pooled connection
    it closed) alike; only its ServerTimeoutError is a timeout."""
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectionError):
            return not isinstance(cause, aiohttp.ServerTimeoutError)
        cause = cause.__cause__
    return False


def _timed_out() -> ModelError:
    return ModelError("The model endpoint did not answer in time; try again in a moment.",
                      code="model_timeout")


def _unreachable() -> ModelError:
    return ModelError("Could not reach the model endpoint; check GOLDENPATH_MODEL__BASE_URL and "
                      "that the model server is running.", code="model_unavailable")


def _cut_short() -> ModelError:
    return ModelError("The model's stream ended before it finished (no finish_reason); the answer "
                      "is incomplete, try again.", code="model_bad_output")


def _bad_output(what: str) -> ModelError:
    return ModelError(f"The model endpoint sent {what}; is GOLDENPATH_MODEL__BASE_URL an "
                      "OpenAI-compatible chat API?", code="model_bad_output")
