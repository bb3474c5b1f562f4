"""The fault proxy itself, in front of a local echo server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import pytest

from tests.chaos.proxy import FaultProxy

pytestmark = pytest.mark.chaos


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def echo_proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with FaultProxy("127.0.0.1", port, seed=1) as proxy:
            yield proxy
    finally:
        server.close()
        await server.wait_closed()


async def _roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 20)
    finally:
        writer.close()


async def test_forwards_bytes_unchanged_both_ways() -> None:
    payload = os.urandom(1 << 20)
    async with echo_proxy() as proxy:
        assert await _roundtrip(proxy.port, payload) == payload
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


async def test_latency_delays_each_direction() -> None:
    async with echo_proxy() as proxy:
        proxy.set_latency(0.2, jitter=0.05)
        t0 = time.monotonic()
        assert await _roundtrip(proxy.port, b"ping") == b"ping"
        assert time.monotonic() - t0 >= 0.4  # 0.2 s up, 0.2 s down at least
        proxy.recover()
        payload = os.urandom(300_000)  # many chunks with jitter: order still kept
        proxy.set_latency(0.001, jitter=0.01)
        assert await _roundtrip(proxy.port, payload) == payload


async def test_bandwidth_cap_bounds_the_rate() -> None:
    size, rate = 60_000, 60_000.0
    async with echo_proxy() as proxy:
        proxy.set_bandwidth(rate)
        t0 = time.monotonic()
        assert await _roundtrip(proxy.port, b"x" * size) == b"x" * size
        assert time.monotonic() - t0 >= size / rate  # the sleeps alone add up to this


async def test_reset_mid_frame_cuts_and_sends_rst() -> None:
    async with echo_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        got = 0
        try:
            writer.write(b"a" * 10)
            await writer.drain()
            got += len(await asyncio.wait_for(reader.readexactly(10), 5))
            assert proxy.reset(mid_frame=True) == 1
            writer.write(b"b" * 1000)
            await writer.drain()
            with pytest.raises(ConnectionResetError):
                while True:
                    data = await asyncio.wait_for(reader.read(65536), 5)
                    if not data:
                        break  # a clean EOF would fail the raises above
                    got += len(data)
        finally:
            writer.close()
        assert got < 1010  # the frame was cut
        assert proxy.stats.resets == 1
        assert await _roundtrip(proxy.port, b"again") == b"again"  # new connections work


async def test_reset_without_traffic_fires_after_idle_reset() -> None:
    async with echo_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"x")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(1), 5)
            proxy.reset(mid_frame=True)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(10), 5 + proxy.idle_reset)
        finally:
            writer.close()


async def test_blackhole_holds_traffic_and_recover_delivers_it_in_order() -> None:
    async with echo_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            proxy.blackhole()
            payload = os.urandom(200_000)
            writer.write(payload)
            await asyncio.wait_for(writer.drain(), 5)  # the sender sees no trouble
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.5)
            # a connection made during the partition is accepted, then held too
            r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
            w2.write(b"late")
            await w2.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r2.read(1), 0.3)
            proxy.recover()
            assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
            assert await asyncio.wait_for(r2.readexactly(4), 10) == b"late"
            w2.close()
        finally:
            writer.close()


async def test_upstream_down_resets_the_client() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with FaultProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"x")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), 5)
        finally:
            writer.close()


async def test_refuse_resets_open_and_new_connections_until_recover() -> None:
    async with echo_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"up")
            assert await asyncio.wait_for(reader.readexactly(2), 10) == b"up"
            proxy.refuse()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), 5)
        finally:
            writer.close()
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)  # accepted, then reset
        try:
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r2.read(1), 5)
        finally:
            w2.close()
        assert proxy.stats.resets == 2
        proxy.recover()
        assert await _roundtrip(proxy.port, b"again") == b"again"
