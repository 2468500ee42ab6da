"""Benchmark of the embedded DNS server: UDP queries/second on loopback, and answer()'s cost per query."""

# Run as a module from the project root: `python -m bench.dns_server`.

from __future__ import annotations

import asyncio
import multiprocessing
import random
import socket
import timeit
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import dns.asyncbackend
import dns.asyncquery
import dns.edns
import dns.message
import yaml

from controlplane.changes import diff
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import PermanentProviderError
from controlplane.providers.localdns import LocalDnsProvider, answer

HOST = "127.0.0.1"
NAME = "chat.llm.internal"
SECONDS_PER_RUN = 4.0  # two runs: the whole benchmark stays near ten seconds
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
    for _ in range(10):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            data["providers"]["localdns"].update(listen=HOST, port=probe.getsockname()[1])
        provider = LocalDnsProvider(Policy.model_validate(data))
        try:
            await provider.start()
        except PermanentProviderError:
            continue  # the port was free for UDP but not TCP, or taken in between: try another
        await provider.apply(diff(provider.name, provider.render(PLAN), await provider.current()))
        return provider
    raise RuntimeError("no free loopback port for the DNS server")


async def client(port: int, deadline: float) -> int:
    """Queries answered by one client sending one at a time over a reused socket until `deadline`."""
    backend = dns.asyncbackend.get_backend("asyncio")
    # One socket for all of a client's queries: a socket per query would make the client the bottleneck.
    sock = await backend.make_socket(  # type: ignore[no-untyped-call]  # dnspython leaves it untyped
        socket.AF_INET, socket.SOCK_DGRAM, 0, (HOST, 0)
    )
    loop = asyncio.get_running_loop()
    answered = 0
    try:
        while loop.time() < deadline:
            query = dns.message.make_query(NAME, "A")
            await dns.asyncquery.udp(query, HOST, port=port, sock=sock, timeout=1.0)
            answered += 1
    finally:
        await sock.close()
    return answered


def run_clients(port: int, clients: int) -> float:
    """Queries/second that `clients` concurrent clients get answered; runs in its own process."""

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        counts = await asyncio.gather(*(client(port, start + SECONDS_PER_RUN) for _ in range(clients)))
        return sum(counts) / (loop.time() - start)

    return asyncio.run(run())


def microseconds(run: Callable[[], object], number: int = 20_000) -> float:
    return timeit.timeit(run, number=number) / number * 1e6


async def main(policy_data: dict[str, Any]) -> None:
    server = await start_server(policy_data)
    try:
        port = server.address[1]
        # Clients in another process, so the figure is the server's and not the client's share of one core.
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            for clients in (1, 16):
                qps = await asyncio.get_running_loop().run_in_executor(pool, run_clients, port, clients)
                print(f"udp loopback, {clients:2d} client(s): {qps:9,.0f} queries/s")
    finally:
        await server.close()
    table, rng = server.table, random.Random(0)
    plain = dns.message.make_query(NAME, "A")
    subnet = dns.message.make_query(NAME, "A", use_edns=0, options=[dns.edns.ECSOption("127.0.1.0", 24)])
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
    asyncio.run(main(yaml.safe_load(Path("policies/demo.yaml").read_text(encoding="utf-8"))))
