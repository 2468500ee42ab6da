"""The etcd client (controlplane.coord.etcd) against real etcd 3.4 processes on loopback: keys, txn, leases,
watches, member loss on a 3-member cluster, and endpoints that answer badly or never."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from controlplane.coord.etcd import (
    Compare,
    Delete,
    EtcdClient,
    EtcdRequestError,
    EtcdUnavailable,
    Get,
    KeyValue,
    Put,
)
from tests.conftest import require_binary
from tests.fakes.etcd import EtcdCluster, etcd_cluster

TIMEOUT = 0.5


@pytest.fixture
def prefix() -> bytes:
    """Keys of this test only: the etcd fixtures live for the whole session."""
    return f"/t/{uuid.uuid4().hex}/".encode()


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd.endpoints, timeout=TIMEOUT) as client:
        yield client


async def test_put_get_range_delete_round_trip_binary_keys(client: EtcdClient, prefix: bytes) -> None:
    key = prefix + b"\x00\xff\x80 bin"
    value = bytes(range(256))
    revision = await client.put(key, value)
    got = await client.get(key)
    assert got is not None
    assert (got.key, got.value, got.create_revision, got.mod_revision, got.version, got.lease) == (
        key,
        value,
        revision,
        revision,
        1,
        0,
    )
    second = await client.put(key, b"")
    again = await client.get(key)
    assert again is not None and (again.value, again.version, again.mod_revision) == (b"", 2, second)
    await client.put(prefix + b"\xff\xff", b"last")
    await client.put(prefix[:-1] + b"0", b"outside the prefix")  # '/' + 1
    header, kvs = await client.range(prefix)
    assert header >= second
    assert [kv.key for kv in kvs] == [key, prefix + b"\xff\xff"]
    assert await client.delete(prefix, prefix=True) == 2
    assert await client.get(key) is None
    assert await client.range(prefix) == (header + 1, ())
    assert await client.get(prefix[:-1] + b"0") is not None
    assert await client.delete(prefix[:-1] + b"0") == 1


async def test_txn_compares_and_branches(client: EtcdClient, prefix: bytes) -> None:
    leader = prefix + b"leader"
    claim = await client.txn(
        [Compare(leader, "CREATE", "EQUAL", 0)],
        [Put(leader, b"a"), Get(leader)],
        [Get(leader)],
    )
    assert claim.succeeded
    assert claim.responses[0] == ()
    (kv,) = claim.responses[1]
    assert (kv.value, kv.create_revision) == (b"a", claim.revision)

    lost = await client.txn(
        [Compare(leader, "CREATE", "EQUAL", 0)], [Put(leader, b"b")], [Get(leader), Delete(b"x")]
    )
    assert not lost.succeeded
    assert lost.responses == ((kv,), ())

    fenced = await client.txn(
        [Compare(leader, "MOD", "EQUAL", kv.mod_revision), Compare(leader, "VALUE", "EQUAL", b"a")],
        [Put(prefix + b"plan", b"p1")],
    )
    assert fenced.succeeded and fenced.responses == ((),)
    stale = await client.txn([Compare(leader, "VALUE", "NOT_EQUAL", b"a")], [Put(prefix + b"plan", b"p2")])
    assert not stale.succeeded and stale.responses == ()
    plan = await client.get(prefix + b"plan")
    assert plan is not None and plan.value == b"p1"

    gone = await client.txn([Compare(leader, "VERSION", "GREATER", 0)], [Delete(prefix, prefix=True)])
    assert gone.succeeded
    assert await client.range(prefix) == (gone.revision, ())


async def test_lease_expires_without_keepalive_and_stays_with_it(client: EtcdClient, prefix: bytes) -> None:
    kept, dropped = await client.grant(1), await client.grant(1)
    await client.put(prefix + b"kept", b"1", lease=kept)
    await client.put(prefix + b"dropped", b"1", lease=dropped)
    got = await client.get(prefix + b"kept")
    assert got is not None and got.lease == kept
    deadline = time.monotonic() + 4.0
    while await client.get(prefix + b"dropped") is not None:
        assert time.monotonic() < deadline, "a 1 s lease's key outlived 4 s"
        assert await client.keepalive(kept) >= 1
        await asyncio.sleep(0.3)
    assert await client.keepalive(kept) >= 1
    assert await client.get(prefix + b"kept") is not None
    # An expired lease is not an error to etcd's gateway: the keepalive answers TTL 0.
    assert await client.keepalive(dropped) == 0


async def test_revoke_deletes_the_leases_keys(client: EtcdClient, prefix: bytes) -> None:
    lease = await client.grant(60)
    await client.put(prefix + b"a", b"1", lease=lease)
    await client.put(prefix + b"b", b"1", lease=lease)
    await client.revoke(lease)
    assert (await client.range(prefix))[1] == ()
    assert await client.keepalive(lease) == 0
    with pytest.raises(EtcdRequestError, match="lease not found"):
        await client.revoke(lease)


async def test_watch_yields_puts_and_deletes_from_a_revision(client: EtcdClient, prefix: bytes) -> None:
    start = await client.put(prefix + b"a", b"1")
    await client.delete(prefix + b"a")
    seen: list[tuple[str, KeyValue]] = []
    watch = client.watch(prefix, start)
    async with asyncio.timeout(5):
        async for event in watch:
            seen.append(event)
            if len(seen) == 2:
                await client.put(prefix + b"b", b"2")
                await client.put(prefix[:-1] + b"0", b"outside")
            if len(seen) == 3:
                break
    await watch.aclose()
    assert [(kind, kv.key, kv.value) for kind, kv in seen] == [
        ("PUT", prefix + b"a", b"1"),
        ("DELETE", prefix + b"a", b""),
        ("PUT", prefix + b"b", b"2"),
    ]
    assert seen[0][1].mod_revision == start and seen[1][1].mod_revision == start + 1


async def test_watch_ends_unavailable_when_its_member_dies(tmp_path_factory: pytest.TempPathFactory) -> None:
    binary = require_binary("etcd", "Debian's etcd-server")
    with etcd_cluster(binary, tmp_path_factory.mktemp("etcd-dies"), 1) as cluster:
        async with EtcdClient(cluster.endpoints, timeout=TIMEOUT) as client:
            start = await client.put(b"k", b"v")
            seen: list[str] = []
            with pytest.raises(EtcdUnavailable):
                async with asyncio.timeout(5):
                    async for kind, _ in client.watch(b"k", start):
                        seen.append(kind)
                        await asyncio.to_thread(cluster.members[0].kill)
            assert seen == ["PUT"]
