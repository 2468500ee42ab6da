"""Three replica processes of one plane, coordinated through a 3-member etcd cluster, writing one Route 53
zone on moto; four simulated regions, each replica behind proxies of its own (chaos/replicas.py). The zone
is read directly from moto, etcd directly from its members, and each replica through its own /status.

Timing bounds are generous (a lease is 3 s, a cold replica takes seconds to start on a loaded runner): they
prove that something happens at all, never how fast."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chaos.demotarget import AWS_ENV
from chaos.drill import DrillError, ReplicaFault, ReplicaMode, parse_drill
from chaos.etcdproc import EtcdCluster
from chaos.loopback import free_port, loopback_policy, resolve
from chaos.replicas import Link, ReplicaStack, Zone
from chaos.replicatarget import ReplicaTarget
from chaos.runner import run_drill, target_for
from chaos.simregion import SimFleet
from controlplane.providers.route53 import route53_weight
from tests.conftest import require_binary, until
from tests.fakes.moto import moto_fixture, moto_server_fixture  # noqa: F401
from tests.fakes.route53_strict import strict_route53_fixture, strict_route53_server_fixture  # noqa: F401
from tests.integration.daemon_helpers import ADDRESS, DNS_NAME, FULL, SERVICE, fault, policy_data, sim_fleet

pytestmark = pytest.mark.needs_binary("moto_server")

TTL = 3
ZONE = "llm.test"  # the service's chat.llm.test lies in it
OWNER = "replicas"
TOKEN = "replicas-token"
# Generous: a new leader needs the lease to run out (TTL) and a campaign; a loaded runner adds seconds.
LEAD_WITHIN = TTL + 12.0
CONVERGE = 20.0
Weights = dict[str, dict[str, int]]
DEMO = """\
import asyncio, sys
from pathlib import Path
from controlplane.replicas_demo import run_replicas_demo
sys.exit(asyncio.run(run_replicas_demo(Path(sys.argv[1]), Path(sys.argv[2]), 3, view=False)))
"""


def in_zone(percent: Weights) -> Weights:
    return {g: {r: route53_weight(w) for r, w in ws.items()} for g, ws in percent.items()}


def planned(record: dict[str, Any]) -> Weights:
    """The weights (percent) of the plan etcd holds, per client group of the service."""
    return {
        g["group"]: {w["region"]: w["weight"] for w in g["weights"]}
        for g in record["plan"]["groups"]
        if g["service"] == SERVICE
    }


@dataclass
class Plane:
    stack: ReplicaStack
    fleet: SimFleet
    zone: Zone
    session: aiohttp.ClientSession

    async def zone_is(self, percent: Weights) -> bool:
        return await self.zone.weights() == in_zone(percent)

    async def break_region(self, region: str) -> None:
        await fault(self.session, self.fleet[region], mode="down")

    async def served(self, name: str) -> set[str]:
        """Every address replica `name`'s embedded DNS answers a global client with, over many queries."""
        return set(await resolve(self.stack[name].dns_port, count=50, name=DNS_NAME))

    def applied(self, name: str, since: float = 0.0) -> list[str]:
        """Each Route 53 change replica `name` applied after `since`: its audit log's "applied" entries, of
        the providers that took them (a write refused, by a fence or an error, is audited there too)."""
        return [
            json.dumps(change, sort_keys=True)
            for entry in self.stack[name].audit()
            if entry["event"] == "applied" and entry["ts"] >= since
            for changes in entry.get("changes", [])
            if changes["provider"].startswith("route53")
            and any(p["provider"] == changes["provider"] and p["applied"] for p in entry["providers"])
            for change in changes["changes"]
        ]


async def audited(plane: Plane, name: str) -> bool:
    """Replica `name`'s audit log holds its last apply: a pause now cannot fall between the write and the
    audit line that records it (which would then be stamped after the pause)."""
    block = await plane.stack.coordination(name)
    last = block["applied_at"] if block else None
    stamps = [e["ts"] for e in plane.stack[name].audit() if e["event"] == "applied"]
    return last is None or (bool(stamps) and max(stamps) >= last)


