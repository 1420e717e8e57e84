"""Tokens from the outside: forgeries, expiry, logout and password change, over HTTP and WebSocket.

Every check goes through a real server (make_server) with a real client; the only thing read from
inside is the JWT secret, to sign tokens that are well formed but must still be refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jwt
import pytest
import websockets
from dependency_injector import providers

from adapters.security.tokens import JwtTokenService
from container import Container
from tests.e2e.client import PASSWORD, Server, User, recv, register, until_ready

SECRET = "e2e-auth-security-secret-" + "s" * 48  # 73 bytes: long enough for HS512 too
NEW_PASSWORD = "a brand new passphrase 42"
CLOSE_UNAUTHORIZED = 4401
# Short enough to wait for; exp is in whole seconds, so a token lives TTL_S - 1 to TTL_S seconds.
TTL_S = 3


# -- tokens, made by hand -------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{segment(header)}.{segment(claims)}.{signature}"


def hmac_sha256(key: str, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A JWT whose header says anything but whose signature is HMAC-SHA256 with `key`."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def secret_of(server: Server) -> str:
    return server.container.settings().auth.jwt_secret.get_secret_value()


def claims_of(server: Server, token: str) -> dict[str, Any]:
    return jwt.decode(token, secret_of(server), algorithms=["HS256"], issuer="goldenpath")


def with_payload(token: str, claims: dict[str, Any]) -> str:
    """The same header and signature over other claims: what tampering in transit looks like."""
    header, _, signature = token.split(".")
    return f"{header}.{segment(claims)}.{signature}"


def forgeries(server: Server, victim: User, other: User) -> dict[str, str]:
    """Tokens that must all be refused; `victim` holds a genuine one (version 0)."""
    key = secret_of(server)
    good = claims_of(server, victim.token)
    now = datetime.now(UTC)
    valid = {**good, "iat": int(now.timestamp()), "exp": int((now + timedelta(hours=1)).timestamp())}

    def signed(claims: dict[str, Any], algorithm: str = "HS256", secret: str = key) -> str:
        return jwt.encode(claims, secret, algorithm=algorithm)

    def without(name: str) -> dict[str, Any]:
        return {k: v for k, v in valid.items() if k != name}

    return {
        "alg none, no signature": unsigned({"alg": "none", "typ": "JWT"}, valid),
        "alg none, original signature": unsigned(
            {"alg": "none", "typ": "JWT"}, good, victim.token.rsplit(".", 1)[1]),
        "alg None spelled oddly": unsigned({"alg": "None", "typ": "JWT"}, valid),
        "wrong key": signed(valid, secret="another-secret-of-the-right-length-xxxxx"),
        "empty signature": victim.token.rsplit(".", 1)[0] + ".",
        "signature of another token": with_payload(other.token, good),
        "sub changed, original signature": with_payload(victim.token, {**good, "sub": other.user_id}),
        "ver changed, original signature": with_payload(victim.token, {**good, "ver": 1}),
        "exp extended, original signature": with_payload(
            victim.token, {**good, "exp": good["exp"] + 86_400}),
        "missing exp": signed(without("exp")),
        "missing iat": signed(without("iat")),
        "missing sub": signed(without("sub")),
        "missing ver": signed(without("ver")),
        "missing iss": signed(without("iss")),
        "wrong iss": signed({**valid, "iss": "someone-else"}),
        "ver as a string": signed({**valid, "ver": "0"}),
        "ver as a float": signed({**valid, "ver": 0.0}),
        "ver as a bool": signed({**valid, "ver": False}),
        "empty sub": signed({**valid, "sub": ""}),
        "sub of no user": signed({**valid, "sub": "usr_nobody"}),
        "stale ver": signed({**valid, "ver": -1}),
        "expired": signed({**valid, "iat": int((now - timedelta(hours=2)).timestamp()),
                           "exp": int((now - timedelta(seconds=30)).timestamp())}),
        "HS512 with the right key": signed(valid, algorithm="HS512"),
        "HS384 with the right key": signed(valid, algorithm="HS384"),
        "RS256 declared, HMAC of the secret": hmac_sha256(key, {"alg": "RS256", "typ": "JWT"}, valid),
        "RS256 declared, random signature": unsigned(
            {"alg": "RS256", "typ": "JWT"}, valid, b64(secrets.token_bytes(256))),
        "ES256 declared, HMAC of the secret": hmac_sha256(key, {"alg": "ES256", "typ": "JWT"}, valid),
        "two segments": ".".join(victim.token.split(".")[:2]),
        "garbage": "not-a-token",
    }


# -- the outside view -------------------------------------------------------------------------------


async def me(server: Server, token: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(
        server.base_url + "/api/me", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        body = await response.json()
        if response.status == 401:
            assert response.headers.get("WWW-Authenticate") == "Bearer"
            assert body["error"]["code"] == "unauthorized", body
        return response.status, body


async def post(server: Server, path: str, token: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        server.base_url + path, headers={"Authorization": f"Bearer {token}"}, **kwargs
    ) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


async def login(server: Server, username: str, password: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        server.base_url + "/api/auth/login", json={"username": username, "password": password}
    ) as response:
        return response.status, await response.json()


async def socket_answer(server: Server, token: str, *, first_frame: bool = False) -> int | str:
    """What a new socket gets: its close code, or the type of its first frame."""
    headers = {} if first_frame else {"Authorization": f"Bearer {token}"}
    async with websockets.connect(server.ws_url, additional_headers=headers, open_timeout=10) as ws:
        if first_frame:
            await ws.send(json.dumps({"type": "auth", "token": token}))
        try:
            return (await recv(ws))["type"]
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code


async def closed_with(ws: Any, timeout: float = 10) -> int:
    """Reads until the server closes the socket; its close code."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None, "the server did not send a close frame"
    return closed.value.rcvd.code


