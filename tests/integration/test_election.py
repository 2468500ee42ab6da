"""Leader election and fencing (controlplane.coord.election) on real etcd: one winner, observed by others;
a leader that resigns or goes silent is replaced within the lease TTL, by a later epoch; a deposed leader's
fenced write is refused by etcd itself; and with an etcd member SIGSTOPped there are never two leaders."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress

import pytest

from chaos.tcpproxy import TcpFaultProxy
from controlplane.coord.election import (
    Deposed,
    LeaderInfo,
    Leadership,
    campaign,
    fenced,
    observe,
)
from controlplane.coord.etcd import EtcdClient, EtcdUnavailable, Put
from tests.fakes.etcd import EtcdCluster, EtcdMember

TTL = 2  # etcd's floor with the fixtures' 500 ms election timeout is 1 s
TIMEOUT = 0.5  # per endpoint: a stalled member costs this, well inside the 1 s a keepalive has to land
WINS_WITHIN = TTL + 1.0  # a generous bound that proves a successor wins at all


@pytest.fixture
def prefix() -> str:
    """This test's keys only: the etcd fixtures live for the whole session."""
    return f"/t/{uuid.uuid4().hex}"


@asynccontextmanager
async def clients(*endpoints: Sequence[str]) -> AsyncIterator[list[EtcdClient]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(EtcdClient(list(e), timeout=TIMEOUT)) for e in endpoints]


async def win(client: EtcdClient, prefix: str, name: str) -> Leadership:
    """Leadership, where nobody else leads (a bound, so that a broken campaign fails rather than hangs)."""
    return await asyncio.wait_for(campaign(client, prefix, name, TTL), WINS_WITHIN)


@asynccontextmanager
async def candidates(*runs: asyncio.Task[Leadership]) -> AsyncIterator[None]:
    """Campaigns that end with the test: cancelled if still waiting, their leaderships resigned."""
    try:
        yield
    finally:
        for run in runs:
            run.cancel()
            with suppress(asyncio.CancelledError):
                leadership = await run
                await leadership.resign()


async def test_one_of_two_candidates_wins_the_other_observes_it_and_wins_when_it_resigns(
    etcd: EtcdCluster, prefix: str
) -> None:
    async with clients(etcd.endpoints, etcd.endpoints, etcd.endpoints) as (one, two, watcher):
        runs = {
            name: asyncio.create_task(campaign(client, prefix, name, TTL))
            for name, client in (("eu-1", one), ("us-1", two))
        }
        async with candidates(*runs.values()):
            done, _ = await asyncio.wait(runs.values(), return_when=asyncio.FIRST_COMPLETED)
            (first,) = done
            (other,) = (run for run in runs.values() if run is not first)
            leader = first.result()
            # Held past its TTL: the keepalive keeps the lease, and the other keeps waiting.
            await asyncio.sleep(TTL + 0.5)
            assert not other.done()
            assert leader.is_valid()
            assert await observe(watcher, prefix) == LeaderInfo(leader.name, leader.epoch)

            started = time.monotonic()
            await leader.resign()
            assert await observe(watcher, prefix) != LeaderInfo(leader.name, leader.epoch)  # revoked at once
            successor = await asyncio.wait_for(other, WINS_WITHIN)
            assert time.monotonic() - started < WINS_WITHIN
            assert successor.name != leader.name
            assert successor.epoch > leader.epoch
            assert await observe(watcher, prefix) == LeaderInfo(successor.name, successor.epoch)


async def test_a_leader_cut_off_from_etcd_is_replaced_within_the_ttl_and_knows_it_first(
    etcd: EtcdCluster, prefix: str
) -> None:
    member = etcd.members[0]
    async with TcpFaultProxy("127.0.0.1", member.client_port) as path:
        proxied = [f"http://127.0.0.1:{path.port}"]
        async with clients(proxied, etcd.endpoints, etcd.endpoints) as (cut, other, watcher):
            leader = await win(cut, prefix, "eu-1")
            run = asyncio.create_task(campaign(other, prefix, "us-1", TTL))
            async with candidates(run):
                await asyncio.sleep(0.2)
                assert not run.done()
                # The leader's process hangs or loses its network: from etcd's side its keepalives stop.
                path.set_fault("partition", mode="blackhole")
                started = time.monotonic()
                successor = await asyncio.wait_for(run, WINS_WITHIN)
                assert time.monotonic() - started < WINS_WITHIN
                assert not leader.is_valid()  # its local deadline passed before etcd let its lease go
                assert successor.epoch > leader.epoch
                assert await observe(watcher, prefix) == LeaderInfo("us-1", successor.epoch)
                await asyncio.wait_for(leader.lost.wait(), TTL)
            path.clear()


