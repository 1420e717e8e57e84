"""Bad input gets the protocol's error or close code, and the socket and server keep working."""

from __future__ import annotations

import json

import aiohttp
import pytest
import websockets

from tests.e2e.client import Server, chat, recv, register, until_ready


async def expect_error(ws, frame: str, code: str) -> dict:
    await ws.send(frame)
    reply = await recv(ws)
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert reply["message"]
    return reply


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(server: Server) -> None:
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        await expect_error(ws, "{not json", "invalid_json")
        await expect_error(ws, "[1, 2]", "invalid_message")
        await expect_error(ws, json.dumps({"no": "type"}), "invalid_message")
        await expect_error(ws, json.dumps({"type": 7}), "invalid_message")
        await expect_error(ws, json.dumps({"type": "dance"}), "unknown_type")
        await expect_error(ws, json.dumps({"type": "chat"}), "invalid_message")
        await expect_error(ws, json.dumps({"type": "chat", "message": 42}), "invalid_message")
        await expect_error(ws, json.dumps({"type": "chat", "message": "   "}), "invalid_message")
        reply = await expect_error(
            ws, json.dumps({"type": "chat", "message": "x" * 8001, "client_message_id": "big"}),
            "message_too_large")
        assert reply["client_message_id"] == "big"
        await expect_error(ws, json.dumps({"type": "chat", "message": "hi", "thread_id": 5}),
                           "invalid_message")
        await expect_error(ws, json.dumps({"type": "chat", "message": "hi", "multitask": "x"}),
                           "invalid_message")
        await expect_error(ws, json.dumps({"type": "chat", "message": "hi", "thread_id": "thr_nope"}),
                           "not_found")
        await expect_error(ws, json.dumps({"type": "cancel"}), "invalid_message")
        await expect_error(ws, json.dumps({"type": "cancel", "run_id": "run_nope"}), "not_found")
        await ws.send(b"\x00\x01")
        assert (await recv(ws))["code"] == "invalid_message"
        # Still serving: ping and a full chat
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws)) == {"type": "pong"}
        _, events = await chat(ws, "What is 17 * 23?")
        assert "391" in events[-1]["data"]["text"]


async def test_oversized_frame_closes_1009_and_the_server_keeps_serving(server: Server) -> None:
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "chat", "message": "x" * 70_000}))
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1009
    async with user.connect() as ws:
        await until_ready(ws)
        _, events = await chat(ws, "hello")
        assert events[-1]["type"] == "agent_completed"


@pytest.mark.parametrize("first_frame", [
    None,  # nothing at all: the auth timeout
    json.dumps({"type": "auth", "token": "not-a-token"}),
    json.dumps({"type": "chat", "message": "hi"}),
    "garbage",
])
async def test_bad_or_missing_token_closes_4401(server: Server, first_frame: str | None) -> None:
    async with websockets.connect(server.ws_url) as ws:
        if first_frame is not None:
            await ws.send(first_frame)
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 4401


async def test_bad_header_token_closes_4401(server: Server) -> None:
    headers = {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."}
    async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 4401


async def test_http_errors_are_in_the_protocols_form(server: Server) -> None:
    user = await register(server)
    other = await register(server)
    base = server.base_url
    async with aiohttp.ClientSession() as session:
        async def call(method: str, path: str, expected: int, code: str, **kwargs) -> None:
            async with session.request(method, base + path, **kwargs) as response:
                body = await response.json()
                assert response.status == expected, body
                assert body["error"]["code"] == code and body["error"]["message"], body
                assert "Traceback" not in json.dumps(body)

        auth = user.auth
        await call("GET", "/api/me", 401, "unauthorized")
        await call("GET", "/api/me", 401, "unauthorized", headers={"Authorization": "Bearer nope"})
        await call("GET", "/api/me", 401, "unauthorized", headers={"Authorization": "Basic eA=="})
        await call("POST", "/api/chat/message", 400, "invalid_json", headers=auth, data=b"{oops")
        await call("POST", "/api/chat/message", 400, "invalid_message", headers=auth, json={})
        await call("POST", "/api/chat/message", 400, "invalid_message", headers=auth,
                   json={"message": ["list"]})
        await call("POST", "/api/chat/message", 400, "invalid_message", headers=auth,
                   json={"message": ""})
        await call("POST", "/api/chat/message", 413, "message_too_large", headers=auth,
                   json={"message": "y" * 9000})
        await call("GET", "/api/nothing-here", 404, "not_found", headers=auth)
        await call("GET", "/api/runs/run_missing", 404, "not_found", headers=auth)
        await call("POST", "/api/auth/register", 409, "conflict",
                   json={"username": user.username, "password": "another good one"})
        await call("POST", "/api/auth/register", 422, "validation_error",
                   json={"username": "newname", "password": "short"})
        await call("POST", "/api/auth/register", 422, "validation_error",
                   json={"username": "a b", "password": "long enough pass"})
        await call("POST", "/api/auth/register", 422, "validation_error", json={"username": "x"})
        await call("POST", "/api/auth/login", 401, "unauthorized",
                   json={"username": user.username, "password": "wrong password"})
        await call("POST", "/api/auth/login", 401, "unauthorized",
                   json={"username": "nobody_here", "password": "wrong password"})
        await call("DELETE", "/api/threads", 405, "method_not_allowed", headers=auth)

        # Another user's thread and run are not found, never forbidden.
        status, body = await other.http("POST", "/api/chat/message",
                                        json={"message": "hello", "wait": True})
        assert status == 200
        thread_id, run_id = body["thread_id"], body["run_id"]
        await call("GET", f"/api/threads/{thread_id}/messages", 404, "not_found", headers=auth)
        await call("DELETE", f"/api/threads/{thread_id}", 404, "not_found", headers=auth)
        await call("GET", f"/api/runs/{run_id}", 404, "not_found", headers=auth)
        await call("POST", f"/api/runs/{run_id}/cancel", 404, "not_found", headers=auth)
        await call("POST", "/api/chat/message", 404, "not_found", headers=auth,
                   json={"message": "hi", "thread_id": thread_id})
    status, _ = await other.http("GET", f"/api/threads/{thread_id}/messages")
    assert status == 200
    status, _ = await other.http("DELETE", f"/api/threads/{thread_id}")
    assert status == 204
    status, _ = await other.http("GET", f"/api/threads/{thread_id}/messages")
    assert status == 404
