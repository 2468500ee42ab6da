"""The TCP fault proxy over real loopback sockets: HTTP to a simulated region through it, latency, partitions
(blackhole and reset), faults that clear themselves, bytes intact both ways, bounds, and a clean stop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from chaos.loopback import free_port
from chaos.simregion import SimRegion
from chaos.tcpproxy import CHUNK, FaultKind, PartitionMode, TcpFault, TcpFaultProxy

HOST = "127.0.0.1"


@pytest.fixture
async def proxy(sim: SimRegion) -> AsyncIterator[TcpFaultProxy]:
    async with TcpFaultProxy(sim.host, sim.port, HOST, free_port()) as started:
        yield started


def url(proxy: TcpFaultProxy, path: str = "/v1/models") -> str:
    return f"http://{HOST}:{proxy.port}{path}"


async def get_models(session: aiohttp.ClientSession, proxy: TcpFaultProxy, within: float = 5) -> list[str]:
    async with asyncio.timeout(within), session.get(url(proxy)) as resp:
        assert resp.status == 200
        return [m["id"] for m in (await resp.json())["data"]]


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a new connection for every request: what a partition does to new connections."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def test_http_through_the_proxy_reaches_the_region(
    proxy: TcpFaultProxy, session: aiohttp.ClientSession
) -> None:
    assert await get_models(session, proxy) == ["demo-llm"]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    async with session.post(url(proxy, "/v1/chat/completions"), json=chat) as resp:
        body = await resp.read()
    assert body.endswith(b"data: [DONE]\n\n")
    stats = proxy.stats()
    assert (stats.accepted, stats.connections, stats.dropped) == (1, 1, 0)  # one keep-alive connection
    assert stats.bytes_up > 100 and stats.bytes_down > len(body)


async def timed_get(session: aiohttp.ClientSession, proxy: TcpFaultProxy) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await get_models(session, proxy)
    return loop.time() - start


async def test_latency_delays_each_direction(proxy: TcpFaultProxy, session: aiohttp.ClientSession) -> None:
    await get_models(session, proxy)  # the connection is open: what follows is one round trip
    proxy.set_fault("latency", latency=0.3)
    # Request and answer are each held 0.3 s; the upper bound only proves the request did finish.
    assert 0.59 <= await timed_get(session, proxy) < 3
    proxy.clear()
    assert await timed_get(session, proxy) < 0.3


async def test_blackhole_hangs_open_and_new_connections_until_cleared(
    proxy: TcpFaultProxy, session: aiohttp.ClientSession, fresh: aiohttp.ClientSession
) -> None:
    await get_models(session, proxy)  # leaves an open keep-alive connection
    proxy.set_fault("partition", mode="blackhole")
    for client in (session, fresh):
        with pytest.raises(TimeoutError):
            await get_models(client, proxy, within=0.3)
    assert proxy.stats().dropped == 0  # held, not cut
    proxy.clear()
    assert await get_models(fresh, proxy) == ["demo-llm"]


async def test_held_bytes_flow_when_a_blackhole_heals(
    proxy: TcpFaultProxy, fresh: aiohttp.ClientSession
) -> None:
    proxy.set_fault("partition", ttl=0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await get_models(fresh, proxy) == ["demo-llm"]
    assert loop.time() - start >= 0.29
    assert proxy.fault == TcpFault()


async def test_reset_fails_open_and_new_connections_fast(
    proxy: TcpFaultProxy, session: aiohttp.ClientSession, fresh: aiohttp.ClientSession
) -> None:
    await get_models(session, proxy)
    proxy.set_fault("partition", mode="reset")
    assert proxy.stats().connections == 0
    for client in (session, fresh):
        # Well before any client timeout: a reset is an answer, unlike a blackhole.
        with pytest.raises(aiohttp.ClientConnectionError):
            await get_models(client, proxy, within=2)
    assert proxy.stats().dropped >= 2


@pytest.mark.parametrize("mode", list(PartitionMode))
async def test_a_partition_with_a_ttl_clears_itself(
    proxy: TcpFaultProxy, fresh: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, mode: PartitionMode
) -> None:
    caplog.set_level("INFO", logger="chaos.tcpproxy")
    proxy.set_fault(FaultKind.PARTITION, mode=mode, ttl=0.3)
    with pytest.raises((TimeoutError, aiohttp.ClientConnectionError)):
        await get_models(fresh, proxy, within=0.1)
    await asyncio.sleep(0.4)
    assert proxy.fault == TcpFault()
    assert await get_models(fresh, proxy) == ["demo-llm"]
    assert any("expired" in record.getMessage() for record in caplog.records)


async def test_the_next_fault_replaces_the_ttl(proxy: TcpFaultProxy, session: aiohttp.ClientSession) -> None:
    proxy.set_fault("latency", latency=0.05, ttl=0.2)
    proxy.set_fault("partition", mode="reset")
    await asyncio.sleep(0.3)  # past the first fault's ttl: its timer must not clear the partition
    assert proxy.fault == TcpFault(FaultKind.PARTITION, mode=PartitionMode.RESET)


async def ends(reader: asyncio.StreamReader, within: float = 2) -> bool:
    """Whether the peer closes or resets the connection within `within` seconds (data before that skipped)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(CHUNK):
                pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(CHUNK):
        writer.write(chunk)
        await writer.drain()
    writer.close()


