"""Hostile input at every way in, on SQLite and PostgreSQL: never a 500, never a silent close.

Every HTTP route (listed from the app's router, so a new one cannot be missed) gets a corpus of
hostile and unusual text in its path parameters, a query parameter, each field of its documented
body (and as a field name), and whole raw bodies (overlong UTF-8, deep nesting, huge numbers). Every
WebSocket frame type (listed from entrypoints/frames.py) gets the corpus in each of its fields, and
the first-frame auth too. Text that breaks the edge policy (NUL, lone surrogates) is refused with
400 invalid_message or an error frame; valid but unusual text (4-byte characters, right-to-left
marks) is taken and comes back intact; the server logs no error and still answers a chat at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, get_args
from urllib.parse import quote

import aiohttp
import pytest
import websockets
from dependency_injector import providers
from loguru import logger

from container import Container
from entrypoints.frames import ClientFrame
from entrypoints.openapi import openapi_document
from tests.conftest import make_settings, start_server
from tests.e2e.client import Server, User, chat, recv, register, until_ready
from tests.e2e.processes import fresh_postgres_database, postgres_available
from tests.fakes import SequentialIds

BROKEN = {"nul": "a\x00b", "lone_high": "\ud800", "lone_low": "x\udfffy", "nul_only": "\x00"}
UNUSUAL = {"emoji": "\U0001f600\U0001f389 ok", "rtl": "\u200f\u202eabc \u05e9\u05dc\u05d5\u05dd",
           "empty": ""}
CORPUS = {**BROKEN, **UNUSUAL}
# Whole documents, as raw bytes: what JSON text itself can get wrong.
NOT_JSON = {"overlong_utf8": b'{"message": "\xc0\xaf"}', "deep": b"[" * 5000 + b"]" * 5000,
            "huge_int": b'{"message": ' + b"9" * 5000 + b"}"}
ODD_NUMBERS = {"inf": b"1e999", "big_int": b"1" + b"0" * 400,
               "too_deep": b"[" * 33 + b"]" * 33}
BASE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/auth/register"): {"username": "someone_new", "password": "a fine passphrase"},
    ("POST", "/api/auth/login"): {"username": "nobody_here", "password": "a fine passphrase"},
    # The current password is wrong on purpose: nothing here may change the user's password.
    ("POST", "/api/auth/password"): {"current_password": "not the one", "new_password": "a fine passphrase"},
    ("POST", "/api/chat/message"): {"message": "hi"},
    ("POST", "/api/agui"): {"threadId": "", "runId": "r1",
                            "messages": [{"id": "m1", "role": "user", "content": "hi"}]},
    ("POST", "/api/runs/{run_id}/approvals"): {"tool_call_id": "call_none", "approve": False},
    ("PATCH", "/api/threads/{thread_id}"): {"title": "a title"},
    ("POST", "/api/threads/{thread_id}/fork"): {"message_id": "msg_none"},
    ("POST", "/api/mcp/servers"): {"name": "hostile", "url": "http://127.0.0.1:9/mcp",
                                   "headers": {"X-Key": "k"}},
}
NESTED_FIELDS = {("POST", "/api/agui"): [("messages", 0, "content"), ("messages", 0, "id")]}
BASE_FRAMES: dict[str, dict[str, Any]] = {
    "chat": {"message": "hi"}, "cancel": {"run_id": "run_none"},
    "resume": {"run_id": "run_none", "after_seq": 0}, "ping": {},
    "approval": {"run_id": "run_none", "tool_call_id": "call_none", "approve": False},
}
ERROR_CODES = {"invalid_json", "invalid_message", "unknown_type", "message_too_large", "not_found",
               "thread_busy", "limit_exceeded", "rate_limited", "server_not_ready", "internal_error"}
SECTIONS = {"security": {"messages_per_minute": 100_000, "ws_frames_per_s": 100_000,
                         "ws_frame_burst": 100_000},
            "limits": {"max_pending_runs_per_user": 1000, "max_engines_per_user": 1000}}


@contextlib.asynccontextmanager
async def _database_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database of this kind; PostgreSQL being down fails the test, never skips it."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/hostile.db"
        return
    assert await postgres_available(), "PostgreSQL is not running on 127.0.0.1:5432"
    async with fresh_postgres_database() as name:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def hostile_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    async with _database_url(request.param, tmp_path) as url:
        container = Container()
        settings = make_settings(tmp_path, database={"url": url}, **SECTIONS)
        container.settings.override(providers.Object(settings))
        server, runner = await start_server(container)
        try:
            yield server
        finally:
            await runner.cleanup()


@pytest.fixture
def logged_errors() -> Iterator[list[str]]:
    """Every error the server logs, through loguru or aiohttp's own stdlib loggers."""
    errors: list[str] = []
    sink = logger.add(lambda message: errors.append(str(message)), level="ERROR", format="{message}")

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR or record.exc_info:
                errors.append(f"{record.name}: {record.getMessage()}")

    recorder = Recorder()
    aiohttp_log = logging.getLogger("aiohttp")
    aiohttp_log.addHandler(recorder)
    yield errors
    aiohttp_log.removeHandler(recorder)
    logger.remove(sink)


