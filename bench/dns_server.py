"""Benchmark of the embedded DNS server: UDP queries/second on loopback, answer()'s cost per query, and the
share of legitimate queries answered correctly while a flood of heavy packets runs."""

# Run as a module from the project root: `python -m bench.dns_server`.

from __future__ import annotations

import asyncio
import multiprocessing
import random
import socket
import time
import timeit
from collections.abc import Callable, Collection
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from functools import partial
from typing import Any

import dns.asyncbackend
import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rcode
import yaml

from chaos.hostile import heavy_queries, watched_loop
from chaos.loopback import DEMO_POLICY, SERVICE_NAME, free_port
from controlplane.changes import diff
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.localdns import LocalDnsProvider, answer

HOST = "127.0.0.1"
SECONDS_PER_RUN = 4.0  # two plain runs and two flood runs: the whole benchmark stays near half a minute
FLOOD_RATES = (5.0, 200.0)  # heavy packets a second: a trickle from one sender, and much more
FLOOD_CLIENTS = 4
QUERY_TIMEOUT = 1.0  # a legitimate query not answered within this counts as lost
PLAN = RoutingPlan(
    0.0,
    (
        GroupPlan(
            "chat",
            "global",
            GroupMode.NORMAL,
            tuple(
                RouteWeight(r, w, "bench") for r, w in {"us-east": 40, "us-west": 30, "eu-west": 30}.items()
            ),
        ),
        GroupPlan("chat", "eu", GroupMode.NORMAL, (RouteWeight("eu-west", 100, "bench"),)),
    ),
)


async def start_server(data: dict[str, Any]) -> LocalDnsProvider:
    """The server of policy `data` on a free loopback port (the demo itself may hold 5353)."""
    data["providers"]["localdns"].update(listen=HOST, port=free_port())
    provider = LocalDnsProvider(Policy.model_validate(data))
    await provider.start()
    await provider.apply(diff(provider.name, provider.render(PLAN), await provider.current()))
    return provider


async def client(port: int, deadline: float, expected: Collection[str]) -> tuple[int, int]:
    """(queries sent, answered correctly) by one client asking one at a time over one socket until
    `deadline`; correct is one address of `expected`."""
    backend = dns.asyncbackend.get_backend("asyncio")
    # One socket for all of a client's queries: a socket per query would make the client the bottleneck.
    sock = await backend.make_socket(  # type: ignore[no-untyped-call]  # dnspython leaves it untyped
        socket.AF_INET, socket.SOCK_DGRAM, 0, (HOST, 0)
    )
    loop = asyncio.get_running_loop()
    sent = correct = 0
    try:
        while loop.time() < deadline:
            query = dns.message.make_query(SERVICE_NAME, "A")
            sent += 1
            try:
                response = await dns.asyncquery.udp(query, HOST, port=port, sock=sock, timeout=QUERY_TIMEOUT)
            except dns.exception.DNSException:
                continue  # lost, late, or a late reply to an earlier query: not answered correctly
            addresses = [rdata.to_text() for rrset in response.answer for rdata in rrset]
            correct += (
                response.rcode() == dns.rcode.NOERROR and len(addresses) == 1 and addresses[0] in expected
            )
    finally:
        await sock.close()
    return sent, correct


def run_clients(port: int, clients: int, expected: Collection[str]) -> tuple[float, float]:
    """(correct answers/s, share of queries answered correctly) of `clients` concurrent clients over
    SECONDS_PER_RUN; runs in its own process."""

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        counts = await asyncio.gather(
            *(client(port, start + SECONDS_PER_RUN, expected) for _ in range(clients))
        )
        sent, correct = (sum(column) for column in zip(*counts, strict=True))
        return correct / (loop.time() - start), correct / sent

    return asyncio.run(run())


def flood(port: int, rate: float) -> int:
    """Sends heavy_queries() in turn at `rate` a second for SECONDS_PER_RUN; runs in its own process and
    returns how many it sent."""
    packets = heavy_queries()
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        while (now := time.monotonic()) < start + SECONDS_PER_RUN:
            due = start + sent / rate
            if now < due:
                time.sleep(due - now)
                continue
            sock.sendto(packets[sent % len(packets)], (HOST, port))
            sent += 1
    return sent


def microseconds(run: Callable[[], object]) -> float:
    number, seconds = timeit.Timer(run).autorange()
    return seconds / number * 1e6


def parse(wire: bytes) -> None:
    with suppress(dns.exception.DNSException):
        dns.message.from_wire(wire)


async def main(policy_data: dict[str, Any]) -> None:
    server = await start_server(policy_data)
    try:
        port = server.address[1]
        expected = {r.target for r in await server.current() if r.group == "global" and r.weight > 0}
        loop = asyncio.get_running_loop()
        # Clients and flood in other processes, so the figures are the server's and not the client's
        # share of one core.
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            for clients in (1, 16):
                qps, _ = await loop.run_in_executor(pool, run_clients, port, clients, expected)
                print(f"udp loopback, {clients:2d} client(s): {qps:9,.0f} queries/s")
            for rate in FLOOD_RATES:
                async with watched_loop() as monitor:
                    sent, (qps, share) = await asyncio.gather(
                        loop.run_in_executor(pool, flood, port, rate),
                        loop.run_in_executor(pool, run_clients, port, FLOOD_CLIENTS, expected),
                    )
                print(
                    f"flood of {sent / SECONDS_PER_RUN:3.0f} heavy packets/s ({sent} of 64 KB), "
                    f"{FLOOD_CLIENTS} clients: {qps:7,.0f} queries/s, {share:7.2%} answered correctly, "
                    f"loop late by {monitor.max_lag * 1e3:5.1f} ms at most"
                )
    finally:
        await server.close()
    for kind, packet in zip(("records", "options"), heavy_queries(), strict=True):
        handled = microseconds(partial(server._handle, packet, HOST))
        parsed = microseconds(partial(parse, packet))
        print(
            f"one 64 KB query of many {kind}: the server is done with it in {handled:8.1f} us; "
            f"dns.message.from_wire alone takes {parsed / 1e3:6.1f} ms"
        )
    table, rng = server.table, random.Random(0)
    plain = dns.message.make_query(SERVICE_NAME, "A")
    subnet = dns.message.make_query(
        SERVICE_NAME, "A", use_edns=0, options=[dns.edns.ECSOption("127.0.1.0", 24)]
    )
    wire = plain.to_wire()
    print(
        f"answer(), by source address:   {microseconds(lambda: answer(plain, HOST, table, rng)):6.1f} us/query"
    )
    print(
        f"answer(), by client subnet:    {microseconds(lambda: answer(subnet, HOST, table, rng)):6.1f} us/query"
    )
    full = microseconds(lambda: answer(dns.message.from_wire(wire), HOST, table, rng).to_wire())
    print(f"parse + answer() + encode:     {full:6.1f} us/query")


if __name__ == "__main__":
    asyncio.run(main(yaml.safe_load(DEMO_POLICY.read_text(encoding="utf-8"))))