@asynccontextmanager
async def replica_plane(etcd: EtcdCluster, moto: str, strict: str, tmp_path: Path) -> AsyncIterator[Plane]:
    """The plane up, one leader, the zone holding every region at full weight. The replicas write Route 53
    through `strict` (a proxy refusing what Route 53 refuses: a fence's stale exact-match DELETE); the zone
    is read from moto itself."""
    zone = await Zone.create(moto, ZONE, OWNER)
    async with sim_fleet() as fleet, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        data = policy_data(fleet, dns_port=5353, memory=False)
        data["client_groups"][0]["geo"] = {"continents": ["EU"]}
        data["providers"]["route53"] = {"zone": ZONE, "endpoint_url": strict, "owner": OWNER}
        stack = ReplicaStack(
            data,
            etcd.endpoints,
            tmp_path,
            prefix=f"/test/replicas/{uuid.uuid4().hex[:8]}",
            lease_ttl=TTL,
            token=TOKEN,
            env=AWS_ENV,
        )
        async with stack:
            plane = Plane(stack, fleet, zone, session)
            await stack.wait_leader(within=CONVERGE + LEAD_WITHIN)
            await until(lambda: plane.zone_is(FULL), within=CONVERGE, what="the zone to hold every region")
            yield plane


@dataclass
class ZoneWatch:
    """Reads the zone over and over and keeps every distinct state it saw, in order."""

    zone: Zone
    seen: list[Weights] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            weights = await self.zone.weights()
            if not self.seen or self.seen[-1] != weights:
                self.seen.append(weights)
            await asyncio.sleep(0.05)


@asynccontextmanager
async def watching(zone: Zone) -> AsyncIterator[ZoneWatch]:
    watch = ZoneWatch(zone)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def us_east_out(weights: Weights) -> bool:
    return all(ws.get("us-east", 0) == 0 for ws in weights.values())


async def new_plan(plane: Plane, epoch: int, leader: str) -> Weights | None:
    """The plan etcd holds once the leader of `epoch` has taken us-east out, and the zone holds it."""
    record = await plane.stack.plan_record()
    if record is None or record["epoch"] != epoch or record["leader"] != leader:
        return None
    weights = planned(record)
    return weights if us_east_out(weights) and await plane.zone_is(weights) else None


async def test_a_killed_leader_is_replaced_and_the_region_it_did_not_fail_over_is_failed_over_once(
    etcd_cluster: EtcdCluster, moto: str, strict_route53: str, tmp_path: Path
) -> None:
    async with replica_plane(etcd_cluster, moto, strict_route53, tmp_path) as plane:
        stack = plane.stack
        old = await stack.wait_leader(within=LEAD_WITHIN)
        old_key = await stack.leader_key()
        assert old_key is not None and old_key[0] == old

        await stack.kill(old)
        await plane.break_region("us-east")  # the dead leader can no longer act on it
        others = [n for n in stack.names if n != old]
        new = await stack.wait_leader(within=LEAD_WITHIN, among=others)
        key = await stack.leader_key()
        assert key is not None and key[0] == new and key[1] > old_key[1]

        # None lost: the new leader's plan, under its epoch, takes us-east out and the zone holds it.
        await until(
            lambda: new_plan(plane, key[1], new), within=CONVERGE, what="the new leader's plan in the zone"
        )
        # Every replica left serves the new leader's plan on its own DNS, with the regions' own addresses.
        wanted = {ADDRESS[r] for r in ("us-west", "eu-west", "eu-central")}
        for name in others:
            seen: set[str] = set()

            async def serves_it(name: str = name, seen: set[str] = seen) -> bool:
                # A follower may take a moment to serve the plan, and damping can leave a region a small
                # weight for a while: gather answers until every survivor was seen, and never us-east.
                served = await plane.served(name)
                if not served <= wanted:
                    seen.clear()
                    return False
                seen |= served
                return seen == wanted

            await until(serves_it, within=CONVERGE, what=f"{name}'s DNS serving the new leader's plan")
        # None applied twice: no Route 53 change is in the audit of two replicas (or twice in one).
        applied = [change for name in stack.names for change in plane.applied(name)]
        assert applied and len(applied) == len(set(applied)), applied
        assert plane.applied(new), "the new leader applied the failover"


