"""Three daemons as replicas of one plane on a real etcd, in one event loop: one leads and writes, the others
serve its plan on their own DNS; a region fails over only when a majority sees it down; overrides hold on
every replica."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from chaos.etcdproc import EtcdCluster
from chaos.loopback import free_port
from chaos.simregion import SimFleet
from chaos.tcpproxy import TcpFaultProxy
from controlplane.coord.etcd import EtcdClient
from tests.conftest import until
from tests.integration.daemon_helpers import FULL, Plane, fault, policy_data, running_plane, write_policy

NAMES = ("r1", "r2", "r3")


def replica_policy(
    fleet: SimFleet, etcd: list[str], prefix: str, endpoints: dict[str, str]
) -> dict[str, Any]:
    data = policy_data(fleet, dns_port=free_port())
    data["coordination"] = {"etcd": etcd, "lease_ttl": 2, "prefix": prefix}
    for region in data["regions"]:
        region["endpoint"] = endpoints.get(region["name"], region["endpoint"])
    return data


@asynccontextmanager
async def replicas(
    tmp_path: Path,
    fleet: SimFleet,
    etcd: EtcdCluster,
    endpoints: dict[str, dict[str, str]] | None = None,
    etcd_via: dict[str, str] | None = None,
) -> AsyncIterator[tuple[str, dict[str, Plane]]]:
    """Three replicas; `endpoints` gives one replica other region URLs, `etcd_via` another etcd URL."""
    prefix = f"/test/{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        planes: dict[str, Plane] = {}
        for name in NAMES:
            path = tmp_path / f"{name}.yaml"
            via = (etcd_via or {}).get(name)
            data = replica_policy(
                fleet, [via] if via else etcd.endpoints, prefix, (endpoints or {}).get(name, {})
            )
            write_policy(path, data)
            planes[name] = await stack.enter_async_context(
                running_plane(path, tmp_path / f"state-{name}", replica=name)
            )
        yield prefix, planes


def role(plane: Plane) -> str:
    coordinator = plane.daemon.coordinator
    assert coordinator is not None
    return str(coordinator.role().value)


async def the_leader(planes: dict[str, Plane]) -> Plane:
    async def one() -> Plane | None:
        leaders = [p for p in planes.values() if role(p) == "leader"]
        followers = [p for p in planes.values() if role(p) == "follower"]
        return leaders[0] if len(leaders) == 1 and len(followers) == len(planes) - 1 else None

    return await until(one, within=15, what="one leader and the others following")


async def test_one_leader_writes_and_every_replica_serves_its_plan(
    tmp_path: Path, fleet: SimFleet, etcd: EtcdCluster, session: aiohttp.ClientSession
) -> None:
    async with replicas(tmp_path, fleet, etcd) as (prefix, planes):
        leader = await the_leader(planes)
        await leader.settled(FULL)
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "controlplane", "status", "--api", leader.api],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert f"replica {leader.daemon.config.replica}: LEADER" in shown.stdout, shown
        assert "vote r1" in shown.stdout and "vote r3" in shown.stdout
        for plane in planes.values():
            await until(lambda p=plane: p.weights() == FULL["global"], within=8, what="every replica's plan")
            # Every replica's own DNS answers with the leader's plan...
            assert await plane.held("global", provider="localdns") == FULL["global"]
            # ...and only the leader writes to a provider outside the process.
            assert (await plane.held("global")) == (FULL["global"] if plane is leader else {})
        async with EtcdClient(etcd.endpoints) as client:
            kv = await client.get(f"{prefix}/leader".encode())
        assert kv is not None and kv.value.decode() == leader.daemon.config.replica

        await fault(session, fleet["us-east"], mode="down")
        for plane in planes.values():
            await until(
                lambda p=plane: p.weights().get("us-east") == 0 and p.weights() == leader.weights(),
                within=10,
                what="us-east failed over on every replica",
            )

        status, body = await leader.get("/status")
        assert status == 200
        coordination = body["coordination"]
        assert coordination["role"] == "leader" and coordination["epoch"] == kv.create_revision
        assert coordination["quorum"]["regions"]["us-east"]["state"] == "unhealthy"
        assert set(coordination["votes"]) == set(NAMES)
        metrics = await leader.metrics()
        assert metrics[("controlplane_replica_role", frozenset({("role", "leader")}))] == 1.0
        assert metrics[("controlplane_quorum_live_replicas", frozenset())] == 3.0


async def test_an_override_posted_to_a_follower_holds_on_the_leader(
    tmp_path: Path, fleet: SimFleet, etcd: EtcdCluster
) -> None:
    async with replicas(tmp_path, fleet, etcd) as (_, planes):
        leader = await the_leader(planes)
        follower = next(p for p in planes.values() if p is not leader)
        status, _ = await follower.request(
            "POST",
            "/overrides",
            headers=follower.auth(),
            json={"region": "us-east", "action": "drain", "duration": 300, "reason": "test"},
        )
        assert status in (200, 201)
        await until(
            lambda: leader.weights().get("us-east") == 0, within=10, what="the leader draining us-east"
        )
        assert any(o.region == "us-east" for o in leader.daemon.overrides)


async def test_a_region_seen_down_by_one_replica_only_is_not_failed_over(
    tmp_path: Path, fleet: SimFleet, etcd: EtcdCluster
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: r3 alone cannot reach us-east
    async with replicas(tmp_path, fleet, etcd, endpoints={"r3": {"us-east": dead}}) as (_, planes):
        leader = await the_leader(planes)
        await leader.settled(FULL)
        coordinator = leader.daemon.coordinator
        assert coordinator is not None

        def r3_sees_it_down() -> bool:
            quorum = coordinator.quorum
            return quorum is not None and "r3" in quorum.regions["us-east"].down

        await until(r3_sees_it_down, within=10, what="r3's vote against us-east")
        began = time.monotonic()
        while time.monotonic() - began < 2.0:
            assert leader.weights() == FULL["global"]
            await asyncio.sleep(0.1)
        _, body = await planes["r3"].get("/status")
        note = body["coordination"]["quorum"]["regions"]["us-east"]["note"]
        assert "path problem" in note and "r3" in note


async def test_a_replica_cut_off_from_etcd_freezes_and_says_so(
    tmp_path: Path, fleet: SimFleet, etcd: EtcdCluster
) -> None:
    upstream = urlsplit(etcd.endpoints[0])
    async with TcpFaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 2379) as proxy:
        via = {"r3": f"http://127.0.0.1:{proxy.port}"}
        async with replicas(tmp_path, fleet, etcd, etcd_via=via) as (_, planes):
            await the_leader(planes)
            r3 = planes["r3"]
            was_leader = role(r3) == "leader"
            proxy.set_fault("partition", mode="blackhole")
            await until(lambda: role(r3) == "frozen", within=10, what="r3 frozen")
            _, body = await r3.get("/status")
            assert "etcd unreachable" in body["coordination"]["frozen"]
            # The two that still see each other carry on: one leads, the other follows.
            rest = {n: p for n, p in planes.items() if n != "r3"}
            await until(
                lambda: sorted(role(p) for p in rest.values()) == ["follower", "leader"],
                within=10,
                what="r1 and r2 carrying on",
            )
            if not was_leader:
                assert await r3.held() == {}  # neither as a follower nor frozen did it write outside
            proxy.clear()
            await until(lambda: role(r3) == "follower", within=10, what="r3 back as a follower")
