"""A socket flooding tiny frames: the server parses only `ws_receive_queue_bytes` of them ahead.

The rest stays in TCP (the client is pushed back), not in the server's memory: with aiohttp's own
512 KiB a socket held ~3,300 parsed 31-byte frames, and a flood's memory stayed with the process.
"""

from __future__ import annotations

import asyncio

from entrypoints.appkeys import services
from tests.e2e.client import Server, register, until_ready
from tests.helpers import eventually

FRAME = '{"type":"resume","cursor":"0"}'
AIOHTTP_COUNTS_PER_FRAME = 128  # aiohttp counts each parsed frame as its size + this


async def test_a_flooding_socket_has_at_most_its_receive_queue_parsed(make_server) -> None:
    limit = 4 * 1024  # not the default: the setting is what reaches aiohttp
    # A budget that lets a few frames through and then puts the socket in debt for good.
    server: Server = await make_server(server={"ws_receive_queue_bytes": limit},
                                       security={"ws_user_bytes_per_s": 1024, "ws_user_bytes_burst": 65536,
                                                 "ws_frame_burst": 10, "ws_frames_per_s": 1})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        bridge = services(server.app).bridge
        connection = await eventually(lambda: next(iter(bridge.connections_of(user.user_id)), None),
                                      what="the server's side of the socket")
        reader = connection.ws._reader  # aiohttp's queue of parsed frames: what this test is about

        async def flood() -> None:  # until TCP pushes back (the server reads in its budget's pace)
            while True:
                await ws.send(FRAME)
                await asyncio.sleep(0)  # the server runs on this loop too

        flooding = asyncio.create_task(flood())
        try:
            await eventually(lambda: reader._protocol._reading_paused, what="the server to stop reading")
            most = limit // (len(FRAME) + AIOHTTP_COUNTS_PER_FRAME) + 1
            assert len(reader._buffer) <= most, f"{len(reader._buffer)} frames parsed ahead, {most} at most"
            assert reader._size <= limit + len(FRAME) + AIOHTTP_COUNTS_PER_FRAME
        finally:
            flooding.cancel()
            ws.transport.abort()  # a close handshake would wait for a server that reads no more

