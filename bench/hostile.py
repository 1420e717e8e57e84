"""Hostile sockets, as their own process: never-reading, resume floods, garbage, one user at the socket cap.

`python -m bench.hostile --url URL --kind unread|resume|garbage|cap --sockets 20` runs until SIGTERM,
then prints one JSON line of what it saw. Used by bench/fairness.py and tests/e2e/test_fairness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import socket
import struct
import time
import uuid

import aiohttp

from bench.load import login_users, open_socket, session

KINDS = ("unread", "resume", "garbage", "cap")
SOCKETS_PER_USER = 5  # under the default cap of 8: the hostile users are within their limits
RESUME_HISTORY_RUNS = 20  # runs a resume flooder makes first, so that each resume replays ~200 events
CHAT_EVERY_S = 0.05  # a never-reading socket's chat pace (refusals are frames it does not read either)
TCP_CLOSE_STATES = {7, 8}  # TCP_CLOSE (reset or closed), TCP_CLOSE_WAIT (the server's FIN)


def _masked(text: str | bytes, opcode: int = 0x1) -> bytes:
    """One client frame (clients must mask)."""
    payload = text.encode() if isinstance(text, str) else text
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


async def _unread_socket(url: str, token: str, stop: asyncio.Event, seen: dict) -> None:
    """Handshake, then chats forever and never a read: the server's frames pile up in TCP buffers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"no upgrade: {head[:80]!r}")
    writer.transport.pause_reading()  # from here on nothing is read: the kernel's buffers fill
    sock = writer.get_extra_info("socket")
    opened = time.monotonic()
    try:
        while not stop.is_set():
            if _tcp_state(sock) in TCP_CLOSE_STATES:
                seen["closed_after_s"].append(round(time.monotonic() - opened, 2))
                return
            chat = {"type": "chat", "message": "What is 17 * 23?", "client_message_id": uuid.uuid4().hex}
            if writer.transport.get_write_buffer_size() < 1 << 16:
                writer.write(_masked(json.dumps(chat)))
                seen["frames"] += 1
            await asyncio.sleep(CHAT_EVERY_S)
        seen["open_at_end"] += 1
    finally:
        writer.transport.abort()


async def _drain(ws: aiohttp.ClientWebSocketResponse, seen: dict) -> None:
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            seen["received"] += 1
    seen["closes"].append(ws.close_code)


async def _close(ws: aiohttp.ClientWebSocketResponse, reader: asyncio.Task[None]) -> None:
    # A flooder does not wait for the server to work through what it already sent.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ws.close(), 1)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader


async def _resume_socket(s: aiohttp.ClientSession, url: str, token: str, stop: asyncio.Event,
                         seen: dict) -> None:
    """Resume from the start of the user's log, as fast as the server reads; every replay is read."""
    ws = await open_socket(s, url, token)
    reader = asyncio.create_task(_drain(ws, seen))
    try:
        while not stop.is_set() and not ws.closed:
            await ws.send_str('{"type":"resume","cursor":"0"}')
            seen["frames"] += 1
            await asyncio.sleep(0.005)
    finally:
        await _close(ws, reader)


def _garbage(i: int) -> str:
    match i % 3:
        case 0:
            return "{not json" * 7000  # ~63 KiB, just under the 64 KiB frame limit
        case 1:
            return json.dumps({"type": "nonsense", "n": i})
        case _:
            return json.dumps({"type": "chat", "message": "x" * 60000, "client_message_id": str(i)})


async def _garbage_socket(s: aiohttp.ClientSession, url: str, token: str, stop: asyncio.Event,
                          seen: dict) -> None:
    ws = await open_socket(s, url, token)
    reader = asyncio.create_task(_drain(ws, seen))
    i = 0
    try:
        while not stop.is_set() and not ws.closed:
            await ws.send_str(_garbage(i))
            seen["frames"] += 1
            i += 1
            await asyncio.sleep(0)
    finally:
        await _close(ws, reader)


async def _cap_socket(s: aiohttp.ClientSession, url: str, token: str, stop: asyncio.Event,
                      seen: dict) -> None:
    """One more socket than the cap allows, again and again."""
    while not stop.is_set():
        try:
            ws = await s.ws_connect(f"{url}/ws", headers={"Authorization": f"Bearer {token}"})
        except aiohttp.ClientError:
            seen["errors"] += 1
            continue
        async for _msg in ws:
            pass
        seen["frames"] += 1
        seen["closes"].append(ws.close_code)


async def _run(url: str, kind: str, sockets: int, stop: asyncio.Event) -> dict:
    seen: dict = {"kind": kind, "sockets": sockets, "frames": 0, "received": 0, "errors": 0,
                  "closes": [], "closed_after_s": [], "open_at_end": 0}
    users = 1 if kind == "cap" else math.ceil(sockets / SOCKETS_PER_USER)
    tokens = await login_users([url], users, f"hostile_{kind}_{uuid.uuid4().hex[:6]}_")
    async with session() as s:
        if kind == "resume":
            for token in tokens:  # history to replay
                ws = await open_socket(s, url, token)
                for _ in range(RESUME_HISTORY_RUNS):
                    await ws.send_str(json.dumps({"type": "chat", "message": "What is 17 * 23?"}))
                    async for msg in ws:
                        if json.loads(msg.data)["type"] in {"agent_completed", "agent_error"}:
                            break
                await ws.close()
        held = []
        if kind == "cap":  # the user holds every socket it may
            while True:
                ws = await open_socket(s, url, tokens[0])
                held.append(ws)
                if len(held) == 8:
                    break
        print(json.dumps({"ready": True}), flush=True)

        async def forever(i: int) -> None:
            token = tokens[0 if kind == "cap" else i // SOCKETS_PER_USER]
            while not stop.is_set():  # a hostile client comes back when it is closed
                try:
                    match kind:
                        case "unread":
                            await _unread_socket(url, token, stop, seen)
                        case "resume":
                            await _resume_socket(s, url, token, stop, seen)
                        case "garbage":
                            await _garbage_socket(s, url, token, stop, seen)
                        case "cap":
                            await _cap_socket(s, url, token, stop, seen)
                except (OSError, aiohttp.ClientError, RuntimeError, asyncio.IncompleteReadError):
                    seen["errors"] += 1
                    await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(forever(i)) for i in range(sockets)]
        await stop.wait()
        _, late = await asyncio.wait(tasks, timeout=3)  # a socket stuck in a handshake is given up
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ws in held:
            await ws.close()
    seen["closes"] = {str(code): seen["closes"].count(code) for code in set(seen["closes"])}
    return seen


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--sockets", type=int, default=20)
    args = parser.parse_args()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(asyncio.CancelledError):
        print(json.dumps(await _run(args.url, args.kind, args.sockets, stop)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
