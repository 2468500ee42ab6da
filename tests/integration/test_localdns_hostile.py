"""The embedded DNS server against hostile peers on loopback: packets costly to parse, packets no client
sends, connections held open or dripped, and a fault that makes every answer fail."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
from collections import Counter
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rrset
import pytest

from chaos.hostile import heavy_queries, watched_loop
from chaos.loopback import free_port
from controlplane.providers.localdns import MAX_QUERY_SIZE, LocalDnsProvider
from tests.builders import DEMO_ADDRESS, converge, demo_policy
from tests.conftest import until
from tests.integration.dns_helpers import HOST, PLAN, WAIT, RawUdp, address, tcp_exchange, until_hung_up

CAP = 16
GLOBAL = {DEMO_ADDRESS[r] for r in ("us-east", "us-west", "eu-west")}  # PLAN's global regions, weight > 0


@pytest.fixture(params=[0, 1], ids=["in-process", "worker"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[LocalDnsProvider]:
    # One worker: the connection cap is per worker.
    provider = LocalDnsProvider(
        demo_policy(localdns={"port": free_port()}),
        idle_timeout=30.0,
        query_timeout=0.5,
        max_connections=CAP,
        workers=request.param,
    )
    async with provider:
        await converge(provider, PLAN)
        yield provider


def ask() -> dns.message.Message:
    return dns.message.make_query("chat.llm.internal", "A")


def with_counts(wire: bytes, **counts: int) -> bytes:
    """`wire` with its header's section counts (qd, an, ns, ar) changed as given."""
    old = dict(zip(("qd", "an", "ns", "ar"), struct.unpack_from("!4H", wire, 4), strict=True))
    return wire[:4] + struct.pack("!4H", *(old | counts).values()) + wire[12:]


async def exchange_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: bytes) -> bytes:
    """One query on a connection already open."""
    async with asyncio.timeout(WAIT):
        writer.write(struct.pack("!H", len(wire)) + wire)
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(size)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_heavy_packets_neither_stall_the_loop_nor_crowd_out_queries(server: LocalDnsProvider) -> None:
    # 20 packets of 64 KB at 10/s, as server and client share this loop; parsed, each took 0.2-0.6 s.
    packets = heavy_queries()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=server.address)

    async def flood() -> None:
        for i in range(20):
            transport.sendto(packets[i % 2])
            await asyncio.sleep(0.1)

    sent = answered = 0
    try:
        async with watched_loop() as monitor:
            flooding = asyncio.create_task(flood())
            while not flooding.done():
                sent += 1
                try:
                    async with asyncio.timeout(1.0):
                        response = await dns.asyncquery.udp(ask(), HOST, port=server.address[1])
                except TimeoutError:
                    continue
                answered += address(response) in GLOBAL
            await flooding
    finally:
        transport.close()
    assert answered / sent >= 0.99, f"{answered} of {sent} legitimate queries answered"
    assert monitor.max_lag < 0.25
    await until(lambda: server.dropped == Counter(oversize=20), what="every heavy packet dropped")


async def test_packets_no_client_sends_are_dropped_unparsed_and_unanswered(server: LocalDnsProvider) -> None:
    wire = ask().to_wire()
    with_answer = ask()
    with_answer.answer.append(dns.rrset.from_text("chat.llm.internal.", 5, "IN", "A", "10.0.0.1"))
    refused = {
        "sections": [
            with_answer.to_wire(),
            with_counts(wire, qd=2),
            with_counts(wire, qd=0),
            with_counts(wire, ns=1),
            with_counts(wire, ar=2),
        ],
        "oversize": [wire + b"\0" * (MAX_QUERY_SIZE + 1 - len(wire))],
    }
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(RawUdp, remote_addr=server.address)
    try:
        for packet in (p for packets in refused.values() for p in packets):
            transport.sendto(packet)
        # Datagrams on loopback arrive in order: had any refused packet been answered, that reply came first.
        legitimate = ask()
        transport.sendto(legitimate.to_wire())
        async with asyncio.timeout(WAIT):
            first = dns.message.from_wire(await client.replies.get())
        assert first.id == legitimate.id and address(first) in GLOBAL
    finally:
        transport.close()
    dropped = Counter({reason: len(packets) for reason, packets in refused.items()})
    await until(lambda: server.dropped == dropped, what="the drops counted")  # workers report a moment later
    # Over TCP the handshake proves the source, so a query with the wrong sections is told FORMERR...
    (formerr,) = await tcp_exchange(server.address[1], [with_counts(wire, qd=2)])
    assert formerr[:2] == wire[:2] and formerr[3] & 0xF == dns.rcode.FORMERR
    # ...but one announcing more than MAX_QUERY_SIZE is not even read: the connection just ends.
    assert await until_hung_up(server.address[1], struct.pack("!H", 60_000)) == b""
    await until(lambda: server.dropped["oversize"] == 2, what="the drop counted")


async def test_connections_beyond_the_cap_close_the_one_idle_longest(
    server: LocalDnsProvider, caplog: pytest.LogCaptureFixture
) -> None:
    before = open_descriptors()
    held = [await asyncio.open_connection(*server.address) for _ in range(100)]
    try:
        async with asyncio.timeout(WAIT):
            response = await dns.asyncquery.tcp(ask(), HOST, port=server.address[1])
        assert address(response) in GLOBAL
        # 100 client sockets held here, and on the server's side no more than the cap.
        await until(lambda: open_descriptors() <= before + 100 + CAP, what="server sockets to stay capped")
        assert server.connections <= CAP
        reply = await exchange_on(*held[-1], ask().to_wire())  # the newest is still served
        assert address(dns.message.from_wire(reply)) in GLOBAL
        async with asyncio.timeout(WAIT):
            assert await held[0][0].read() == b""  # the oldest was closed
    finally:
        for _, writer in held:
            writer.close()
    await until(lambda: server.dropped["evicted"] == 101 - CAP, what="the evictions counted")
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1  # not one per connection


async def test_a_query_dripped_slowly_is_cut_off(server: LocalDnsProvider) -> None:
    # Ten bytes of a 40-byte query, then nothing: the idle timeout is 30 s, so the query timeout ends it.
    assert await until_hung_up(server.address[1], struct.pack("!H", 40) + b"\0" * 10) == b""
    await until(lambda: server.dropped["slow"] == 1, what="the cut counted")


class FailingRandom(random.Random):
    def random(self) -> float:
        raise RuntimeError("a fault in answering")


async def test_a_failure_in_every_answer_is_logged_once_not_per_packet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = demo_policy(localdns={"port": free_port()})
    async with LocalDnsProvider(policy, rng=FailingRandom()) as provider:
        await converge(provider, PLAN)
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_datagram_endpoint(RawUdp, remote_addr=provider.address)
        try:
            for _ in range(50):
                transport.sendto(ask().to_wire())
            async with asyncio.timeout(WAIT):
                replies = [await client.replies.get() for _ in range(50)]
        finally:
            transport.close()
    assert {reply[3] & 0xF for reply in replies} == {dns.rcode.SERVFAIL}
    assert provider.stats[("-", "-", "SERVFAIL")] == 50
    logged = [r for r in caplog.records if r.name == "controlplane.providers.localdns"]
    assert len(logged) == 1 and logged[0].exc_info is not None
