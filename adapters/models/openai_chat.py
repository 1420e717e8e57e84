"""The openai chat model: any OpenAI-compatible endpoint, streamed through the official client."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

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
        self._client = client or AsyncOpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        arguments = self._arguments(request)
        for attempt in itertools.count():
            chunks, yielded, finished = 0, False, False
            try:
                stream = await self._client.chat.completions.create(**arguments)
                async with stream:
                    async for chunk in stream:
                        chunks += 1
                        pieces = _read(chunk)
                        finished = finished or _finishes(chunk)
                        for piece in pieces:
                            yielded = True
                            yield piece
                if not chunks:  # e.g. a plain JSON body from a server that ignored stream=True
                    raise _bad_output("no streamed chunks")
                if not finished:
                    raise _cut_short()
                return
            except openai.APIError as error:
                delay = None if yielded else self._retry_delay(error, attempt)
                if delay is None:
                    raise self._model_error(error) from error
            except ValueError as error:  # a data line that is not JSON
                raise _bad_output("a streamed line that is not JSON") from error
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
        if attempt >= self._max_retries or isinstance(error, openai.APITimeoutError):
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
        if isinstance(error, openai.APITimeoutError):
            return ModelError("The model endpoint did not answer in time; try again in a moment.",
                              code="model_timeout")
        if isinstance(error, openai.APIConnectionError):
            return ModelError("Could not reach the model endpoint; check GOLDENPATH_MODEL__BASE_URL "
                              "and that the model server is running.", code="model_unavailable")
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


def _read(chunk: Any) -> list[ModelChunk]:
    """The domain's pieces in one streamed chunk, read defensively: the client does not validate it."""
    if not isinstance(chunk.choices, list):
        raise _bad_output("a chunk without choices")
    pieces: list[ModelChunk] = []
    try:
        for choice in chunk.choices:
            delta = choice.delta
            if delta is None:
                continue
            extra = delta.model_extra or {}
            # vLLM and DeepSeek say reasoning_content, Ollama says reasoning.
            reasoning = extra.get("reasoning_content") or extra.get("reasoning")
            if reasoning:
                pieces.append(ReasoningDelta(_text(reasoning)))
            if delta.content:
                pieces.append(TextDelta(_text(delta.content)))
            for call in delta.tool_calls or ():
                function = call.function
                if not isinstance(call.index, int):
                    raise TypeError("tool call index")
                pieces.append(ToolCallDelta(
                    index=call.index,
                    id=_text(call.id) if call.id else None,
                    name=_text(function.name) if function and function.name else None,
                    arguments=_text(function.arguments) if function and function.arguments else "",
                ))
        usage = chunk.usage
        if usage is not None:
            pieces.append(UsageReport(prompt_tokens=int(usage.prompt_tokens or 0),
                                      completion_tokens=int(usage.completion_tokens or 0)))
    except (AttributeError, TypeError, ValueError) as error:
        raise _bad_output("a chunk that is not a chat completion chunk") from error
    return pieces


def _finishes(chunk: Any) -> bool:
    """Whether a choice of this chunk says why the answer ended. The client swallows `[DONE]`, so
    this is how a whole answer is told from a cut one; the usage chunk that some servers send
    after it has no choices and changes nothing."""
    return any(isinstance(reason := getattr(choice, "finish_reason", None), str) and reason
               for choice in chunk.choices)


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


def _cut_short() -> ModelError:
    return ModelError("The model's stream ended before it finished (no finish_reason); the answer "
                      "is incomplete, try again.", code="model_bad_output")


def _bad_output(what: str) -> ModelError:
    return ModelError(f"The model endpoint sent {what}; is GOLDENPATH_MODEL__BASE_URL an "
                      "OpenAI-compatible chat API?", code="model_bad_output")