async def still_open(ws: Any) -> None:
    await ws.send(json.dumps({"type": "ping"}))
    assert (await recv(ws, 5))["type"] == "pong"


async def stored_hash(server: Server, user_id: str) -> str:
    users = server.container.users()
    if inspect.isawaitable(users):
        users = await users
    user = await users.get(user_id)
    assert user is not None
    return user.password_hash


async def secure_server(make_server: Callable[..., Any], override: Any = None) -> Server:
    server = await make_server(override, auth={"jwt_secret": SECRET})
    assert secret_of(server) == SECRET
    return server


# -- forged tokens ------------------------------------------------------------------------------------


async def test_forged_tokens_are_refused_over_http_and_websocket(make_server: Callable[..., Any]) -> None:
    server = await secure_server(make_server)
    victim, other = await register(server), await register(server)
    # The genuine token works everywhere, so every refusal below is the forgery's doing.
    assert (await me(server, victim.token))[0] == 200
    assert await socket_answer(server, victim.token) == "ready"
    assert await socket_answer(server, victim.token, first_frame=True) == "ready"

    forged = forgeries(server, victim, other)
    answers = {
        name: ((await me(server, token))[0],
               await socket_answer(server, token),
               await socket_answer(server, token, first_frame=True))
        for name, token in forged.items()
    }
    refused = (401, CLOSE_UNAUTHORIZED, CLOSE_UNAUTHORIZED)
    assert answers == dict.fromkeys(forged, refused)
    # Nobody got in as the other user either, and the genuine tokens still work.
    assert await me(server, victim.token) == (200, {"user_id": victim.user_id,
                                                    "username": victim.username})
    assert (await me(server, other.token))[0] == 200


async def test_a_token_that_expires_closes_its_open_socket_with_4401(
    make_server: Callable[..., Any],
) -> None:
    def short_tokens(container: Container) -> None:
        container.token_service.override(providers.Singleton(
            JwtTokenService, secret=container.settings.provided.auth.jwt_secret.get_secret_value.call(),
            ttl_s=TTL_S, clock=container.clock))

    server = await secure_server(make_server, short_tokens)
    user = await register(server)
    claims = claims_of(server, user.token)
    assert claims["exp"] - claims["iat"] == TTL_S
    async with user.connect() as ws:
        await until_ready(ws)
        await still_open(ws)  # open and answering until the token's time is up
        started = asyncio.get_running_loop().time()
        assert await closed_with(ws, timeout=10) == CLOSE_UNAUTHORIZED
        assert asyncio.get_running_loop().time() - started < TTL_S + 2
        assert datetime.now(UTC).timestamp() >= claims["exp"] - 0.5  # not before the token's time
    assert (await me(server, user.token))[0] == 401
    assert await socket_answer(server, user.token) == CLOSE_UNAUTHORIZED
    # Logging in again gives a token that works (for its few seconds).
    status, body = await login(server, user.username, PASSWORD)
    assert status == 200 and body["expires_in"] == TTL_S
    assert (await me(server, body["access_token"]))[0] == 200


# -- logout ---------------------------------------------------------------------------------------------


async def test_logout_revokes_every_token_and_closes_open_sockets(make_server: Callable[..., Any]) -> None:
    server = await secure_server(make_server)
    user, bystander = await register(server), await register(server)
    status, second = await login(server, user.username, PASSWORD)  # another device
    assert status == 200
    other_device = second["access_token"]

    async with user.connect() as mine, bystander.connect() as theirs, websockets.connect(
        server.ws_url, open_timeout=10
    ) as browser:
        await browser.send(json.dumps({"type": "auth", "token": other_device}))
        for ws in (mine, theirs, browser):
            await until_ready(ws)

        assert await post(server, "/api/auth/logout", user.token) == (204, None)

        assert await closed_with(mine) == CLOSE_UNAUTHORIZED
        assert await closed_with(browser) == CLOSE_UNAUTHORIZED
        await still_open(theirs)  # another user's socket is not touched

    for token in (user.token, other_device):
        assert (await me(server, token))[0] == 401
        assert await socket_answer(server, token) == CLOSE_UNAUTHORIZED
        assert await socket_answer(server, token, first_frame=True) == CLOSE_UNAUTHORIZED
    assert (await post(server, "/api/auth/logout", user.token))[0] == 401  # revoked means revoked
    assert (await me(server, bystander.token))[0] == 200

    # Logging in again works, and the new token is not revoked by the old logout.
    status, body = await login(server, user.username, PASSWORD)
    assert status == 200
    assert (await me(server, body["access_token"]))[0] == 200
    assert await socket_answer(server, body["access_token"]) == "ready"


