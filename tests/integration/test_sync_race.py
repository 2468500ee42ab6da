"""Two syncers of one model into one bucket at once, on a folder, S3 and GCS: one holds the destination's
lease and promotes, the other is told the destination is busy, and CURRENT never names a version that is
not whole and verified there.

S3 decides a conditional write atomically. moto checks the condition and then stores the object without a
lock, so two requests handled at once by its threads could both pass; the S3 cases run against a moto
serving one request at a time, where the check and the store cannot interleave, as on S3.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.emulators import EmulatorDidNotStart, emulator
from controlplane.policy import Policy, load_policy
from controlplane.weights.buckets import PARTIAL_DIR, Bucket, PreconditionFailed, open_bucket, whole
from controlplane.weights.manifest import parse_manifest
from controlplane.weights.sync import SyncReport, sync_model
from tests.fakes.moto import reset_moto
from tests.integration.weights_helpers import (
    FILES,
    MODEL,
    VERSION,
    content,
    gcs_bucket,
    s3_bucket,
    write_policy,
)

SERIAL_MOTO = (
    "import sys\n"
    "from moto.server import DomainDispatcherApplication, create_backend_app\n"
    "from werkzeug.serving import run_simple\n"
    "run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)\n"
)
LOST = "CURRENT changed while syncing, not promoted"
BUSY = "busy: another syncer ("


@pytest.fixture(scope="module")
def serial_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    try:
        with emulator(
            "moto (one request at a time)",
            lambda url, port: [sys.executable, "-c", SERIAL_MOTO, str(port)],
            "/moto-api/",
            log,
        ) as url:
            yield url
    except EmulatorDidNotStart as exc:
        pytest.fail(str(exc))


@pytest.fixture(params=["file", "s3", "gs"])
def destination(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "s3":
        request.getfixturevalue("aws_credentials")
        url = request.getfixturevalue("serial_moto")
        reset_moto(url)
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        return s3_bucket("models-eu-west")
    if request.param == "gs":
        request.getfixturevalue("gcs")
        return gcs_bucket()
    return f"file://{tmp_path}/dest"


def version_files(version: str) -> dict[str, bytes]:
    """Each version's own bytes, the sizes of test_sync's (one file takes the multipart path)."""
    return {path: hashlib.sha256(version.encode()).digest() + data[32:] for path, data in FILES.items()}


@pytest.fixture
async def source(tmp_path: Path) -> str:
    url = f"file://{tmp_path}/source"
    bucket = open_bucket(url)
    for version in ("v1", "v2"):
        for path, data in version_files(version).items():
            await bucket.write(f"{MODEL}/{version}/{path}", whole(data))
    return url


def policy_file(tmp_path: Path, source: str, destination: str, version: str) -> Path:
    path = write_policy(tmp_path, source, destination)
    text = path.read_text().replace(f"version: '{VERSION}'", f"version: '{version}'")
    mine = tmp_path / f"policy-{version}.yaml"
    mine.write_text(text)
    return mine


def policy_for(tmp_path: Path, source: str, destination: str, version: str) -> Policy:
    return load_policy(str(policy_file(tmp_path, source, destination, version)))


async def assert_current_is_whole(bucket: Bucket, version: str) -> None:
    """CURRENT names `version`, its marker is there and every file it lists holds that version's bytes."""
    assert await bucket.read_small(f"{MODEL}/CURRENT", 256) == version.encode()
    marker = await bucket.read_small(f"{MODEL}/{version}/manifest.json", 1 << 20)
    assert marker is not None
    manifest = parse_manifest(marker, model=MODEL, version=version)
    expected = version_files(version)
    assert {e.path for e in manifest.files} == set(expected)
    for entry in manifest.files:
        held = await content(bucket, f"{MODEL}/{version}/{entry.path}")
        assert (
            hashlib.sha256(held).hexdigest()
            == entry.sha256
            == hashlib.sha256(expected[entry.path]).hexdigest()
        )


def outcome(report: SyncReport) -> str:
    (d,) = report.destinations
    if d.promoted and d.ok:
        return "promoted"
    if d.ok:
        return "current"
    (failure,) = d.failures
    if failure.startswith(BUSY):
        assert d.bytes_copied == 0, report
        return "busy"
    assert LOST in failure, report
    return "lost"


