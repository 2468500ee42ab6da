"""A destination is written only under its lease, on a folder, S3 and GCS: a lease another live syncer
holds makes it busy and untouched, an expired one is taken over, a lease taken over mid-copy stops the
work before it promotes, and a finished sync leaves the lease expired."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.weights.buckets import PARTIAL_DIR, Bucket, FileBucket, open_bucket, whole
from controlplane.weights.lease import LEASE_TERMS, Lease, LeaseLost, LeaseTerms, Syncer, acquire, parse_lease
from controlplane.weights.sync import SyncReport, sync_model
from tests.integration.test_sync_race import (
    assert_current_is_whole,
    destination,
    policy_for,
    serial_moto,
    source,
    version_files,
)
from tests.integration.weights_helpers import (
    MODEL,
)

__all__ = ["destination", "serial_moto", "source"]  # fixtures, used here by name

LEASE = f"{MODEL}/LEASE"


def foreign(expires_at: float, version: str = "v9") -> Lease:
    """A lease of a syncer on another machine."""
    return Lease(
        owner="theirs", host="elsewhere", pid=4242, space=None, version=version, expires_at=expires_at
    )


async def read_lease(bucket: Bucket) -> Lease:
    data = await bucket.read_small(LEASE, 4096)
    assert data is not None
    lease = parse_lease(data)
    assert lease is not None, data
    return lease


def only(report: SyncReport) -> tuple[bool, tuple[str, ...], int, bool]:
    (d,) = report.destinations
    return d.ok, d.failures, d.bytes_copied, d.promoted


async def test_a_lease_held_by_a_live_syncer_keeps_every_write_out(
    destination: str, source: str, tmp_path: Path
) -> None:
    bucket = open_bucket(destination)
    v1 = policy_for(tmp_path, source, destination, "v1")
    assert (await sync_model(v1, v1.models[0])).ok
    until = time.time() + 3600
    await bucket.write(LEASE, whole(foreign(until).encode()))
    (held,) = await bucket.list(LEASE)

    # Current and nothing to clean up: nothing to write, so the lease is not needed.
    assert only(await sync_model(v1, v1.models[0])) == (True, (), 0, False)
    v2 = policy_for(tmp_path, source, destination, "v2")
    ok, failures, moved, promoted = only(await sync_model(v2, v2.models[0]))

    assert (ok, moved, promoted) == (False, 0, False)
    assert failures == (
        f"busy: another syncer (elsewhere, pid 4242, version v9) holds the lease until "
        f"{time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime(until))}",
    )
    assert await bucket.list(f"{MODEL}/v2/") == []
    assert await bucket.list(LEASE) == [held]
    await assert_current_is_whole(bucket, "v1")


async def test_a_lease_expired_beyond_the_margin_is_taken_over_and_released(
    destination: str, source: str, tmp_path: Path
) -> None:
    bucket = open_bucket(destination)
    await bucket.write(LEASE, whole(foreign(time.time() - LEASE_TERMS.margin - 60).encode()))
    policy = policy_for(tmp_path, source, destination, "v1")
    started = time.time()
    report = await sync_model(policy, policy.models[0])

    assert only(report) == (True, (), sum(len(d) for d in version_files("v1").values()), True)
    await assert_current_is_whole(bucket, "v1")
    # Left expired for anyone, saying who held it last.
    lease = await read_lease(bucket)
    assert (lease.host, lease.pid, lease.version) == (socket.gethostname(), os.getpid(), "v1")
    assert lease.owner != "theirs"
    assert lease.expires_at < started - LEASE_TERMS.margin


async def test_a_lease_taken_over_mid_copy_stops_the_work_and_never_promotes(
    destination: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source stalls after its first chunk (a hung network read), the test takes the lease over as a
    syncer that presumed this one dead would, and the next renewal must stop the copy."""
    stalled = asyncio.Event()
    original = FileBucket.read

    async def stalling(
        self: FileBucket, key: str, *, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        async for chunk in original(self, key, start=start, length=length):
            yield chunk
            if key.endswith(".bin"):
                stalled.set()
                await asyncio.Event().wait()

    policy = policy_for(tmp_path, source, destination, "v1")
    assert (await sync_model(policy, policy.models[0], only_regions=())).ok  # the source's manifest
    monkeypatch.setattr(FileBucket, "read", stalling)
    bucket = open_bucket(destination)
    terms = LeaseTerms(ttl=0.4, margin=0)
    syncing = asyncio.create_task(sync_model(policy, policy.models[0], lease=terms))
    async with asyncio.timeout(30):
        await stalled.wait()
    await bucket.write(LEASE, whole(foreign(time.time() + 3600, "v1").encode()))
    async with asyncio.timeout(30):
        report = await syncing

    ok, failures, _, promoted = only(report)
    assert (ok, promoted) == (False, False)
    assert failures == ("lease lost: elsewhere, pid 4242, version v1 took it over; stopped, not promoted",), (
        report
    )
    assert await bucket.read_small(f"{MODEL}/CURRENT", 256) is None
    assert await bucket.read_small(f"{MODEL}/v1/manifest.json", 1 << 20) is None
    assert (await read_lease(bucket)).owner == "theirs"  # not released over the new holder's


async def test_a_live_lease_of_a_dead_process_of_this_machine_is_taken_at_once(
    source: str, tmp_path: Path
) -> None:
    """A sync killed (SIGKILL) and run again at once must not wait out the lease it left behind."""
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    destination = f"file://{tmp_path}/dest"
    bucket = open_bucket(destination)
    here = await asyncio.to_thread(Syncer.here)
    killed = Lease(
        owner="killed",
        host=here.host,
        pid=gone.pid,
        space=here.space,
        version="v1",
        expires_at=time.time() + 3600,
    )
    await bucket.write(LEASE, whole(killed.encode()))
    policy = policy_for(tmp_path, source, destination, "v1")

    assert only(await sync_model(policy, policy.models[0]))[::3] == (True, True)
    assert (await read_lease(bucket)).pid == os.getpid()


async def test_retention_waits_for_the_lease_and_the_current_destination_stays_ok(
    destination: str, source: str, tmp_path: Path
) -> None:
    bucket = open_bucket(destination)
    policy = policy_for(tmp_path, source, destination, "v1")
    assert (await sync_model(policy, policy.models[0])).ok
    await bucket.delete(f"{MODEL}/HISTORY")  # the promotion is then recorded again: retention has work
    await bucket.write(LEASE, whole(foreign(time.time() + 3600).encode()))

    (d,) = (await sync_model(policy, policy.models[0])).destinations
    assert (d.ok, d.failures, d.bytes_copied, d.promoted) == (True, (), 0, False)
    assert d.retention is not None
    (problem,) = d.retention.failures
    assert problem.startswith(
        "old versions not collected: busy: another syncer (elsewhere, pid 4242, version v9)"
    )
    assert await bucket.read_small(f"{MODEL}/HISTORY", 4096) is None


async def test_a_lease_that_cannot_be_renewed_is_given_up_once_it_runs_out(tmp_path: Path) -> None:
    bucket = open_bucket(f"file://{tmp_path}/dest")
    terms = LeaseTerms(ttl=0.2, margin=0)
    held = await acquire(bucket, MODEL, "v1", await asyncio.to_thread(Syncer.here), terms)
    # Every write into the folder now fails (its work area is a file): nothing says who holds the lease.
    shutil.rmtree(tmp_path / "dest" / PARTIAL_DIR)
    (tmp_path / "dest" / PARTIAL_DIR).write_bytes(b"")

    async with asyncio.timeout(30):
        with pytest.raises(
            LeaseLost, match=r"lease not renewed before it ran out: .*; stopped, not promoted"
        ):
            await held.keep()
    assert time.time() >= held.lease.expires_at