# -- HTTP ---------------------------------------------------------------------------------------------


def _routes(server: Server) -> list[tuple[str, str]]:
    """(METHOD, path template) of every route the app serves; HEAD mirrors GET."""
    routes = set()
    for route in server.app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        routes.add((route.method, path + "/{filename}" if path == "/static" else path))
    return sorted(routes)


def _body_fields(method: str, path: str) -> list[str]:
    operation = openapi_document()["paths"].get(path, {}).get(method.lower(), {})
    if "requestBody" not in operation:
        return []
    schemas = openapi_document()["components"]["schemas"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return list(schemas[ref.rsplit("/", 1)[-1]]["properties"])


def _fill(template: str, value: str) -> str:
    def encoded(text: str) -> str:  # as a client would send a lone surrogate: its (invalid) UTF-8
        return quote(text.encode("utf-8", "surrogatepass"), safe="")

    parts = template.split("/")
    return "/".join(encoded(value) if part.startswith("{") else part for part in parts)


def _with(body: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(body))
    target = copy
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    return copy


def _raw(document: Any) -> bytes:
    # ensure_ascii: a lone surrogate goes as the JSON escape "\ud800", as a hostile client sends it.
    return json.dumps(document, ensure_ascii=True).encode()


class Caller:
    def __init__(self, session: aiohttp.ClientSession, server: Server) -> None:
        self.session, self.server = session, server
        self.seen: list[str] = []

    async def call(self, user: User, method: str, path: str, what: str, *, data: bytes | None = None,
                   expect: str | None = None) -> tuple[int, Any]:
        headers = {**user.auth, "Content-Type": "application/json"}
        async with self.session.request(method, self.server.base_url + path, data=data,
                                        headers=headers) as response:
            text = await response.text(errors="replace")
        self.seen.append(what)
        assert response.status < 500, f"{what}: {response.status} {text[:300]}"
        body = json.loads(text) if response.content_type == "application/json" and text else None
        if expect is not None:
            assert response.status == 400 and body["error"]["code"] == expect, \
                f"{what}: {response.status} {text}"
        return response.status, body


async def _hit_every_route(server: Server, session: aiohttp.ClientSession) -> list[str]:
    caller = Caller(session, server)
    routes = _routes(server)
    documented_bodies = {(m, p) for m, p in routes if _body_fields(m, p)}
    missing = documented_bodies - BASE_BODIES.keys()
    assert not missing, f"add a base body for {missing}"
    for method, template in routes:
        user = await register(server)  # its own: a logout of one route revokes no other's token
        for label, value in CORPUS.items():
            # In an address only NUL survives decoding: a lone surrogate's bytes are no UTF-8, so they
            # stay percent-encoded in the path and become U+FFFD in the query.
            expect = "invalid_message" if "\x00" in value else None
            if "{" in template and value:
                await caller.call(user, method, _fill(template, value), f"{method} {template} path {label}",
                                  expect=expect)
            query = quote(value.encode("utf-8", "surrogatepass"), safe="")
            await caller.call(user, method, f"{_fill(template, 'x')}?q={query}",
                              f"{method} {template} query {label}", expect=expect)
        if (method, template) not in BASE_BODIES:
            continue
        base, path = BASE_BODIES[(method, template)], _fill(template, "x")
        targets = [(name,) for name in _body_fields(method, template)]
        targets += NESTED_FIELDS.get((method, template), [])
        for where in targets:
            for label, value in CORPUS.items():
                expect = "invalid_message" if label in BROKEN else None
                await caller.call(user, method, path, f"{method} {template} {where} {label}",
                                  data=_raw(_with(base, where, value)), expect=expect)
            for label, raw in ODD_NUMBERS.items():
                document = _raw(_with(base, where, "@@")).replace(b'"@@"', raw)
                await caller.call(user, method, path, f"{method} {template} {where} {label}", data=document,
                                  expect="invalid_json" if label == "too_deep" else None)
        for label, value in BROKEN.items():
            await caller.call(user, method, path, f"{method} {template} field name {label}",
                              data=_raw({**base, value: 1}), expect="invalid_message")
        for label, raw in NOT_JSON.items():
            await caller.call(user, method, path, f"{method} {template} body {label}", data=raw,
                              expect="invalid_json")
    return caller.seen


async def _raw_request(server: Server, head: bytes) -> bytes:
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"Connection: close\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_every_route_refuses_broken_text_with_400_and_never_answers_500(
        hostile_server: Server, logged_errors: list[str]) -> None:
    server = hostile_server
    async with aiohttp.ClientSession() as session:
        seen = await _hit_every_route(server, session)
    assert any("/api/agui" in what for what in seen) and any("/ws" in what for what in seen)
    user = await register(server)
    bearer = b"Authorization: Bearer " + user.token.encode() + b"\r\n"
    for head in [b"GET /api/me HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\x00b\r\n" + bearer,
                 b"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xed\xa0\x80\r\n",
                 b"GET /api/runs/r/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\r\n" + bearer,
                 b"TRACE /api/me HTTP/1.1\r\nHost: x\r\n"]:
        answer = await _raw_request(server, head)
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:300]
    assert b"Allow: GET,HEAD" in answer  # TRACE: 405, naming the methods that are allowed
    await _a_normal_chat_still_works(server)
    assert not logged_errors, "\n".join(logged_errors)


