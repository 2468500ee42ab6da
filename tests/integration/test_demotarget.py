"""The demo stack as a drill target, all real on loopback: simulated regions behind TCP fault proxies, the
daemon as a child process, file:// buckets. Each test breaks one part through the target and watches the
plane through the target's own `look`, the way the drill runner does."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from chaos.demotarget import DemoTarget
from chaos.drill import (
    BucketFault,
    DaemonFault,
    NetworkFault,
    NetworkMode,
    OverrideStep,
    ProviderFault,
    ProviderMode,
    RegionFault,
    RegionMode,
)
from chaos.target import Look, TargetError
from tests.conftest import require_binary, until

ALL = frozenset({"us-east", "us-west", "eu-west", "eu-central"})
EU = frozenset({"eu-west", "eu-central"})
WITHIN = 15.0  # generous: the demo's probes need about a second to fail a region over on an idle machine
TTL = 60.0


@pytest.fixture
async def target() -> AsyncIterator[DemoTarget]:
    started = DemoTarget()
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


def healthy(look: Look, region: str) -> bool:
    return look.health is not None and look.health.regions[region].state == "healthy"


def in_dns(look: Look, group: str) -> frozenset[str]:
    assert look.dns is not None, look.errors
    return look.dns.answers[group]


async def looks(target: DemoTarget, wanted: Any, what: str) -> Look:
    """The first look for which `wanted(look)` holds."""

    async def seen() -> Look | None:
        look = await target.look(0.0)
        return look if wanted(look) else None

    found = await until(seen, within=WITHIN, what=what)
    assert found is not None
    return found


async def direct(target: DemoTarget, region: str) -> int:
    """A client's request straight to the region (the address DNS answers), bypassing the plane's proxy."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"{target.region(region).endpoint}/v1/models") as reply,
    ):
        return reply.status


async def test_started_every_region_is_healthy_and_each_group_gets_all_it_may(target: DemoTarget) -> None:
    # DNS workers serve a new table a moment before the daemon records the plan as held: wait for both.
    look = await looks(
        target,
        lambda lk: in_dns(lk, "global") == ALL and len(lk.plans) == 1,
        "every region in global's answers",
    )
    assert look.errors == ()
    assert look.health is not None and set(look.health.regions) == ALL
    assert all(healthy(look, r) for r in ALL)
    assert in_dns(look, "eu") == EU  # by source address, never a US region
    (plan,) = look.plans
    assert plan.service == "chat" and set(plan.weights["global"]) == ALL
    # The plane probes each region through its proxy; DNS and clients get the region itself.
    clients = target.clients()
    for region in target.policy.regions:
        sim = target.region(region.name)
        assert urlsplit(region.endpoint).port == target.proxy(region.name).port != sim.port
        assert clients.targets[region.dns_address].url == sim.endpoint
    assert {(g.group, g.subnet is not None) for g in clients.groups} == {
        ("global", False),
        ("eu", False),
        ("eu", True),
    }
    assert target.daemon_pid not in (None, os.getpid())


async def test_a_region_down_leaves_health_and_dns_and_comes_back_on_clear(target: DemoTarget) -> None:
    fault = RegionFault(kind="region", region="us-east", mode=RegionMode.DOWN, duration=10)
    await target.inject(fault, TTL)
    expires = target.region("us-east").expires_in()
    assert expires is not None and 0 < expires <= TTL  # the region mends itself if the runner dies
    await looks(
        target,
        lambda lk: not healthy(lk, "us-east") and in_dns(lk, "global") == ALL - {"us-east"},
        "us-east unhealthy and out of global's answers",
    )
    await target.clear(fault)
    await looks(
        target,
        lambda lk: healthy(lk, "us-east") and in_dns(lk, "global") == ALL,
        "us-east back in health and in DNS",
    )


