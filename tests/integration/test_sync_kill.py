"""A `controlplane sync` process killed with SIGKILL mid-transfer: nothing is promoted, and a rerun moves
only what had not landed (the parts S3 recorded stay, and are not sent again).

The sync runs as its own process, as an operator runs it, against moto_server behind the fault proxy,
which slows every request so the kill lands between parts; the test watches moto directly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from chaos.faultproxy import FaultProxy
from controlplane.weights import buckets
from controlplane.weights.buckets import open_bucket, whole
from controlplane.weights.sync import sync_model
from tests.integration.weights_helpers import MODEL, VERSION, s3_bucket, the_policy

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: several parts from a small shard
SHARD = os.urandom(6 * PART)
# The CLI as an operator runs it, with 5 MiB parts so that a small shard makes several.
SYNC = textwrap.dedent(
    f"""
    import sys
    from controlplane.weights import buckets
    buckets.PART_SIZE = {PART}
    from controlplane.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def recorded_parts(s3: Any, bucket: str) -> int:
    """Parts of multipart uploads in progress in `bucket`."""
    parts = 0
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        listed = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        parts += len(listed.get("Parts", []))
    return parts


async def test_a_sync_killed_between_parts_promotes_nothing_and_its_rerun_sends_only_the_rest(
    tmp_path: Path, on_moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buckets, "PART_SIZE", PART)  # the rerun cuts the parts as the killed run did
    source = open_bucket(f"file://{tmp_path}/source")
    await source.write(f"{MODEL}/{VERSION}/shards/00001.bin", whole(SHARD))
    dest_url = s3_bucket("models-killed")
    bucket = dest_url.split("/")[2]
    policy_path = tmp_path / "policy.yaml"
    policy = the_policy(tmp_path, f"file://{tmp_path}/source", dest_url)
    s3 = boto3.client("s3", region_name="us-east-1")

    async with FaultProxy(on_moto) as proxy:
        proxy.slow(0.4)  # every request: six parts take seconds, so the kill lands between two of them
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SYNC,
            "sync",
            "--policy",
            str(policy_path),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while (landed := await asyncio.to_thread(recorded_parts, s3, bucket)) < 2:
                assert child.returncode is None, "the sync ended before two parts landed"
                assert time.monotonic() < deadline, "no parts landed within 60 s"
                await asyncio.sleep(0.05)
            child.send_signal(signal.SIGKILL)
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()

    assert child.returncode == -signal.SIGKILL
    destination = open_bucket(dest_url)
    assert await destination.read_small(f"{MODEL}/CURRENT", 64) is None  # nothing promoted
    assert await destination.read_small(f"{MODEL}/{VERSION}/manifest.json", 1 << 20) is None
    held = await asyncio.to_thread(recorded_parts, s3, bucket)
    assert 2 <= held < len(SHARD) // PART

    report = await sync_model(policy, policy.models[0])
    assert report.ok, report
    # Only the parts that had not landed are sent (the source manifest is read, never written twice).
    assert report.bytes_copied == len(SHARD) - held * PART
    assert await destination.read_small(f"{MODEL}/CURRENT", 64) == VERSION.encode()
    got = b"".join([c async for c in destination.read(f"{MODEL}/{VERSION}/shards/00001.bin")])
    assert got == SHARD
    assert landed >= 2
