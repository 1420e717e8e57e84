"""The credentials and the HTTP login that turns them into the token the socket is opened with.

Kept apart from the socket so that the messages for an unreachable server are written once, here,
and read the same whether the login or a later reconnect could not get through.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from typing import Any

import aiohttp

from entrypoints.chat_client.inbox import Fatal

HTTP_TIMEOUT_S = 15.0


def read_password(user: str) -> str:
    # The variable is for scripts; a person types the password unseen (getpass turns echo off).
    password = os.environ.get("GOLDENPATH_PASSWORD")
    if password is not None:
        return password
    try:
        return getpass.getpass(f"Password for {user}: ")
    except EOFError:
        raise Fatal("login failed: no password given (type it, or set GOLDENPATH_PASSWORD)") from None


async def log_in(http: aiohttp.ClientSession, base_url: str, user: str, password: str) -> str:
    try:
        async with http.post(f"{base_url}/api/auth/login", json={"username": user, "password": password},
                             timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as response:
            status = response.status
            body = await _json_or_none(response)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Fatal(unreachable(base_url, exc)) from None
    if status == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
        return body["access_token"]
    raise Fatal(f"login failed: {_error_message(status, body)}")


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    try:
        return json.loads(await response.text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _error_message(status: int, body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return f"the server answered HTTP {status} (is this a goldenpath server?)"


def unreachable(base_url: str, exc: BaseException) -> str:
    cause = getattr(exc, "os_error", None) or exc
    if isinstance(cause, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(cause, socket.gaierror):
        why = "unknown host"
    elif isinstance(exc, TimeoutError):
        why = f"no answer within {HTTP_TIMEOUT_S:g} s"
    else:
        why = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    return f"cannot reach {base_url}: {why}"