async def test_unusual_text_is_taken_and_comes_back_intact(hostile_server: Server) -> None:
    server = hostile_server
    user = await register(server)
    for label in ("emoji", "rtl"):
        text = UNUSUAL[label]
        status, answer = await user.http("POST", "/api/chat/message",
                                         json={"message": text, "client_message_id": text, "wait": True})
        assert status == 200 and answer["status"] == "completed", answer
        status, listed = await user.http("GET", f"/api/threads/{quote(answer['thread_id'])}/messages")
        assert listed["messages"][0]["text"] == text, listed
        async with user.connect() as ws:
            await until_ready(ws)
            ack, events = await chat(ws, text + " again", client_message_id=text + "2")
            assert ack["client_message_id"] == text + "2" and events[-1]["type"] == "agent_completed"
        status, threads = await user.http("GET", "/api/threads")
        assert text + " again" in [thread["title"] for thread in threads["threads"]], threads


# -- WebSocket ----------------------------------------------------------------------------------------


_barriers = itertools.count()


async def _answer(ws: Any) -> list[dict[str, Any]]:
    """What the server answered to the frame just sent: the frames before a barrier's answer (a cancel
    of nothing, answered not_found with its client_message_id); run events are skipped."""
    barrier = f"barrier_{next(_barriers)}"
    await ws.send(json.dumps({"type": "cancel", "client_message_id": barrier}))
    answers = []
    async with asyncio.timeout(10):
        while (frame := await recv(ws)).get("client_message_id") != barrier:
            if "seq" not in frame:  # the runs of accepted chats stream here too
                answers.append(frame)
    return answers


