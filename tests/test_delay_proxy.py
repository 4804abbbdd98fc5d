"""bench.delay_proxy: bytes arrive intact, each way late by the delay, without serialising.

Timings are checked only as lower bounds (the delay is applied) or as ratios between two
measurements of the same run (pipelined chunks are late by about what a lone chunk is late).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from bench.delay_proxy import DelayProxy

ONE_WAY_S = 0.05


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything until EOF, then close (so the client sees EOF come back)."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _through_proxy(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    body: Callable[[int], Awaitable[Any]],
) -> Any:
    """Run ``body(proxy_port)`` with a proxy in front of a server running ``handler``."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    target_port = server.sockets[0].getsockname()[1]
    proxy = DelayProxy("127.0.0.1", target_port, ONE_WAY_S)
    try:
        return await body(await proxy.start())
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


def test_bytes_arrive_intact_both_ways_and_eof_is_forwarded() -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def body(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send() -> None:
            for start in range(0, len(payload), 100_000):
                writer.write(payload[start : start + 100_000])
                await writer.drain()
            writer.write_eof()

        sending = asyncio.create_task(send())
        # Until the echo server's close comes back as EOF (bounded, so a lost EOF fails
        # instead of hanging; not a timing assertion).
        echoed = await asyncio.wait_for(reader.read(-1), 60)
        await sending
        writer.close()
        return echoed

    assert asyncio.run(_through_proxy(_echo, body)) == payload


def test_a_round_trip_takes_at_least_the_delay_each_way() -> None:
    async def body(port: int) -> list[float]:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        round_trips = []
        for _ in range(3):
            began = loop.time()
            writer.write(b"ping")
            await writer.drain()
            assert await reader.readexactly(4) == b"ping"
            round_trips.append(loop.time() - began)
        writer.close()
        return round_trips

    round_trips = asyncio.run(_through_proxy(_echo, body))
    assert min(round_trips) >= 2 * ONE_WAY_S


def test_chunks_sent_while_others_wait_are_not_held_back_by_them() -> None:
    """A lone message and a stream of messages 1/10 of the delay apart are equally late.

    A proxy that slept per chunk in its copy loop would hold every message that arrives
    during a sleep until the next one ends: those would be late by up to twice the delay.
    """
    record = struct.Struct("!Id")
    arrivals: dict[int, float] = {}

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                index, _sent = record.unpack(await reader.readexactly(record.size))
                arrivals[index] = loop.time()
        except asyncio.IncompleteReadError:
            writer.close()

    async def body(port: int) -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent: dict[int, float] = {}

        async def send(index: int) -> None:
            sent[index] = loop.time()
            writer.write(record.pack(index, sent[index]))
            await writer.drain()

        async def arrived(index: int) -> None:
            while index not in arrivals:
                await asyncio.sleep(0.001)

        for index in range(3):  # lone messages, one at a time
            await send(index)
            await arrived(index)
        for index in range(3, 33):  # a stream: 30 messages, a tenth of the delay apart
            await send(index)
            await asyncio.sleep(ONE_WAY_S / 10)
        await arrived(32)
        writer.close()
        late = {index: arrivals[index] - sent[index] for index in sent}
        return [late[i] for i in range(3)], [late[i] for i in range(3, 33)]

    lone, stream = asyncio.run(_through_proxy(sink, body))
    assert min(lone + stream) >= ONE_WAY_S
    assert statistics.median(stream) / statistics.median(lone) < 1.3