async def test_a_deposed_leader_that_does_not_know_it_has_its_fenced_write_refused_by_etcd(
    etcd: EtcdCluster, prefix: str
) -> None:
    plan = f"{prefix}/plan".encode()
    async with clients(etcd.endpoints, etcd.endpoints) as (old_client, new_client):
        old = await win(old_client, prefix, "eu-1")
        await fenced(old, [Put(plan, b"old leader's plan")])
        # The same leadership as a leader paused with its clock stopped would hold: its deadline far off.
        stale = Leadership(
            old_client, prefix, old.name, old.epoch, old.lease, TTL, granted_at=time.monotonic() + 3600
        )
        await old.resign()
        # The replica restarted under the same name: only the epoch tells the two leaderships apart.
        new = await win(new_client, prefix, "eu-1")
        try:
            await fenced(new, [Put(plan, b"new leader's plan")])
            assert stale.is_valid()
            with pytest.raises(Deposed, match="etcd refused"):
                await fenced(stale, [Put(plan, b"stale plan")])
            assert stale.lost.is_set()
            written = await new_client.get(plan)
            assert written is not None and written.value == b"new leader's plan"
            assert new.is_valid()
        finally:
            await new.resign()


def raft_role(cluster: EtcdCluster, leading: bool) -> EtcdMember:
    raft_leader = cluster.leader()
    return raft_leader if leading else next(m for m in cluster.members if m is not raft_leader)


@pytest.mark.parametrize("raft_leader", [False, True], ids=["raft follower", "raft leader"])
async def test_with_the_leaders_etcd_member_stopped_there_are_never_two_leaders(
    etcd_cluster: EtcdCluster, prefix: str, raft_leader: bool
) -> None:
    stopped = raft_role(etcd_cluster, raft_leader)
    others = [m.url for m in etcd_cluster.members if m is not stopped]
    async with clients([stopped.url, *others], [*others, stopped.url], others[::-1]) as (
        first,
        second,
        watcher,
    ):
        lead = asyncio.create_task(campaign(first, prefix, "eu-1", TTL))
        async with candidates(lead):
            leader = await asyncio.wait_for(lead, WINS_WITHIN)  # first: the one whose member stops
            run = asyncio.create_task(campaign(second, prefix, "us-1", TTL))
            async with candidates(run):
                stopped.stop()
                try:
                    seen = await never_two_leaders(leader, run, watcher, prefix, TTL + 1.0)
                finally:
                    stopped.cont()
                if not raft_leader:
                    # A member that is not raft's leader costs a keepalive one timeout: the leader stays.
                    assert leader.is_valid() and not run.done()
                    assert seen == {LeaderInfo("eu-1", leader.epoch)}
                elif leader.is_valid():
                    assert seen == {LeaderInfo("eu-1", leader.epoch)}
                else:  # stepped down while raft elected a new leader: the other took over, a later epoch
                    successor = await asyncio.wait_for(run, WINS_WITHIN)
                    assert leader.lost.is_set() and successor.epoch > leader.epoch
                    assert seen <= {LeaderInfo("eu-1", leader.epoch), LeaderInfo("us-1", successor.epoch)}


async def never_two_leaders(
    leader: Leadership, run: asyncio.Task[Leadership], watcher: EtcdClient, prefix: str, seconds: float
) -> set[LeaderInfo]:
    """Sample for `seconds`: at no instant do both believe they lead, and whoever does is etcd's leader.
    Returns the leaders etcd named meanwhile."""
    seen: set[LeaderInfo] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        valid = [one for one in (leader, run.result() if run.done() else None) if one and one.is_valid()]
        assert len(valid) <= 1, f"two leaders at once: {valid}"
        with suppress(EtcdUnavailable):  # while raft elects a leader, reads fail
            named = await observe(watcher, prefix)
            if named is not None:
                seen.add(named)
            still = [one for one in valid if one.is_valid()]
            if still and named is not None:
                assert named == LeaderInfo(still[0].name, still[0].epoch)
        await asyncio.sleep(0.02)
    return seen