@pytest.mark.parametrize("latency", [0.0, 0.05])
async def test_five_megabytes_both_ways_arrive_intact_and_in_order(latency: float) -> None:
    server = await asyncio.start_server(echo, HOST, 0)
    data = os.urandom(5 * 1024 * 1024)
    try:
        async with TcpFaultProxy(HOST, server.sockets[0].getsockname()[1], HOST, free_port()) as proxy:
            if latency:
                proxy.set_fault("latency", latency=latency)
            reader, writer = await asyncio.open_connection(HOST, proxy.port)

            async def send() -> None:
                for offset in range(0, len(data), 100_000):  # not aligned with the proxy's chunks
                    writer.write(data[offset : offset + 100_000])
                    await writer.drain()
                writer.write_eof()

            async with asyncio.timeout(30):
                _, received = await asyncio.gather(send(), reader.read())
            writer.close()
            await writer.wait_closed()
            assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
            stats = proxy.stats()
            assert stats.bytes_up == stats.bytes_down == len(data)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_client_that_stops_reading_stops_the_upstream() -> None:
    block = os.urandom(1024 * 1024)
    sent = 0

    async def send_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        try:
            while sent < 512 * len(block):
                writer.write(block)
                await writer.drain()
                sent += len(block)
        finally:
            writer.close()

    server = await asyncio.start_server(send_forever, HOST, 0)
    try:
        async with TcpFaultProxy(HOST, server.sockets[0].getsockname()[1], HOST, free_port()) as proxy:
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            await reader.readexactly(len(block))
            # The client reads nothing more: the upstream must stall, not finish its 512 MB.
            seen = [-1]
            for _ in range(50):
                if seen[-3:] == [sent] * 3 or sent == 512 * len(block):
                    break
                seen.append(sent)
                await asyncio.sleep(0.2)
            # Stalled at what the kernel's socket buffers hold (about 10 MB here) and the proxy's one MiB.
            assert sent < 64 * len(block)
            assert proxy.stats().bytes_down < 64 * len(block)
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_longest_idle_connection_makes_room(sim: SimRegion) -> None:
    async with TcpFaultProxy(sim.host, sim.port, HOST, free_port(), max_connections=2) as proxy:
        connections = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            connections.append((reader, writer))
        try:
            assert await ends(connections[0][0])
            assert not await ends(connections[2][0], within=0.2)
            assert proxy.stats().connections == 2
            assert proxy.stats().dropped == 1
        finally:
            for _, writer in connections:
                writer.close()


async def test_an_unreachable_upstream_resets_the_client_fast() -> None:
    async with TcpFaultProxy(HOST, free_port(), HOST, free_port()) as proxy:  # nothing listens upstream
        reader, writer = await asyncio.open_connection(HOST, proxy.port)
        try:
            assert await ends(reader)
        finally:
            writer.close()
        assert proxy.stats().dropped == 1


async def test_an_upstream_that_never_answers_the_handshake_times_out() -> None:
    # A listener that never accepts: once its backlog is full, Linux drops further SYNs without an answer.
    silent = socket.create_server((HOST, 0), backlog=0)
    fillers = []
    try:
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(silent.getsockname())
            fillers.append(filler)
        async with TcpFaultProxy(
            HOST, silent.getsockname()[1], HOST, free_port(), connect_timeout=0.3
        ) as proxy:
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            try:
                assert await ends(reader, within=3)
            finally:
                writer.close()
            assert proxy.stats().dropped == 1
    finally:
        for sock in [*fillers, silent]:
            sock.close()


async def test_stop_closes_every_connection_and_leaves_no_task(proxy: TcpFaultProxy, sim: SimRegion) -> None:
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    proxy.set_fault("partition", mode="blackhole", ttl=60)
    held_reader, held_writer = await asyncio.open_connection(HOST, proxy.port)
    await asyncio.sleep(0.05)
    assert proxy.stats().connections == 2
    try:
        async with asyncio.timeout(5):
            await proxy.stop()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("tcpproxy")]
        assert await ends(reader) and await ends(held_reader)
        with pytest.raises(OSError):
            await asyncio.open_connection(HOST, proxy.port)
    finally:
        writer.close()
        held_writer.close()


def test_only_a_loopback_listener_and_sane_faults() -> None:
    with pytest.raises(ValueError, match="host must be a loopback address"):
        TcpFaultProxy(HOST, 80, "0.0.0.0")
    for kwargs, message in (
        ({"kind": "melt"}, "kind: must be one of ['clear', 'latency', 'partition']"),
        ({"kind": "partition", "mode": "drop"}, "mode: must be one of ['blackhole', 'reset']"),
        ({"kind": "latency"}, "latency: must be more than 0 and at most 60 seconds"),
        ({"kind": "latency", "latency": 61}, "latency: must be more than 0"),
        ({"kind": "partition", "latency": 1}, "latency: only a latency fault has one"),
        ({"kind": "partition", "ttl": 0}, "ttl: must be more than 0 and at most 3600"),
        ({"kind": "partition", "ttl": 3601}, "ttl: must be more than 0"),
        ({"kind": "clear", "ttl": 5}, "on a fault to clear"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            TcpFault.of(**kwargs)
