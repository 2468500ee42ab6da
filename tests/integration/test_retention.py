"""weights/retention.py against real backends (a folder, moto_server and fake-gcs-server): the promotion
history a bucket keeps, and the old versions deleted once enough newer ones have been current."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.policy import load_policy
from controlplane.weights.buckets import Bucket, open_bucket, whole
from controlplane.weights.retention import history_key, retain
from controlplane.weights.sync import sync_model
from tests.integration.weights_helpers import (
    MODEL,
    VERSION,
    gcs_bucket,
    s3_bucket,
    write_policy,
)

FILES = {"config.json": b'{"layers": 2}\n', "shards/00001.bin": b"weights " * 1000}


async def seed_version(source: Bucket, version: str) -> None:
    for path, data in FILES.items():
        await source.write(f"{MODEL}/{version}/{path}", whole(data + version.encode()))


async def promote(tmp_path: Path, source_url: str, dest_url: str, version: str, keep: int) -> tuple[str, ...]:
    """Sync `version` as a policy naming it and keeping `keep` older versions would; returns the versions
    the sync's retention deleted once `version` was current."""
    path = write_policy(tmp_path, source_url, dest_url)
    text = path.read_text().replace(f"version: '{VERSION}'", f"version: '{version}'")
    path.write_text(
        text.replace("sync: {concurrency: 2}", f"sync: {{concurrency: 2, keep_versions: {keep}}}")
    )
    policy = load_policy(str(path))
    report = await sync_model(policy, policy.models[0])
    assert report.ok, report
    (result,) = report.destinations
    assert result.retention is not None and result.retention.failures == (), result
    return result.retention.deleted


async def versions_held(bucket: Bucket) -> dict[str, set[str]]:
    held: dict[str, set[str]] = {}
    for info in await bucket.list(f"{MODEL}/"):
        parts = info.key.split("/", 2)
        if len(parts) == 3:
            held.setdefault(parts[1], set()).add(parts[2])
    return held


@pytest.fixture(params=["file", "s3", "gs"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        request.getfixturevalue("on_moto")
        return s3_bucket("models-eu-west")
    if request.param == "gs":
        request.getfixturevalue("gcs")
        return gcs_bucket()
    return f"file://{tmp_path}/dest"


async def test_an_old_version_goes_once_keep_newer_ones_have_been_current(
    destination: str, tmp_path: Path
) -> None:
    source_url = f"file://{tmp_path}/source"
    source = open_bucket(source_url)
    for version in ("v1", "v2", "v3"):
        await seed_version(source, version)
    dest = open_bucket(destination)
    # A folder that was never current here: another syncer may be copying it right now.
    await dest.write(f"{MODEL}/v9/shards/00001.bin", whole(b"half a copy"))

    assert await promote(tmp_path, source_url, destination, "v1", keep=1) == ()
    assert await promote(tmp_path, source_url, destination, "v2", keep=1) == ()
    assert await promote(tmp_path, source_url, destination, "v3", keep=1) == ("v1",)

    everything = {"manifest.json", *FILES}
    assert await versions_held(dest) == {"v2": everything, "v3": everything, "v9": {"shards/00001.bin"}}
    # v1 is gone from the history too: were it copied again, it would be a version never current here.
    assert await dest.read_small(history_key(MODEL), 1024) == b"v2\nv3\n"
    assert await dest.read_small(f"{MODEL}/CURRENT", 256) == b"v3"

    # Rolled back to v2: v3 stays as the version to roll forward to; with keep=0 it would go.
    assert await promote(tmp_path, source_url, destination, "v2", keep=1) == ()
    assert await dest.read_small(history_key(MODEL), 1024) == b"v3\nv2\n"
    assert await promote(tmp_path, source_url, destination, "v2", keep=0) == ("v3",)
    assert set(await versions_held(dest)) == {"v2", "v9"}
    assert await dest.read_small(history_key(MODEL), 1024) == b"v2\n"


async def test_retention_records_nothing_and_deletes_nothing_for_a_version_not_current(
    destination: str, tmp_path: Path
) -> None:
    source_url = f"file://{tmp_path}/source"
    source = open_bucket(source_url)
    for version in ("v1", "v2"):
        await seed_version(source, version)
    await promote(tmp_path, source_url, destination, "v1", keep=0)
    await promote(tmp_path, source_url, destination, "v2", keep=0)
    dest = open_bucket(destination)
    # A syncer that lost the race for CURRENT (it names v2) must not record v1 nor collect on its behalf.
    retention = await retain(dest, MODEL, "v1", 0, asyncio.Semaphore(2))
    assert retention.history == ("v2",) and retention.deleted == () and retention.failures == ()
    assert await dest.read_small(history_key(MODEL), 1024) == b"v2\n"


@contextlib.contextmanager
def undeletable(folder: Path) -> Iterator[None]:
    """Nothing in `folder` can be deleted, not even by root, while the block runs (chattr +i)."""
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode != 0:
        pytest.skip(
            "chattr +i is not available here (needs CAP_LINUX_IMMUTABLE and a filesystem that has it)"
        )
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


async def test_a_failed_delete_is_reported_and_the_marker_went_first(tmp_path: Path) -> None:
    source_url, dest_url = f"file://{tmp_path}/source", f"file://{tmp_path}/dest"
    source, dest = open_bucket(source_url), open_bucket(dest_url)
    for version in ("v1", "v2"):
        await seed_version(source, version)
    await promote(tmp_path, source_url, dest_url, "v1", keep=0)
    path = write_policy(tmp_path, source_url, dest_url)
    path.write_text(path.read_text().replace(f"version: '{VERSION}'", "version: 'v2'"))
    policy = load_policy(str(path))
    assert (await sync_model(policy, policy.models[0])).ok

    with undeletable(tmp_path / "dest" / MODEL / "v1" / "shards"):
        retention = await retain(dest, MODEL, "v2", 0, asyncio.Semaphore(2))
    assert retention.deleted == ()
    assert len(retention.failures) == 1 and "shards/00001.bin" in retention.failures[0], retention
    # What is left of v1 has no marker: no sync or server takes it for a verified version. It stays in the
    # history, so the next run finishes the job.
    assert (await versions_held(dest))["v1"] == {"shards/00001.bin"}
    assert retention.history == ("v1", "v2")

    again = await retain(dest, MODEL, "v2", 0, asyncio.Semaphore(2))
    assert again.deleted == ("v1",) and again.failures == () and again.history == ("v2",)
    assert set(await versions_held(dest)) == {"v2"}