async def test_a_partition_cuts_the_plane_off_while_clients_still_reach_the_region(
    target: DemoTarget,
) -> None:
    fault = NetworkFault(kind="network", region="eu-west", mode=NetworkMode.PARTITION, duration=10)
    await target.inject(fault, TTL)
    look = await looks(
        target, lambda lk: not healthy(lk, "eu-west"), "eu-west unhealthy behind the partition"
    )
    assert in_dns(look, "eu") <= {"eu-central"}
    assert await direct(target, "eu-west") == 200
    await target.clear(fault)
    await looks(target, lambda lk: healthy(lk, "eu-west"), "eu-west healthy once the path heals")


async def test_a_killed_daemon_comes_back_with_its_override(target: DemoTarget) -> None:
    await target.override(OverrideStep(region="us-west", duration=120))
    await looks(
        target,
        lambda lk: ("us-west", "drain") in lk.overrides and "us-west" not in in_dns(lk, "global"),
        "us-west drained",
    )
    pid = target.daemon_pid
    assert pid is not None
    fault = DaemonFault(kind="daemon", restart_after=1.0)
    await target.inject(fault, TTL)
    down = await target.look(0.0)
    assert down.errors and down.health is None and down.dns is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # SIGKILLed and reaped, not merely asked to stop
    await target.clear(fault)  # waits for the restart and its /readyz
    assert target.daemon_pid not in (None, pid)
    look = await looks(target, lambda lk: not lk.errors and lk.dns is not None, "the restarted daemon")
    assert ("us-west", "drain") in look.overrides
    assert in_dns(look, "global") == ALL - {"us-west"}
    assert look.plans[0].weights["global"].get("us-west", 0) == 0


async def status(target: DemoTarget) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"{target.api}/status") as reply,
    ):
        body: dict[str, Any] = await reply.json()
        return body


async def test_a_bucket_taken_away_fails_the_sync_and_the_region_keeps_its_weight(
    target: DemoTarget,
) -> None:
    await looks(target, lambda lk: in_dns(lk, "eu") == EU, "both EU regions serving")
    fault = BucketFault(kind="bucket", region="eu-central", duration=10)
    await target.inject(fault, TTL)  # and a sync runs inside the fault

    async def failed() -> dict[str, Any] | None:
        model = (await status(target))["regions"]["eu-central"]["models"]["demo-llm"]
        return model if model["last_error"] else None

    model = await until(failed, within=WITHIN, what="eu-central's sync to fail")
    assert model["verified"], model  # the version verified before the fault is still the one it serves
    look = await target.look(0.0)
    assert look.plans[0].weights["eu"].get("eu-central", 0) > 0
    assert in_dns(look, "eu") == EU
    folder = Path(target.policy.regions[3].bucket_url.prefix)  # type: ignore[union-attr]
    assert await asyncio.to_thread(folder.is_file)
    await target.clear(fault)
    assert await asyncio.to_thread(lambda: any(folder.iterdir()))


async def test_route53_behind_the_fault_proxy_is_throttled_and_mended() -> None:
    require_binary("moto_server", "pip's moto[server], a dev dependency,")
    target = DemoTarget(with_route53=True)
    await target.start()
    try:
        provider = "route53:llm.internal"
        assert (await status(target))["providers"][provider]["consecutive_errors"] == 0
        throttled = ProviderFault(kind="provider", mode=ProviderMode.THROTTLED, duration=5)
        await target.inject(throttled, TTL)
        # Route 53 is written only when the plan changes: make it change.
        down = RegionFault(kind="region", region="us-east", mode=RegionMode.DOWN, duration=5)
        await target.inject(down, TTL)

        async def refused() -> bool:
            found = (await status(target))["providers"][provider]
            return bool(found["consecutive_errors"] and "Throttling" in (found["last_error"] or ""))

        await until(refused, within=WITHIN, what="Route 53's throttling in /status")
        await target.clear(throttled)

        async def mended() -> bool:
            return bool((await status(target))["providers"][provider]["consecutive_errors"] == 0)

        await until(mended, within=WITHIN, what="Route 53 written again")
    finally:
        await target.stop()


