"""The etcd client (controlplane.coord.etcd) against real etcd 3.4 processes on loopback: keys, txn, leases,
watches, member loss on a 3-member cluster, and endpoints that answer badly or never."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from chaos.loopback import free_port, serve_app, stop_app
from controlplane.coord.etcd import (
    MAX_BODY,
    WATCH_IDLE_TIMEOUTS,
    Compare,
    Delete,
    EtcdClient,
    EtcdRequestError,
    EtcdUnavailable,
    Get,
    KeyValue,
    Put,
    prefix_end,
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
        [
            Compare(leader, "CREATE", "EQUAL", kv.create_revision),
            Compare(leader, "MOD", "EQUAL", kv.mod_revision),
            Compare(leader, "VALUE", "EQUAL", b"a"),
        ],
        [Put(prefix + b"plan", b"p1")],
    )
    assert fenced.succeeded and fenced.responses == ((),)
    for stale_compare in (
        Compare(leader, "VALUE", "NOT_EQUAL", b"a"),
        Compare(leader, "CREATE", "LESS", kv.create_revision),
        Compare(leader, "MOD", "GREATER", kv.mod_revision),
    ):
        stale = await client.txn([stale_compare], [Put(prefix + b"plan", b"p2")])
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
    held = await client.txn([Compare(prefix + b"a", "LEASE", "EQUAL", lease)], [Get(prefix, prefix=True)])
    assert held.succeeded and [kv.lease for kv in held.responses[0]] == [lease, lease]
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
            first = await client.put(b"k", b"v")
            start = await client.put(b"k", b"w")
            await asyncio.to_thread(cluster.compact, start)
            with pytest.raises(EtcdRequestError, match=f"compacted at {start}"):
                async with asyncio.timeout(5):
                    async for _ in client.watch(b"k", first):
                        pass
            seen: list[str] = []
            with pytest.raises(EtcdUnavailable):
                async with asyncio.timeout(5):
                    async for kind, _ in client.watch(b"k", start):
                        seen.append(kind)
                        await asyncio.to_thread(cluster.members[0].kill)
            assert seen == ["PUT"]


CLUSTER_TIMEOUT = 1.0


async def until_healthy(cluster: EtcdCluster) -> None:
    await asyncio.to_thread(cluster.wait_healthy)


async def test_a_stopped_member_costs_one_timeout_then_calls_go_elsewhere(
    etcd_cluster: EtcdCluster, prefix: bytes
) -> None:
    # The raft leader first: its loss also costs an election before the others take writes.
    first = await asyncio.to_thread(etcd_cluster.leader)
    endpoints = [first.url, *(m.url for m in etcd_cluster.members if m is not first)]
    async with EtcdClient(endpoints, timeout=CLUSTER_TIMEOUT) as client:
        await client.put(prefix + b"k", b"before")  # through the first endpoint: the last good one now
        first.stop()
        try:
            started = time.monotonic()
            await client.put(prefix + b"k", b"after")
            # one timeout on the stopped member, then a new raft leader if it was the leader
            assert time.monotonic() - started < 3 * CLUSTER_TIMEOUT + 3.0
            started = time.monotonic()
            got = await client.get(prefix + b"k")
            assert got is not None and got.value == b"after"
            assert time.monotonic() - started < CLUSTER_TIMEOUT, (
                "the next call waited on the stopped member again"
            )
        finally:
            first.cont()
            await until_healthy(etcd_cluster)
        await client.delete(prefix, prefix=True)


async def test_every_member_stopped_is_unavailable_within_the_timeouts(etcd_cluster: EtcdCluster) -> None:
    async with EtcdClient(etcd_cluster.endpoints, timeout=TIMEOUT) as client:
        for member in etcd_cluster.members:
            member.stop()
        try:
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable, match="no etcd endpoint answered"):
                await client.get(b"/anything")
            assert time.monotonic() - started < len(etcd_cluster.members) * TIMEOUT + 2.0
        finally:
            for member in etcd_cluster.members:
                member.cont()
            await until_healthy(etcd_cluster)


async def test_a_watch_on_a_stopped_member_ends_unavailable(etcd_cluster: EtcdCluster, prefix: bytes) -> None:
    """A SIGSTOPped member keeps the stream open and says nothing: the watch asks it and gives up."""
    member = etcd_cluster.members[-1]
    async with EtcdClient([member.url], timeout=TIMEOUT) as client:
        start = await client.put(prefix, b"1")
        seen: list[str] = []
        try:
            with pytest.raises(EtcdUnavailable, match="does not answer"):
                async with asyncio.timeout((WATCH_IDLE_TIMEOUTS + 1) * TIMEOUT + 3.0):
                    async for kind, _ in client.watch(prefix, start):
                        seen.append(kind)
                        member.stop()
        finally:
            member.cont()
            await until_healthy(etcd_cluster)
        assert seen == ["PUT"]
        await client.delete(prefix)


@asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts and reads, and never answers: a hung host, a black-holing proxy."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_refused_endpoint_is_skipped_at_once_even_for_a_txn(etcd: EtcdCluster, prefix: bytes) -> None:
    async with EtcdClient([f"http://127.0.0.1:{free_port()}", *etcd.endpoints], timeout=30) as client:
        async with asyncio.timeout(5):  # far below the 30 s timeout: nothing waited on the refused port
            result = await client.txn([Compare(prefix, "CREATE", "EQUAL", 0)], [Put(prefix, b"1")])
        assert result.succeeded
        await client.delete(prefix)


async def test_a_silent_endpoint_times_out_and_a_txn_is_not_retried_elsewhere(
    etcd: EtcdCluster, prefix: bytes
) -> None:
    async with silent_server() as silent:
        async with EtcdClient([silent], timeout=TIMEOUT) as alone:
            with pytest.raises(EtcdUnavailable, match="timed out"):
                await alone.get(prefix)
        async with EtcdClient([silent, *etcd.endpoints], timeout=TIMEOUT) as client:
            await client.put(prefix, b"retried on the next endpoint")
        async with EtcdClient([silent, *etcd.endpoints], timeout=TIMEOUT) as client:
            # the silent one may have applied it: a second try would see its own put as a lost compare
            with pytest.raises(EtcdUnavailable, match="outcome unknown"):
                await client.txn([Compare(prefix, "VERSION", "EQUAL", 1)], [Put(prefix, b"txn")])
            got = await client.get(prefix)  # the next call starts from the next endpoint
            assert got is not None and got.value == b"retried on the next endpoint"
        async with EtcdClient([silent], timeout=TIMEOUT) as alone:
            with pytest.raises(EtcdUnavailable):
                async for _ in alone.watch(prefix, 1):
                    pass
    async with EtcdClient(etcd.endpoints) as client:
        await client.delete(prefix)


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    chunk = b'{"kvs":[' + b" " * 65536
    while True:
        await response.write(chunk)


async def oversized(request: web.Request) -> web.Response:
    return web.Response(
        body=b'{"header":{}, "pad":"' + b"x" * MAX_BODY + b'"}', content_type="application/json"
    )


async def endless_line(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b'{"result":{"created":true}}\n')
    while True:
        await response.write(b"x" * 65536)


def answering(status: int, body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    return handler


@asynccontextmanager
async def hostile(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/{path:.*}", handler)
    runner, port = await serve_app(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await stop_app(runner, drop_connections=True)


@pytest.mark.parametrize(
    ("handler", "error", "match"),
    [
        (endless, EtcdRequestError, "over 1048576 bytes"),
        (oversized, EtcdRequestError, "over 1048576 bytes"),
        (answering(200, b'{"kvs": [{"key": "Zm9v"'), EtcdRequestError, "malformed JSON"),
        (answering(200, b"[1, 2]"), EtcdRequestError, "expected a JSON object"),
        (answering(200, b'{"kvs": [{"key": "not base64!"}]}'), EtcdRequestError, "bad base64"),
        (
            answering(200, b'{"kvs": [{"key": "Zm9v", "version": "one"}]}'),
            EtcdRequestError,
            "expected an integer",
        ),
        (answering(503, b'{"error": "etcdserver: no leader", "code": 14}'), EtcdUnavailable, "no leader"),
        (
            answering(404, b'{"error": "etcdserver: requested lease not found", "code": 5}'),
            EtcdRequestError,
            "lease",
        ),
    ],
    ids=["endless", "oversized", "truncated", "not-an-object", "bad-base64", "bad-int", "503", "404"],
)
async def test_a_hostile_answer_is_refused_in_time(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], error: type[Exception], match: str
) -> None:
    async with hostile(handler) as url, EtcdClient([url], timeout=5) as client:
        async with asyncio.timeout(4):  # refused on what arrived, not by the client's 5 s timer
            with pytest.raises(error, match=match):
                await client.get(b"foo")


async def one_line_then_eof(request: web.Request) -> web.Response:
    return web.Response(body=b'{"result":{"created":true}}\n', content_type="application/json")


async def error_line(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b'{"result":{"created":true}}\n{"error":{"grpc_code":14,"message":"no leader"}}\n')
    return response


@pytest.mark.parametrize(
    ("handler", "error", "match"),
    [
        (endless_line, EtcdRequestError, "over 1048576 bytes"),
        (one_line_then_eof, EtcdUnavailable, "stream ended"),
        (error_line, EtcdUnavailable, "no leader"),
        (answering(503, b'{"error": "no leader"}'), EtcdUnavailable, "503"),
        (answering(400, b'{"error": "bad"}'), EtcdRequestError, "400"),
    ],
    ids=["line-over-cap", "eof", "error-line", "503", "400"],
)
async def test_a_hostile_watch_stream_ends_the_watch(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], error: type[Exception], match: str
) -> None:
    async with hostile(handler) as url, EtcdClient([url], timeout=5) as client:
        async with asyncio.timeout(4):
            with pytest.raises(error, match=match):
                async for _ in client.watch(b"foo", 1):
                    pass


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"/a/", b"/a0"), (b"a\xff", b"b"), (b"a\xfe\xff\xff", b"a\xff"), (b"\xff\xff", b"\0"), (b"", b"\0")],
)
def test_prefix_end_bounds_exactly_the_prefix(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end
