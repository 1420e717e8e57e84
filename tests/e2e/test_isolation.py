"""Isolation: 200 users at once, each with a private note; nothing of one reaches another."""

from __future__ import annotations

import asyncio
import json
import secrets

import websockets

from entrypoints.appkeys import services
from tests.e2e.client import Server, recv, register
from tests.helpers import eventually

USERS = 200


async def one_user(server: Server, index: int, start: asyncio.Event) -> dict:
    user = await register(server, f"iso_{index:03d}_{secrets.token_hex(2)}")
    secret = f"{secrets.randbelow(9000) + 1000}-{secrets.token_hex(3)}"
    frames: list[dict] = []
    run_ids: set[str] = set()
    async with websockets.connect(server.ws_url, additional_headers=user.auth,
                                  open_timeout=30) as ws:
        frames.append(await recv(ws, 30))
        await start.wait()
        answers = []
        for text in (f"Remember that my vault code is {secret}", "What is my vault code?"):
            await ws.send(json.dumps({"type": "chat", "message": text}))
            while True:
                frame = await recv(ws, 60)
                frames.append(frame)
                if frame["type"] == "ack":
                    run_ids.add(frame["run_id"])
                if frame["type"] in {"agent_completed", "agent_error", "agent_cancelled"}:
                    answers.append(frame)
                    break
    return {"user": user, "secret": secret, "frames": frames, "run_ids": run_ids,
            "answers": answers}


async def test_two_hundred_users_each_get_only_their_own(server: Server) -> None:
    start = asyncio.Event()
    tasks = [asyncio.create_task(one_user(server, i, start)) for i in range(USERS)]
    # Every user connected before anyone chats, so every run has 199 foreign sockets to leak to.
    await eventually(lambda: len(services(server.app).bridge.connections()) >= USERS
                     or any(t.done() for t in tasks), 60, what=f"{USERS} sockets connected", interval=0.05)
    start.set()
    results = await asyncio.gather(*tasks)

    secrets_by_user = {r["user"].user_id: r["secret"] for r in results}
    for result in results:
        user_id = result["user"].user_id
        recall = result["answers"][1]
        assert recall["type"] == "agent_completed", recall
        assert result["secret"] in recall["data"]["text"]
        assert result["frames"][0] == {"type": "ready", "user_id": user_id,
                                       "connection_id": result["frames"][0]["connection_id"]}
        wire = json.dumps(result["frames"])
        for other_id, other_secret in secrets_by_user.items():
            if other_id != user_id:
                assert other_secret not in wire, f"{other_id}'s note reached {user_id}"
        for frame in result["frames"][1:]:
            if "run_id" in frame:
                assert frame["run_id"] in result["run_ids"], f"foreign run on {user_id}'s socket"

    found = services(server.app)
    await eventually(lambda: found.factory.metrics().active == 0, what="every engine cleaned up")
    assert found.factory.metrics().created == USERS * 2
    assert found.runs.active == 0

