"""controlplane.weights.sync and `controlplane sync` against real backends: a folder, moto_server and
fake-gcs-server, across clouds (streamed) and within one (server-side copy, read back)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import boto3
import pytest

from controlplane.cli import main
from controlplane.policy import load_policy
from controlplane.weights.buckets import open_bucket, whole
from controlplane.weights.sync import SyncReport, sync_model
from tests.integration.weights_helpers import (
    FILES,
    MODEL,
    VERSION,
    content,
    gcs_bucket,
    s3_bucket,
    seed,
    the_policy,
    write_policy,
)


@pytest.fixture
async def file_source(tmp_path: Path) -> str:
    """A folder holding the model's version, without a manifest."""
    url = f"file://{tmp_path}/source"
    await seed(url)
    return url


@pytest.fixture(params=["file-s3", "s3-gcs", "gcs-s3", "s3-s3"])
def route(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(source URL, EU destination URL) on real backends, both empty."""
    source_kind, dest_kind = request.param.split("-")
    if "s3" in (source_kind, dest_kind):
        request.getfixturevalue("on_moto")
    if "gcs" in (source_kind, dest_kind):
        request.getfixturevalue("gcs")
    make = {"file": lambda: f"file://{tmp_path}/source", "gcs": gcs_bucket}
    source = make.get(source_kind, lambda: s3_bucket("models-origin", "us-east-1"))()
    dest = gcs_bucket() if dest_kind == "gcs" else s3_bucket("models-eu-west")
    return source, dest


async def assert_holds_the_version(url: str) -> None:
    bucket = open_bucket(url)
    assert await bucket.read_small(f"{MODEL}/CURRENT", 256) == VERSION.encode()
    for path, data in FILES.items():
        held = await content(bucket, f"{MODEL}/{VERSION}/{path}")
        assert hashlib.sha256(held).hexdigest() == hashlib.sha256(data).hexdigest(), path


def counts(report: SyncReport) -> tuple[int, int, int]:
    (d,) = report.destinations
    return len(d.plan.copy), len(d.plan.skip), len(d.plan.repair)


async def test_sync_copies_verifies_promotes_and_a_resync_copies_nothing(
    route: tuple[str, str], tmp_path: Path
) -> None:
    source_url, dest_url = route
    source = await seed(source_url)
    policy = the_policy(tmp_path, source_url, dest_url)

    first = await sync_model(policy, policy.models[0])
    assert first.ok, first
    assert first.manifest_computed
    assert counts(first) == (3, 0, 0)
    assert first.bytes_copied == sum(len(d) for d in FILES.values())
    assert await source.read_small(f"{MODEL}/{VERSION}/manifest.json", 1 << 20) is not None
    await assert_holds_the_version(dest_url)

    again = await sync_model(policy, policy.models[0])
    assert again.ok and not again.manifest_computed
    assert again.bytes_copied == 0
    assert counts(again) == (0, 3, 0)
    assert again.destinations[0].plan.current


async def test_a_same_size_corruption_and_a_deleted_file_are_repaired(
    route: tuple[str, str], tmp_path: Path
) -> None:
    source_url, dest_url = route
    await seed(source_url)
    policy = the_policy(tmp_path, source_url, dest_url)
    assert (await sync_model(policy, policy.models[0])).ok
    dest = open_bucket(dest_url)
    damaged = bytearray(FILES["shards/00002.bin"])
    damaged[1000] ^= 0xFF
    await dest.write(f"{MODEL}/{VERSION}/shards/00002.bin", whole(bytes(damaged)))
    await dest.delete(f"{MODEL}/{VERSION}/config.json")

    report = await sync_model(policy, policy.models[0])
    assert report.ok, report
    plan = report.destinations[0].plan
    assert [e.path for e in plan.copy] == ["config.json"]
    assert [r.entry.path for r in plan.repair] == ["shards/00002.bin"]
    await assert_holds_the_version(dest_url)


@pytest.mark.parametrize("kind", ["file", "s3"])
async def test_a_file_failing_verification_is_never_promoted(kind: str, tmp_path: Path, on_moto: str) -> None:
    # file source: the bytes stream through the checker; s3 source: a server-side copy, then read back.
    source_url = f"file://{tmp_path}/source" if kind == "file" else s3_bucket("models-origin", "us-east-1")
    dest_url = s3_bucket("models-eu-west")
    source = await seed(source_url)
    policy = the_policy(tmp_path, source_url, dest_url)
    computed = await sync_model(policy, policy.models[0], only_regions=())
    assert computed.manifest_computed and computed.ok
    damaged = bytearray(FILES["shards/00002.bin"])
    damaged[5] ^= 0x01
    await source.write(f"{MODEL}/{VERSION}/shards/00002.bin", whole(bytes(damaged)))

    report = await sync_model(policy, policy.models[0])
    assert not report.ok
    (result,) = report.destinations
    assert not result.promoted
    assert any("sha256" in f and "00002.bin" in f for f in result.failures), result.failures
    dest = open_bucket(dest_url)
    keys = [i.key for i in await dest.list(MODEL)]
    assert f"{MODEL}/CURRENT" not in keys
    assert f"{MODEL}/{VERSION}/manifest.json" not in keys
    assert f"{MODEL}/{VERSION}/shards/00002.bin" not in keys


def test_an_eu_only_model_is_never_written_to_a_us_bucket(
    tmp_path: Path, on_moto: str, file_source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source_url = file_source
    eu, us = s3_bucket("models-eu-west"), s3_bucket("models-us-east", "us-east-1")
    policy = write_policy(tmp_path, source_url, eu, us, jurisdictions="EU")

    assert main(["sync", "--policy", str(policy)]) == 1
    out = capsys.readouterr().out
    assert "us-east: blocked (model llama may be stored only in EU; region us-east is in US)" in out
    assert "eu-west: copy 3, skip 0, repair 0" in out
    assert (
        boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket="models-us-east").get("KeyCount")
        == 0
    )
    asyncio.run(assert_holds_the_version(eu))


def test_dry_run_writes_nothing_at_all(
    tmp_path: Path, on_moto: str, file_source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source_url = file_source
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "source").rglob("*"))
    eu = s3_bucket("models-eu-west")
    policy = write_policy(tmp_path, source_url, eu)

    assert main(["sync", "--policy", str(policy), "--dry-run"]) == 1
    assert "eu-west: copy 3, skip 0, repair 0, 0 bytes copied: not current" in capsys.readouterr().out
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "source").rglob("*")) == before
    assert (
        boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket="models-eu-west").get("KeyCount")
        == 0
    )

    assert main(["sync", "--policy", str(policy)]) == 0
    assert main(["sync", "--policy", str(policy), "--model", MODEL]) == 0
    assert "eu-west: copy 0, skip 3, repair 0, 0 bytes copied: current" in capsys.readouterr().out


async def test_current_moves_from_an_older_version_only_under_its_precondition(
    route: tuple[str, str], tmp_path: Path
) -> None:
    source_url, dest_url = route
    await seed(source_url)
    dest = open_bucket(dest_url)
    await dest.write(f"{MODEL}/CURRENT", whole(b"v0"))
    policy = the_policy(tmp_path, source_url, dest_url)

    report = await sync_model(policy, policy.models[0])
    assert report.ok and report.destinations[0].promoted, report
    await assert_holds_the_version(dest_url)


async def test_an_unreachable_region_fails_alone(tmp_path: Path, on_moto: str, file_source: str) -> None:
    source_url = file_source
    eu = s3_bucket("models-eu-west")
    policy = load_policy(str(write_policy(tmp_path, source_url, eu, "s3://no-such-bucket/models")))

    report = await sync_model(policy, policy.models[0])
    assert not report.ok
    (us,) = [d for d in report.destinations if d.plan.region == "us-east"]
    assert us.failures and "no-such-bucket" in us.failures[0] and not us.promoted
    assert [d.plan.region for d in report.destinations if d.promoted] == ["eu-west"]
    await assert_holds_the_version(eu)