async def test_two_syncers_of_one_version_agree(destination: str, source: str, tmp_path: Path) -> None:
    policy = policy_for(tmp_path, source, destination, "v1")
    reports = await asyncio.gather(*(sync_model(policy, policy.models[0]) for _ in range(2)))

    # One holds the lease and promotes; the other found it held, or (had the first been done by then) found
    # the version current when it looked again under the lease. Either way only one moved any bytes.
    assert sorted(outcome(r) for r in reports) in (["busy", "promoted"], ["current", "promoted"]), reports
    assert sum(r.bytes_copied for r in reports) == sum(len(d) for d in version_files("v1").values()), reports
    bucket = open_bucket(destination)
    await assert_current_is_whole(bucket, "v1")
    (marker,) = await bucket.list(f"{MODEL}/v1/manifest.json")
    again = await sync_model(policy, policy.models[0])
    assert again.ok and again.bytes_copied == 0, again
    assert await bucket.list(f"{MODEL}/v1/manifest.json") == [marker]
    await assert_current_is_whole(bucket, "v1")


async def test_two_syncers_of_different_versions_one_wins(
    destination: str, source: str, tmp_path: Path
) -> None:
    policies = [policy_for(tmp_path, source, destination, v) for v in ("v1", "v2")]
    reports = await asyncio.gather(*(sync_model(p, p.models[0]) for p in policies))

    # Both looked before either wrote (the copies take longer than looking): one takes the lease and
    # promotes, the other finds it held and writes nothing.
    outcomes = {r.version: outcome(r) for r in reports}
    assert sorted(outcomes.values()) == ["busy", "promoted"], reports
    (winner,) = [v for v, o in outcomes.items() if o == "promoted"]
    (loser,) = [r for r in reports if r.version != winner]
    assert not loser.ok
    await assert_current_is_whole(open_bucket(destination), winner)


def lock_waiters(inode: int) -> set[int]:
    """The processes blocked on an flock of the file with this inode: /proc/locks lists each waiting thread
    as `-> FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> ...`."""
    lines = Path("/proc/locks").read_text().splitlines()
    return {
        int(m[1]) for line in lines if (m := re.search(rf"-> FLOCK\s+\S+\s+\S+\s+(\d+)\s+\S+:{inode} ", line))
    }


async def test_two_processes_racing_on_a_folder(source: str, tmp_path: Path) -> None:
    destination = f"file://{tmp_path}/dest"
    paths = [policy_file(tmp_path, source, destination, v) for v in ("v1", "v2")]
    program = (
        "import sys\nfrom controlplane.cli import main\nsys.exit(main(['sync', '--policy', sys.argv[1]]))\n"
    )
    # The folder's commit lock, which every write into it takes to land, is held until both processes
    # wait on it: both have then surveyed the destination before either can write anything (the lease
    # first), whatever the scheduler does, and both will try to create the lease.
    lock_path = tmp_path / "dest" / PARTIAL_DIR / "lock"
    lock_path.parent.mkdir(parents=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", program, str(path), stdout=asyncio.subprocess.PIPE
            )
            for path in paths
        ]
        inode, pids = os.fstat(lock.fileno()).st_ino, {p.pid for p in processes}
        async with asyncio.timeout(60):
            while lock_waiters(inode) != pids:  # noqa: ASYNC110 - the kernel has no event to wait on
                await asyncio.sleep(0.05)
        fcntl.flock(lock, fcntl.LOCK_UN)
    async with asyncio.timeout(60):
        outputs = await asyncio.gather(*(p.communicate() for p in processes))
    codes = [await p.wait() for p in processes]
    texts = [out.decode() for out, _ in outputs]

    assert sorted(codes) == [0, 1], texts
    winner = ("v1", "v2")[codes.index(0)]
    assert "promoted" in texts[codes.index(0)]
    assert BUSY in texts[codes.index(1)]
    assert LOST not in texts[codes.index(1)]
    await assert_current_is_whole(open_bucket(destination), winner)


async def test_current_written_by_a_sync_takes_no_write_pinned_to_its_old_version(
    destination: str, source: str, tmp_path: Path
) -> None:
    bucket = open_bucket(destination)
    first = policy_for(tmp_path, source, destination, "v1")
    assert (await sync_model(first, first.models[0])).ok
    (stale,) = await bucket.list(f"{MODEL}/CURRENT")
    second = policy_for(tmp_path, source, destination, "v2")
    assert (await sync_model(second, second.models[0])).ok

    # A syncer that read CURRENT while it named v1 cannot put v1 back over v2.
    with pytest.raises(PreconditionFailed):
        await bucket.write(f"{MODEL}/CURRENT", whole(b"v1"), if_match=stale.version)
    await assert_current_is_whole(bucket, "v2")
