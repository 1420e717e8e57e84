"""The database goes away under a running server: clients get server_not_ready, nothing hangs, it recovers."""

from __future__ import annotations

import json

from tests.e2e.client import Server, chat, recv, register, until_ready
from tests.e2e.processes import POSTGRES_HOST, POSTGRES_PORT, GatedProxy, fresh_postgres_database


async def test_a_database_outage_answers_server_not_ready_and_the_server_recovers(make_server) -> None:
    async with fresh_postgres_database() as name:
        proxy = GatedProxy(POSTGRES_HOST, POSTGRES_PORT)
        try:
            port = await proxy.start()
            proxy.open()
            server: Server = await make_server(
                database={"url": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}"})
            user = await register(server)
            async with user.connect() as ws:
                await until_ready(ws)
                _, events = await chat(ws, "What is 17 * 23?")
                assert events[-1]["type"] == "agent_completed"

                proxy.cut()  # PostgreSQL is gone: connections drop, new ones are refused
                await ws.send(json.dumps({"type": "chat", "message": "What is 2 + 2?",
                                          "client_message_id": "during-outage"}))
                frame = await recv(ws)
                assert frame["type"] == "error" and frame["code"] == "server_not_ready", frame
                assert frame["client_message_id"] == "during-outage"
                status, body = await user.http("GET", "/api/threads")
                assert status == 503 and body["error"]["code"] == "server_not_ready"

                proxy.open()  # back: the same message again (same client_message_id) now runs
                _, events = await chat(ws, "What is 2 + 2?", client_message_id="during-outage")
                assert events[-1]["type"] == "agent_completed" and "4" in events[-1]["data"]["text"]
                status, threads = await user.http("GET", "/api/threads")
                assert status == 200 and len(threads["threads"]) == 2
        finally:
            await proxy.close()
