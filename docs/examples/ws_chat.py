"""Chat with goldenpath over a raw WebSocket: python ws_chat.py URL TOKEN "message"."""

import asyncio
import json
import sys

import aiohttp


async def main(url: str, token: str, message: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(
        url, headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        print(await ws.receive_json())  # {"type": "ready", ...}
        await ws.send_json({"type": "chat", "message": message})
        async for frame in ws:
            event = json.loads(frame.data)
            print(event["type"], json.dumps(event.get("data", event)))
            if event["type"] in ("agent_completed", "agent_error", "agent_cancelled"):
                break


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