async def test_logout_needs_a_valid_token(make_server: Callable[..., Any]) -> None:
    server = await secure_server(make_server)
    async with aiohttp.ClientSession() as session, session.post(
        server.base_url + "/api/auth/logout"
    ) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    assert (await post(server, "/api/auth/logout", "not-a-token"))[0] == 401


# -- password change ---------------------------------------------------------------------------------


async def test_passwords_are_stored_as_argon2id(make_server: Callable[..., Any]) -> None:
    server = await secure_server(make_server)
    user = await register(server)
    stored = await stored_hash(server, user.user_id)
    assert stored.startswith("$argon2id$"), stored
    assert PASSWORD not in stored


async def test_a_wrong_current_password_or_a_weak_new_one_changes_nothing(
    make_server: Callable[..., Any],
) -> None:
    server = await secure_server(make_server)
    user = await register(server)
    before = await stored_hash(server, user.user_id)
    path = "/api/auth/password"
    async with user.connect() as ws:
        await until_ready(ws)
        wrong = await post(server, path, user.token,
                           json={"current_password": "not my password", "new_password": NEW_PASSWORD})
        assert wrong[0] == 401 and wrong[1]["error"]["code"] == "unauthorized", wrong
        for weak in ("short", "aaaaaaaaaaaa", user.username, "x" * 300):
            status, body = await post(server, path, user.token,
                                      json={"current_password": PASSWORD, "new_password": weak})
            assert (status, body["error"]["code"]) == (422, "validation_error"), (weak, body)
        for bad in ({"current_password": PASSWORD}, {"new_password": NEW_PASSWORD},
                    {"current_password": PASSWORD, "new_password": 12345678},
                    {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "extra": 1}):
            status, body = await post(server, path, user.token, json=bad)
            assert (status, body["error"]["code"]) == (422, "validation_error"), (bad, body)
        status, body = await post(server, path, user.token, data=b"{not json")
        assert (status, body["error"]["code"]) == (400, "invalid_json")
        status, _ = await post(server, path, "not-a-token",
                               json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
        assert status == 401
        await still_open(ws)  # nothing was revoked

    assert await stored_hash(server, user.user_id) == before
    assert (await me(server, user.token))[0] == 200
    assert (await login(server, user.username, PASSWORD))[0] == 200
    assert (await login(server, user.username, NEW_PASSWORD))[0] == 401


async def test_a_password_change_revokes_old_tokens_and_returns_a_working_one(
    make_server: Callable[..., Any],
) -> None:
    server = await secure_server(make_server)
    user, bystander = await register(server), await register(server)
    status, second = await login(server, user.username, PASSWORD)
    assert status == 200
    other_device = second["access_token"]
    before = await stored_hash(server, user.user_id)

    async with websockets.connect(server.ws_url, additional_headers={
        "Authorization": f"Bearer {other_device}"}, open_timeout=10
    ) as device, bystander.connect() as theirs:
        await until_ready(device)
        await until_ready(theirs)
        status, body = await post(server, "/api/auth/password", user.token,
                                  json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
        assert status == 200, body
        assert set(body) == {"access_token", "token_type", "expires_in"}
        assert body["token_type"] == "bearer"
        assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
        assert await closed_with(device) == CLOSE_UNAUTHORIZED
        await still_open(theirs)

    fresh = body["access_token"]
    assert claims_of(server, fresh)["ver"] == claims_of(server, user.token)["ver"] + 1
    for old in (user.token, other_device):
        assert (await me(server, old))[0] == 401
        assert await socket_answer(server, old) == CLOSE_UNAUTHORIZED
    assert await me(server, fresh) == (200, {"user_id": user.user_id, "username": user.username})
    assert await socket_answer(server, fresh) == "ready"
    assert await socket_answer(server, fresh, first_frame=True) == "ready"

    assert (await login(server, user.username, PASSWORD))[0] == 401
    status, again = await login(server, user.username, NEW_PASSWORD)
    assert status == 200 and (await me(server, again["access_token"]))[0] == 200
    after = await stored_hash(server, user.user_id)
    assert after != before and after.startswith("$argon2id$")
    assert (await me(server, bystander.token))[0] == 200
    # The old password no longer changes anything either.
    status, _ = await post(server, "/api/auth/password", fresh,
                           json={"current_password": PASSWORD, "new_password": "yet another one 7"})
    assert status == 401
