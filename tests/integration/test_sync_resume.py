"""A sync interrupted mid-transfer resumes: the rerun moves only what the first run did not land, the
result verifies, and nothing is promoted before the end (CURRENT keeps naming the old version).

The interruption is made deterministic in-process: the source's reads (or S3's UploadPartCopy) fail after
a set number of bytes (or parts), leaving what a SIGKILL at that point would leave: parts recorded by S3,
or a partial file in a folder bucket."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
from botocore.exceptions import EndpointConnectionError

from controlplane.cli import main
from controlplane.policy import Policy
from controlplane.weights import buckets
from controlplane.weights.buckets import PARTIAL_DIR, Bucket, BucketError, FileBucket, open_bucket, whole
from controlplane.weights.progress import TransferProgress
from controlplane.weights.sync import sync_model
from tests.integration.weights_helpers import (
    MODEL,
    VERSION,
    s3_bucket,
    the_policy,
)

MiB = 1024 * 1024
SHARD = os.urandom(13 * MiB)  # with 5 MiB parts: 5 + 5 + 3
CONFIG = b'{"layers": 32}\n'
TOTAL = len(SHARD) + len(CONFIG)


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """5 MiB parts (S3's smallest) and 1 MiB reads, so a few MiB make several parts and a break lands
    between them."""
    monkeypatch.setattr(buckets, "PART_SIZE", 5 * MiB)
    monkeypatch.setattr(buckets, "RESUMABLE_COPY", 5 * MiB)
    monkeypatch.setattr(buckets, "COPY_PART", 5 * MiB)
    monkeypatch.setattr(buckets, "CHUNK", MiB)


async def seed(url: str) -> Bucket:
    bucket = open_bucket(url)
    await bucket.write(f"{MODEL}/{VERSION}/shards/00001.bin", whole(SHARD))
    await bucket.write(f"{MODEL}/{VERSION}/config.json", whole(CONFIG))
    return bucket


async def prepared(tmp_path: Path, source_url: str, dest_url: str) -> Policy:
    """The source seeded and its manifest stored; the destination holding an older version as CURRENT."""
    await seed(source_url)
    policy = the_policy(tmp_path, source_url, dest_url)
    assert (await sync_model(policy, policy.models[0], only_regions=())).ok
    await open_bucket(dest_url).write(f"{MODEL}/CURRENT", whole(b"v0"))
    return policy


def source_reads_break_after(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """Every read of a folder bucket fails once `limit` bytes of it went through (the shard's; the
    config is smaller)."""
    original = FileBucket.read

    async def breaking(
        self: FileBucket, key: str, *, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in original(self, key, start=start, length=length):
            if sent >= limit:
                raise BucketError(f"{key}: the connection dropped", transient=True)
            sent += len(chunk)
            yield chunk

    monkeypatch.setattr(FileBucket, "read", breaking)


class Heard:
    """What a sync tells its progress."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str, int, int]] = []
        self.bytes_moved = 0
        self.done: list[tuple[int, int, bool]] = []

    def destination(self, model: str, region: str, files: int, total: int) -> TransferProgress:
        self.started.append((model, region, files, total))
        return self

    def moved(self, nbytes: int) -> None:
        self.bytes_moved += nbytes

    def finished(self, size: int, moved: int, *, ok: bool) -> None:
        self.done.append((size, moved, ok))


async def assert_not_promoted(dest_url: str) -> None:
    dest = open_bucket(dest_url)
    assert await dest.read_small(f"{MODEL}/CURRENT", 64) == b"v0"
    assert await dest.read_small(f"{MODEL}/{VERSION}/manifest.json", 1 << 20) is None


async def assert_promoted(dest_url: str) -> None:
    dest = open_bucket(dest_url)
    assert await dest.read_small(f"{MODEL}/CURRENT", 64) == VERSION.encode()
    held = b"".join([c async for c in dest.read(f"{MODEL}/{VERSION}/shards/00001.bin")])
    assert hashlib.sha256(held).digest() == hashlib.sha256(SHARD).digest()


async def test_a_streamed_upload_to_s3_resumes_from_its_recorded_parts(
    tmp_path: Path, on_moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest_url = s3_bucket("models-eu-west")
    policy = await prepared(tmp_path, f"file://{tmp_path}/source", dest_url)

    with monkeypatch.context() as broken:
        source_reads_break_after(broken, 11 * MiB)
        first = await sync_model(policy, policy.models[0])
    assert not first.ok and not first.destinations[0].promoted
    assert first.destinations[0].failed_files == ("shards/00001.bin",)
    await assert_not_promoted(dest_url)
    s3 = boto3.client("s3", region_name="us-east-1")
    (upload,) = s3.list_multipart_uploads(Bucket="models-eu-west")["Uploads"]
    parts = s3.list_parts(Bucket="models-eu-west", Key=upload["Key"], UploadId=upload["UploadId"])["Parts"]
    assert [p["Size"] for p in parts] == [5 * MiB, 5 * MiB]

    heard = Heard()
    again = await sync_model(policy, policy.models[0], progress=heard)
    assert again.ok and again.destinations[0].promoted, again
    # The last part only: the config the first run landed is verified in place, not sent again.
    assert again.bytes_copied == 3 * MiB
    assert heard.started == [("llama", "eu-west", 2, TOTAL)]
    assert heard.bytes_moved == 3 * MiB
    assert sorted(heard.done) == [(len(CONFIG), 0, True), (len(SHARD), 3 * MiB, True)]
    assert first.bytes_copied + again.bytes_copied == TOTAL
    await assert_promoted(dest_url)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket="models-eu-west")


async def test_a_large_server_side_copy_resumes_from_its_recorded_parts(
    tmp_path: Path, on_moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest_url = s3_bucket("models-eu-west")
    policy = await prepared(tmp_path, s3_bucket("models-origin", "us-east-1"), dest_url)
    original = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined]
    copied = 0

    def two_part_copies_then_the_network_fails(client: Any, operation: str, params: dict[str, Any]) -> Any:
        nonlocal copied
        if operation == "UploadPartCopy":
            if copied == 2:
                raise EndpointConnectionError(endpoint_url=on_moto)
            copied += 1
        return original(client, operation, params)

    with monkeypatch.context() as broken:
        # At the SDK's boundary, where every client the sync makes passes.
        broken.setattr(botocore.client.BaseClient, "_make_api_call", two_part_copies_then_the_network_fails)
        first = await sync_model(policy, policy.models[0])
    assert not first.ok and first.destinations[0].failed_files == ("shards/00001.bin",)
    assert first.bytes_copied == len(CONFIG) + 10 * MiB
    await assert_not_promoted(dest_url)

    again = await sync_model(policy, policy.models[0])
    assert again.ok and again.destinations[0].promoted, again
    assert again.bytes_copied == 3 * MiB
    await assert_promoted(dest_url)


async def test_a_folder_destination_resumes_from_its_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dest_url = f"file://{tmp_path}/dest"
    policy = await prepared(tmp_path, f"file://{tmp_path}/source", dest_url)

    with monkeypatch.context() as broken:
        source_reads_break_after(broken, 11 * MiB)
        first = await sync_model(policy, policy.models[0])
    assert not first.ok
    assert first.bytes_copied == len(CONFIG) + 11 * MiB
    await assert_not_promoted(dest_url)
    (partial,) = (tmp_path / "dest" / PARTIAL_DIR).glob("resume-*")
    assert partial.stat().st_size == 11 * MiB

    # The rerun through the command, whose summary counts only what this run moved.
    assert await asyncio.to_thread(main, ["sync", "--policy", str(tmp_path / "policy.yaml")]) == 0
    out = capsys.readouterr().out
    assert "eu-west: copy 1, skip 0, repair 1, 2097152 bytes copied: promoted" in out
    assert "2.0 MiB copied in " in out
    assert "files: 1 copied, 0 skipped, 1 repaired, 0 failed; 0 blocked, 0 other failures" in out
    await assert_promoted(dest_url)
    assert not partial.exists()