async def test_a_paused_leader_wakes_deposed_writes_nothing_and_the_zone_never_reverts(
    etcd_cluster: EtcdCluster, moto: str, strict_route53: str, tmp_path: Path
) -> None:
    async with replica_plane(etcd_cluster, moto, strict_route53, tmp_path) as plane:
        stack = plane.stack
        old = await stack.wait_leader(within=LEAD_WITHIN)
        await until(lambda: audited(plane, old), within=CONVERGE, what=f"{old}'s audit of its last apply")
        async with watching(plane.zone) as watch:
            paused_at = time.time()
            stack.pause(old)
            others = [n for n in stack.names if n != old]
            new = await stack.wait_leader(within=LEAD_WITHIN, among=others)
            key = await stack.leader_key()
            assert key is not None and key[0] == new
            await plane.break_region("us-east")
            await until(lambda: new_plan(plane, key[1], new), within=CONVERGE, what="the new leader's plan")

            stack.resume(old)

            async def stepped_down() -> bool:
                block = await stack.coordination(old)
                return block is not None and block["role"] == "follower" and block["leader"] == new

            await until(stepped_down, within=CONVERGE, what=f"{old} to step down")
            await asyncio.sleep(2 * TTL)  # time for any late write of the old leader to land
        # The zone went from full to us-east out, and never back.
        first_out = next(i for i, w in enumerate(watch.seen) if us_east_out(w))
        assert all(us_east_out(w) for w in watch.seen[first_out:]), watch.seen
        assert await plane.zone_is(planned(await stack.plan_record() or {}))
        assert plane.applied(old, since=paused_at) == []
        assert (await stack.leader_key()) == key


async def test_a_replica_cut_off_from_the_regions_fails_nothing_over(
    etcd_cluster: EtcdCluster, moto: str, strict_route53: str, tmp_path: Path
) -> None:
    async with replica_plane(etcd_cluster, moto, strict_route53, tmp_path) as plane:
        stack = plane.stack
        cut = await stack.wait_leader(
            within=LEAD_WITHIN
        )  # the leader itself: the worst vantage point to lose
        others = [n for n in stack.names if n != cut]
        async with watching(plane.zone) as watch:
            stack.cut(cut, Link.REGIONS)

            async def path_problem() -> bool:
                """A peer reports every region healthy while `cut` cannot see it: a path problem, noted."""
                block = await stack.coordination(others[0])
                regions = block["quorum"]["regions"] if block is not None else {}
                return bool(regions) and all(
                    r["state"] == "healthy" and cut in r["down"] + r["unknown"] and r["note"]
                    for r in regions.values()
                )

            await until(path_problem, within=CONVERGE, what="the path problem from the cut replica, noted")

            async def frozen() -> bool:
                block = await stack.coordination(cut)
                return block is not None and block["role"] == "frozen" and bool(block["frozen"])

            await until(frozen, within=CONVERGE, what=f"{cut} to freeze")
            await asyncio.sleep(4 * TTL)  # many probe rounds and lease renewals with the path cut
        assert watch.seen == [in_zone(FULL)]
        stack.heal(cut, Link.REGIONS)

        async def thawed() -> bool:
            block = await stack.coordination(cut)
            return block is not None and block["role"] in ("leader", "follower")

        await until(thawed, within=CONVERGE, what=f"{cut} to act again once healed")


async def test_a_replica_cut_off_from_etcd_freezes_and_says_so_while_the_others_carry_on(
    etcd_cluster: EtcdCluster, moto: str, strict_route53: str, tmp_path: Path
) -> None:
    async with replica_plane(etcd_cluster, moto, strict_route53, tmp_path) as plane:
        stack = plane.stack
        cut = await stack.wait_leader(within=LEAD_WITHIN)
        others = [n for n in stack.names if n != cut]
        cut_at = time.time()
        stack.cut(cut, Link.ETCD)

        async def frozen() -> bool:
            block = await stack.coordination(cut)
            return block is not None and block["role"] == "frozen" and bool(block["frozen"] and block["etcd"])

        await until(frozen, within=LEAD_WITHIN, what=f"{cut} to freeze and say why")
        new = await stack.wait_leader(within=LEAD_WITHIN, among=others)
        key = await stack.leader_key()
        assert key is not None and key[0] == new

        await plane.break_region("us-east")
        await until(
            lambda: new_plan(plane, key[1], new), within=CONVERGE, what="the others to fail us-east over"
        )
        assert plane.applied(cut, since=cut_at) == []
        await until(
            frozen, within=CONVERGE, what=f"{cut} still frozen"
        )  # a status read may time out under load


DEMO_REGION_PORT = 18460  # the demo's regions on 127.0.0.11-14 at another port than a running demo's 8000


