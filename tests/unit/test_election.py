"""The leader's local deadline on virtual time: measured from when the acknowledged keepalive was sent, never
revived once passed, and a leader past it (a SIGSTOP is the clock jumping) writes nothing and asks etcd
nothing. The etcd side of the election is tested on real etcd in tests/integration/test_election.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from controlplane.coord.election import (
    Deposed,
    LeaderInfo,
    Leadership,
    deadline_after,
    fenced,
    keepalive_every,
    leader_key,
    leader_of,
)
from controlplane.coord.etcd import Compare, EtcdRequestError, EtcdUnavailable, KeyValue, Put, TxnResult
from tests.builders import ManualClock as Clock
from tests.fakes.clock import virtual_loop, virtual_time

TTL = 3  # deadline = sent + 2.5, keepalive every 1 s
PREFIX = "/controlplane/prod"


class ScriptedEtcd:
    """Stands in for EtcdClient where only the local rules are under test: each keepalive runs `keepalive`,
    a txn answers `txn_succeeds`; every call is recorded."""

    def __init__(
        self, keepalive: Callable[[], Awaitable[int]] | None = None, txn_succeeds: bool = True
    ) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._keepalive = keepalive
        self._txn_succeeds = txn_succeeds

    async def keepalive(self, lease: int) -> int:
        self.calls.append(("keepalive", virtual_loop().time()))
        assert self._keepalive is not None, "no keepalive expected"
        return await self._keepalive()

    async def revoke(self, lease: int) -> None:
        self.calls.append(("revoke", lease))

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> TxnResult:
        self.calls.append(("txn", (tuple(compare), tuple(success))))
        return TxnResult(succeeded=self._txn_succeeds, revision=99, responses=((),) * len(success))

    def named(self, what: str) -> list[Any]:
        return [arg for name, arg in self.calls if name == what]


def leadership(client: Any, now: Callable[[], float], granted_at: float = 100.0) -> Leadership:
    return Leadership(client, PREFIX, "eu-1", epoch=42, lease=7, ttl=TTL, granted_at=granted_at, now=now)


def acked_after(delay: float, ttl: int = TTL) -> Callable[[], Awaitable[int]]:
    async def answer() -> int:
        await asyncio.sleep(delay)
        return ttl

    return answer


def test_keys_live_under_the_prefix() -> None:
    assert leader_key("/controlplane/prod") == b"/controlplane/prod/leader"
    assert leader_key("/controlplane/prod/") == b"/controlplane/prod/leader"


def test_the_epoch_is_when_the_leader_key_was_created_not_last_written() -> None:
    kv = KeyValue(b"/p/leader", b"eu-1", create_revision=7, mod_revision=9, version=2, lease=5)
    assert leader_of(kv) == LeaderInfo("eu-1", 7)


def test_the_deadline_runs_from_the_grant_less_a_margin() -> None:
    clock = Clock()
    leader = leadership(ScriptedEtcd(), clock)
    assert leader.deadline == deadline_after(100.0, TTL) == 102.5
    clock.now = 102.49
    assert leader.is_valid()
    clock.now = 102.5
    assert not leader.is_valid()
    assert leader.is_valid(102.0)  # an explicit instant is judged as given


def test_an_acknowledgement_counts_from_when_its_keepalive_was_sent() -> None:
    leader = leadership(ScriptedEtcd(), Clock())
    leader.acknowledged(sent_at=101.0)  # however late the answer arrived
    assert leader.deadline == 103.5
    leader.acknowledged(sent_at=100.5)  # an older keepalive's late answer never shortens it
    assert leader.deadline == 103.5


async def test_past_the_deadline_a_fenced_write_is_deposed_without_asking_etcd() -> None:
    clock = Clock()
    client = ScriptedEtcd()
    leader = leadership(client, clock)
    clock.now = 102.5
    with pytest.raises(Deposed, match="local deadline passed"):
        await fenced(leader, [Put(b"/controlplane/prod/plan", b"x")])
    assert client.calls == []
    assert leader.lost.is_set()
    leader.acknowledged(sent_at=102.4)  # an answer to a keepalive sent in time comes too late
    assert not leader.is_valid(102.6)


async def test_a_fenced_write_compares_the_epoch_and_a_refusal_deposes() -> None:
    client = ScriptedEtcd(txn_succeeds=False)
    leader = leadership(client, Clock())
    op = Put(b"/controlplane/prod/plan", b"x")
    with pytest.raises(Deposed, match="etcd refused"):
        await fenced(leader, [op])
    assert client.named("txn") == [((Compare(b"/controlplane/prod/leader", "CREATE", "EQUAL", 42),), (op,))]
    assert leader.lost.is_set()


@virtual_time
async def test_keepalives_every_third_of_the_ttl_move_the_deadline_from_their_sending() -> None:
    loop = virtual_loop()
    client = ScriptedEtcd(acked_after(0.3))
    leader = leadership(client, loop.time, granted_at=loop.time())
    leader.start()
    await asyncio.sleep(10)
    sent = client.named("keepalive")
    assert sent[:3] == [keepalive_every(TTL), 2 * keepalive_every(TTL), 3 * keepalive_every(TTL)]
    assert leader.is_valid()
    assert leader.deadline == pytest.approx(deadline_after(sent[-1], TTL))
    await leader.resign()
    assert leader.lost.is_set() and leader.reason == "resigned"
    assert client.named("revoke") == [7]


@virtual_time
async def test_keepalives_etcd_does_not_answer_end_nothing_until_the_deadline() -> None:
    loop = virtual_loop()

    async def unavailable() -> int:
        await asyncio.sleep(0.2)
        raise EtcdUnavailable("no etcd endpoint answered")

    client = ScriptedEtcd(unavailable)
    leader = leadership(client, loop.time, granted_at=0.0)
    leader.start()
    await asyncio.sleep(2.45)
    assert leader.is_valid() and not leader.lost.is_set()
    assert len(client.named("keepalive")) > 2  # retried, not waiting out another third of the TTL
    await asyncio.wait_for(leader.lost.wait(), 1.0)
    assert loop.time() == pytest.approx(2.5)
    assert leader.reason == "lease not renewed before the local deadline"
    await asyncio.sleep(0)
    assert client.named("revoke") == [7]  # so the next leader need not wait for etcd to expire it


@virtual_time
async def test_a_keepalive_hanging_past_the_deadline_deposes_at_the_deadline() -> None:
    loop = virtual_loop()
    leader = leadership(ScriptedEtcd(acked_after(60)), loop.time, granted_at=0.0)
    leader.start()
    await asyncio.wait_for(leader.lost.wait(), 5.0)
    assert loop.time() == pytest.approx(2.5)


async def lease_not_found() -> int:
    raise EtcdRequestError("lease not found")


@pytest.mark.parametrize("answer", [acked_after(0.1, ttl=0), lease_not_found], ids=["ttl 0", "refused"])
@virtual_time
async def test_a_lease_etcd_no_longer_has_deposes_at_once(answer: Callable[[], Awaitable[int]]) -> None:
    loop = virtual_loop()
    leader = leadership(ScriptedEtcd(answer), loop.time, granted_at=0.0)
    leader.start()
    await asyncio.wait_for(leader.lost.wait(), 5.0)
    assert loop.time() == pytest.approx(keepalive_every(TTL), abs=0.2)  # at the first keepalive


@virtual_time
async def test_a_leader_paused_past_its_deadline_wakes_up_deposed_and_writes_nothing() -> None:
    loop = virtual_loop()
    client = ScriptedEtcd(acked_after(0.1))
    leader = leadership(client, loop.time, granted_at=0.0)
    leader.start()
    await asyncio.sleep(1.5)
    assert leader.is_valid()
    loop.advance(30)  # SIGSTOP: nothing ran meanwhile; etcd expired the lease and may have a new leader
    with pytest.raises(Deposed):
        await fenced(leader, [Put(b"/controlplane/prod/plan", b"stale")])
    assert client.named("txn") == []
    await asyncio.sleep(5)
    assert leader.lost.is_set() and not leader.is_valid()
    assert all(at < 30 for at in client.named("keepalive"))  # no keepalive sent after waking