def listening(port: int, host: str) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def children() -> set[int]:
    pid = os.getpid()
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
            found |= {int(c) for c in f.read().split()}
    return found


async def test_stop_mends_and_leaves_no_process_and_no_port(tmp_path: Path) -> None:
    before = children()
    target = DemoTarget(state_dir=tmp_path / "state")
    await target.start()
    stopped = False
    try:
        ports = [(urlsplit(target.api).port or 0, "127.0.0.1"), (target.clients().dns[1], "127.0.0.1")]
        for region in target.policy.regions:
            sim = target.region(region.name)
            ports += [
                (sim.port, sim.host),
                (sim.control_port, sim.host),
                (target.proxy(region.name).port, sim.host),
            ]
        assert all(listening(port, host) for port, host in ports)
        assert children() - before  # the daemon
        bucket = Path(target.policy.regions[0].bucket_url.prefix)  # type: ignore[union-attr]
        await target.inject(BucketFault(kind="bucket", region="us-east", duration=5), TTL)
        await target.inject(
            NetworkFault(kind="network", region="us-west", mode=NetworkMode.PARTITION, duration=5), TTL
        )
        await target.stop()
        await target.stop()  # twice is fine
        stopped = True
        assert children() == before
        assert not any(listening(port, host) for port, host in ports)
        assert await asyncio.to_thread(bucket.is_dir)  # the state dir was the caller's: kept, and mended
    finally:
        if not stopped:
            await target.stop()
        for pid in children() - before:  # what a broken stop left: not the next test's problem
            os.kill(pid, signal.SIGKILL)


async def test_a_daemon_not_ready_in_time_fails_the_start_with_its_log_and_leaves_nothing() -> None:
    before = children()
    target = DemoTarget(start_timeout=0.05)  # no daemon probes four regions in 50 ms
    with pytest.raises(TargetError, match=r"(?s)timed out .* the daemon to be ready.*log"):
        await target.start()
    assert children() == before
    await target.stop()


RUNNER = """
import asyncio, sys
from pathlib import Path
from chaos.demotarget import DemoTarget

async def main() -> None:
    target = DemoTarget(state_dir=Path(sys.argv[1]))
    await target.start()
    print(target.daemon_pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie no one has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_a_runner_killed_outright_takes_its_daemon_with_it(tmp_path: Path) -> None:
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUNNER, str(tmp_path / "state"), stdout=asyncio.subprocess.PIPE
    )
    daemon: int | None = None
    try:
        assert runner.stdout is not None
        async with asyncio.timeout(60):
            daemon = int(await runner.stdout.readline())
        assert not gone(daemon)
        runner.kill()  # no stop(), no finally: what a runner killed by the OOM killer or kill -9 gets
        await runner.wait()
        await until(lambda: gone(daemon), within=WITHIN, what="the orphaned daemon to die")
    finally:
        if runner.returncode is None:
            runner.kill()
            await runner.wait()
        if daemon is not None and not gone(daemon):
            os.kill(daemon, signal.SIGKILL)


async def test_what_the_demo_cannot_do_is_said_before_anything_starts() -> None:
    target = DemoTarget()
    throttled = ProviderFault(kind="provider", mode=ProviderMode.THROTTLED, duration=5)
    assert "with_route53" in (target.supports(throttled) or "")
    assert "no region" in (
        target.supports(RegionFault(kind="region", region="mars", mode=RegionMode.DOWN, duration=1)) or ""
    )
    assert (
        target.supports(
            NetworkFault(kind="network", region="us-east", mode=NetworkMode.PARTITION, duration=1)
        )
        is None
    )
    slow = NetworkFault(kind="network", region="us-east", mode=NetworkMode.LATENCY, latency=90, duration=1)
    assert "at most" in (target.supports(slow) or "")
    with pytest.raises(TargetError, match="with_route53"):
        await target.inject(throttled, TTL)
    await target.stop()  # never started: nothing to do, and no error