async def test_the_replicas_demo_elects_one_leader_and_its_knob_cuts_a_replica_off(tmp_path: Path) -> None:
    require_binary("etcd", "Debian's etcd-server")
    policy = tmp_path / "demo.yaml"
    policy.write_text(loopback_policy(DEMO_REGION_PORT, free_port(), f"127.0.0.1:{free_port()}"))
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DEMO, str(policy), str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert demo.stdout is not None
    out = demo.stdout
    lines: list[str] = []

    async def line_where(wanted: Callable[[str], bool], what: str) -> str:
        async with asyncio.timeout(CONVERGE + LEAD_WITHIN):
            while True:
                line = (await out.readline()).decode()
                assert line, f"the demo exited waiting for {what}:\n{''.join(lines)}"
                lines.append(line)
                if wanted(line):
                    return line

    try:
        knob = (await line_where(lambda s: "/cut/regions" in s, "the knob")).split()[-1]
        pids = [
            int(p) for p in re.findall(r"r\d=(\d+)", await line_where(lambda s: "pids:" in s, "the pids"))
        ]
        leader = (await line_where(lambda s: ": leader, leader" in s, "a leader")).split(":")[0]
        assert len(pids) == 3
        async with (
            aiohttp.ClientSession() as session,
            asyncio.timeout(5),
            session.post(knob.replace("/r1/", f"/{leader}/")) as response,
        ):
            assert response.status == 200 and await response.json() == {leader: ["regions"]}
        await line_where(lambda s: s.startswith(f"{leader}: frozen"), f"{leader} frozen by the knob")
    finally:
        demo.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            rest, _ = await demo.communicate()
    output = "".join(lines) + rest.decode()
    assert demo.returncode == 0, output
    assert "stopped: replicas, regions and etcd are down" in output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


REPLICA_FAULT = """\
name: replica-drill
method:
  - fault: {kind: replica, replica: leader, mode: pause, at: 0s, duration: 6s}
  - fault: {kind: region, region: us-east, mode: down, at: 1s, duration: 10s}
expect:
  - leaves_dns: {region: us-east, within: 8s}
  - returns_to_dns: {region: us-east, within: 15s}
  - max_flaps: 0
"""


def test_a_replica_fault_needs_a_plane_of_replicas() -> None:
    with pytest.raises(DrillError, match=r"drill.yaml:3:\d+: a replica fault needs a plane of replicas"):
        parse_drill(REPLICA_FAULT, "drill.yaml")
    drill = parse_drill("target: replicas\n" + REPLICA_FAULT, "drill.yaml")
    assert isinstance(target_for(drill), ReplicaTarget)


async def test_the_replicas_drill_target_pauses_the_leader_and_cuts_a_replica_off_from_etcd() -> None:
    require_binary("etcd", "Debian's etcd-server")
    target = ReplicaTarget()
    await target.start()
    try:
        stack = target.stack
        old = await stack.wait_leader(within=LEAD_WITHIN)
        pause = ReplicaFault(kind="replica", mode=ReplicaMode.PAUSE, duration=6)
        await target.inject(pause, ttl=60)
        new = await stack.wait_leader(within=LEAD_WITHIN, among=[n for n in stack.names if n != old])
        await target.clear(pause)

        async def follows(name: str, leader: str) -> bool:
            block = await stack.coordination(name)
            return block is not None and block["role"] == "follower" and block["leader"] == leader

        await until(lambda: follows(old, new), within=CONVERGE, what=f"{old} to follow {new} once continued")

        # By name: the new leader may be the replica the drill's clients ask, which no fault may break.
        cut = ReplicaFault(kind="replica", replica=old, mode=ReplicaMode.CUT_ETCD, duration=6)
        await target.inject(cut, ttl=60)
        assert stack.cuts(old) == [Link.ETCD]
        await target.clear(cut)
        assert stack.cuts(old) == []
    finally:
        await target.stop()


async def test_a_drill_pauses_the_leader_of_a_plane_of_replicas_and_us_east_fails_over_once(
    tmp_path: Path,
) -> None:
    require_binary("etcd", "Debian's etcd-server")
    drill = parse_drill("target: replicas\n" + REPLICA_FAULT, "drill.yaml")
    async with asyncio.timeout(240):
        outcome = await run_drill(drill, target_for(drill), tmp_path)
    assert outcome.passed, (tmp_path / "summary.md").read_text(encoding="utf-8")
