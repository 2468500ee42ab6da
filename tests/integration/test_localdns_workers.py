"""The embedded DNS server in worker processes: killed, stopped and flooded, and the plane's loop beside it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import suppress

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from chaos.hostile import watched_loop
from chaos.loopback import free_port
from controlplane.providers import localdns_pool
from controlplane.providers.localdns import LocalDnsProvider
from tests.builders import DEMO_ADDRESS, converge, demo_policy, plan
from tests.conftest import until
from tests.integration.dns_helpers import HOST, PLAN, WAIT, address

GLOBAL = {DEMO_ADDRESS[r] for r in ("us-east", "us-west", "eu-west")}  # PLAN's global regions, weight > 0
# Sends the same query as fast as one process can for argv[2] seconds, taking what replies come back, and
# prints how many it got.
FLOOD = """
import os, socket, sys, time
os.nice(10)  # traffic from elsewhere: it must not compete with the plane for this test machine's CPU
import dns.message
port, seconds = int(sys.argv[1]), float(sys.argv[2])
wire = dns.message.make_query("chat.llm.internal", "A").to_wire()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect(("127.0.0.1", port))
sock.setblocking(False)
replies, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(16):
        try:
            sock.send(wire)
        except BlockingIOError:
            break
    while True:
        try:
            sock.recv(512)
        except BlockingIOError:
            break
        replies += 1
print(replies)
"""


@pytest.fixture
async def server() -> AsyncIterator[LocalDnsProvider]:
    provider = LocalDnsProvider(demo_policy(localdns={"port": free_port()}), workers=2)
    async with provider:
        await converge(provider, PLAN)
        yield provider


async def ask(port: int, within: float = WAIT) -> dns.message.Message:
    query = dns.message.make_query("chat.llm.internal", "A")
    async with asyncio.timeout(within):
        return await dns.asyncquery.udp(query, HOST, port=port, timeout=within)


async def answered(port: int) -> int:
    """How many of 50 queries, one after another, get a correct answer."""
    return sum([address(await ask(port)) in GLOBAL for _ in range(50)])


async def test_a_killed_worker_is_restarted_and_answers_go_on(server: LocalDnsProvider) -> None:
    port = server.address[1]
    assert await answered(port) == 50
    await until(lambda: len(server.worker_pids) == 2 and server.stats.total() >= 50, what="both workers up")
    first, second = server.worker_pids
    os.kill(first, signal.SIGKILL)
    assert await answered(port) == 50  # the other worker takes every query meanwhile
    await until(lambda: server.restarts == 1 and len(server.worker_pids) == 2, what="a new worker")
    assert first not in server.worker_pids and second in server.worker_pids
    for pid in server.worker_pids:  # both at once: queries wait in the socket for the new workers
        os.kill(pid, signal.SIGKILL)
    assert await answered(port) == 50
    await until(lambda: server.restarts == 3, what="two more restarts")
    # Counts of workers gone are kept, up to their last report.
    assert server.stats[("chat.llm.internal", "global", "NOERROR")] >= 50


async def test_a_new_table_reaches_the_workers_before_apply_returns(server: LocalDnsProvider) -> None:
    await converge(server, plan({"global": {"us-west": 100}, "eu": {"eu-west": 100}}))
    port = server.address[1]
    assert {address(await ask(port)) for _ in range(50)} == {DEMO_ADDRESS["us-west"]}


async def test_a_stopped_worker_is_replaced_and_holds_back_no_answer(
    server: LocalDnsProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localdns_pool, "SETTLE_TIMEOUT", 0.5)
    port = server.address[1]
    stopped = server.worker_pids[0]
    os.kill(stopped, signal.SIGSTOP)
    try:
        # A stopped worker takes no table: apply gives up on it after SETTLE_TIMEOUT and replaces it.
        await converge(server, plan({"global": {"us-east": 100}, "eu": {"eu-west": 100}}))
        await until(
            lambda: stopped not in server.worker_pids and len(server.worker_pids) == 2, what="a new worker"
        )
        # No answer from the stale table, and none lost to the stopped worker's share of the socket.
        assert {address(await ask(port, within=1.0)) for _ in range(50)} == {DEMO_ADDRESS["us-east"]}
    finally:
        with suppress(ProcessLookupError):  # killed by then, as it should be
            os.kill(stopped, signal.SIGCONT)


async def flood(port: int, seconds: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOOD, str(port), str(seconds), stdout=asyncio.subprocess.PIPE
    )


async def test_a_flood_answered_by_a_worker_costs_the_plane_process_next_to_nothing() -> None:
    seconds = 3.0
    async with LocalDnsProvider(demo_policy(localdns={"port": free_port()}), workers=1) as provider:
        await converge(provider, PLAN)
        port = provider.address[1]
        await ask(port)
        async with watched_loop() as monitor:
            cpu = time.process_time()
            flooding = await flood(port, seconds)
            out, _ = await flooding.communicate()
            cpu = time.process_time() - cpu
        replies = int(out)
        await until(lambda: provider.stats.total() >= replies, what="the flood counted")
    assert replies > 1000, f"the flood got {replies} replies: no load"
    # Answered on this loop, the flood took most of a core (2-3 s of CPU time here); the probes' loop only
    # waits. Lag on a shared test machine is noise: only a stall would show.
    assert cpu < 0.2 * seconds, f"{cpu:.2f} s of CPU in the plane's process for {replies} answers"
    assert monitor.max_lag < 0.5