def _frame_types() -> dict[str, list[str]]:
    models = get_args(ClientFrame)
    fields = {get_args(m.model_fields["type"].annotation)[0]: [f for f in m.model_fields if f != "type"]
              for m in models}
    assert fields.keys() == BASE_FRAMES.keys(), f"add a base frame for {fields.keys() - BASE_FRAMES.keys()}"
    return fields


async def test_every_frame_type_answers_every_hostile_field_and_the_socket_stays_open(
        hostile_server: Server, logged_errors: list[str]) -> None:
    server = hostile_server
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        for kind, fields in _frame_types().items():
            base = {"type": kind, **BASE_FRAMES[kind]}
            for field in fields:
                for label, value in CORPUS.items():
                    await ws.send(_raw({**base, field: value}).decode())
                    answers = await _answer(ws)
                    what = f"{kind}.{field} {label}: {answers}"
                    assert len(answers) <= 1, what
                    assert all(a["type"] in {"ack", "error", "pong", "resync"} for a in answers), what
                    if label in BROKEN:
                        assert answers and answers[0]["code"] == "invalid_message", what
                    for answer in answers:
                        assert answer["type"] != "error" or answer["code"] in ERROR_CODES, what
                for label, raw in ODD_NUMBERS.items():
                    await ws.send(_raw({**base, field: "@@"}).decode().replace('"@@"', raw.decode()))
                    answers = await _answer(ws)
                    assert len(answers) <= 1, f"{kind}.{field} {label}: {answers}"
                    if label == "too_deep":
                        assert answers and answers[0]["code"] == "invalid_json", (kind, field, answers)
            for label, value in BROKEN.items():
                await ws.send(_raw({**base, value: 1}).decode())
                assert [a["code"] for a in await _answer(ws)] == ["invalid_message"], (kind, label)
        for label, raw in NOT_JSON.items():
            if label == "overlong_utf8":
                continue  # not a text frame's UTF-8: closes with 1007, below
            await ws.send(raw.decode())
            assert [a["code"] for a in await _answer(ws)] == ["invalid_json"], label
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(NOT_JSON["overlong_utf8"], text=True)
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1007
    await _a_normal_chat_still_works(server)
    assert not logged_errors, "\n".join(logged_errors)


@pytest.mark.parametrize("token", [*BROKEN.values(), UNUSUAL["emoji"], ""])
async def test_a_hostile_first_frame_token_closes_4401(server: Server, token: str) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(_raw({"type": "auth", "token": token}).decode())
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 4401


class _FailingOnce(SequentialIds):
    """The first new thread's id fails: an unexpected fault deep in handling a chat frame."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def new_id(self, prefix: str) -> str:
        if prefix == "thr" and not self.failed:
            self.failed = True
            raise RuntimeError("an unexpected fault")
        return super().new_id(prefix)


async def test_an_unexpected_fault_in_a_frame_is_an_internal_error_frame_and_the_socket_reads_on(
        make_server: Any, logged_errors: list[str]) -> None:
    ids = _FailingOnce()
    server = await make_server(lambda container: container.ids.override(providers.Object(ids)))
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "chat", "message": "hello", "client_message_id": "cm_1"}))
        error = await recv(ws)
        assert error == {"type": "error", "code": "internal_error", "client_message_id": "cm_1",
                         "message": error["message"]} and ids.failed
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
        _, events = await chat(ws, "What is 17 * 23?")
        assert "391" in events[-1]["data"]["text"]
    assert len(logged_errors) == 1 and "a frame of socket" in logged_errors[0], logged_errors


async def _a_normal_chat_still_works(server: Server) -> None:
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        _, events = await chat(ws, "What is 17 * 23?")
        assert "391" in events[-1]["data"]["text"]
