"""controlplane.weights.buckets against real backends: a folder, moto_server (two buckets in two regions)
and fake-gcs-server, all through the same suite."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest

from chaos.loopback import free_port
from controlplane.weights import buckets
from controlplane.weights.buckets import (
    CHUNK,
    Bucket,
    BucketError,
    ObjectNotFound,
    PreconditionFailed,
    open_bucket,
)
from controlplane.weights.copier import Transfer, VerificationFailed, copy_file
from controlplane.weights.manifest import FileEntry

BIG = os.urandom(CHUNK + CHUNK // 2)  # more than one part and one read chunk: the multipart/resumable paths


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def content(bucket: Bucket, key: str, start: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in bucket.read(key, start=start, length=length)])


def s3_pair(moto: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Bucket, Bucket]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="models-us")
    client.create_bucket(Bucket="models-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return open_bucket("s3://models-us/models"), open_bucket("s3://models-eu/weights/")


def gcs_pair() -> tuple[Bucket, Bucket]:
    from google.cloud import storage

    client = storage.Client()
    names = [f"models-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for name in names:
        client.create_bucket(name)
    return open_bucket(f"gs://{names[0]}/models"), open_bucket(f"gs://{names[1]}")


def make_pair(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Bucket, Bucket]:
    if request.param == "file":
        return open_bucket(f"file://{tmp_path}/a"), open_bucket(f"file://{tmp_path}/b/models")
    if request.param == "s3":
        request.getfixturevalue("aws_credentials")
        return s3_pair(request.getfixturevalue("moto"), monkeypatch)
    request.getfixturevalue("gcs")
    return gcs_pair()


@pytest.fixture(params=["file", "s3", "gs"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Bucket, Bucket]:
    """Two buckets of one kind: `a` where a test writes, `b` where copies go."""
    return make_pair(request, tmp_path, monkeypatch)


# S3 decides a conditional write atomically, but moto checks If-None-Match and stores the object in two
# steps without a lock: a true race there could let both writers in. The stale-version test covers S3.
@pytest.fixture(params=["file", "gs"])
def atomic_pair(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Bucket, Bucket]:
    return make_pair(request, tmp_path, monkeypatch)


async def test_write_list_and_read_ranges(pair: tuple[Bucket, Bucket]) -> None:
    bucket, _ = pair
    big = await bucket.write("llama/v1/shard-0", stream(BIG[:100], BIG[100:]))
    small = await bucket.write("llama/v1/config.json", stream(b'{"a":', b" 1}"))
    await bucket.write("llama/CURRENT", stream(b"v1"))
    await bucket.write("other/v1/x", stream())

    listing = await bucket.list("llama/v1/")
    assert [(o.key, o.size, o.version) for o in listing] == [
        ("llama/v1/config.json", 8, small.version),
        ("llama/v1/shard-0", len(BIG), big.version),
    ]
    assert big.size == len(BIG)
    assert [o.key for o in await bucket.list()] == [
        "llama/CURRENT",
        "llama/v1/config.json",
        "llama/v1/shard-0",
        "other/v1/x",
    ]
    assert await bucket.list("nothing/") == []

    assert await content(bucket, "llama/v1/shard-0") == BIG
    assert await content(bucket, "llama/v1/shard-0", start=5, length=10) == BIG[5:15]
    assert await content(bucket, "llama/v1/shard-0", start=CHUNK - 3, length=6) == BIG[CHUNK - 3 : CHUNK + 3]
    assert await content(bucket, "llama/v1/shard-0", start=CHUNK + 1) == BIG[CHUNK + 1 :]
    assert await content(bucket, "llama/v1/shard-0", start=7, length=0) == b""
    assert await content(bucket, "other/v1/x") == b""
    chunks = [len(chunk) async for chunk in bucket.read("llama/v1/shard-0")]
    assert max(chunks) <= CHUNK and sum(chunks) == len(BIG)


async def test_read_small_is_capped_and_none_when_absent(pair: tuple[Bucket, Bucket]) -> None:
    bucket, _ = pair
    await bucket.write("llama/CURRENT", stream(b"2026-11-01"))
    assert await bucket.read_small("llama/CURRENT", cap=10) == b"2026-11-01"
    with pytest.raises(BucketError, match="larger than 9 bytes"):
        await bucket.read_small("llama/CURRENT", cap=9)
    assert await bucket.read_small("llama/nothing", cap=10) is None


async def test_preconditions_let_one_writer_win(pair: tuple[Bucket, Bucket]) -> None:
    bucket, _ = pair
    first = await bucket.write("llama/CURRENT", stream(b"v1"), if_absent=True)
    with pytest.raises(PreconditionFailed):
        await bucket.write("llama/CURRENT", stream(b"v0"), if_absent=True)
    if not bucket.url.startswith("gs:"):
        # The multipart path checks it too. fake-gcs-server ignores ifGenerationMatch on a resumable
        # upload (the SDK sends it; GCS applies it), so there only the single-request path is tested.
        with pytest.raises(PreconditionFailed):
            await bucket.write("llama/CURRENT", stream(BIG), if_absent=True)
    assert await bucket.read_small("llama/CURRENT", cap=10) == b"v1"

    # Two syncers read the same CURRENT and both try to move it: the one that lands first wins.
    second = await bucket.write("llama/CURRENT", stream(b"v2"), if_match=first.version)
    with pytest.raises(PreconditionFailed):
        await bucket.write("llama/CURRENT", stream(b"v3"), if_match=first.version)
    assert await bucket.read_small("llama/CURRENT", cap=10) == b"v2"
    assert second.version != first.version
    assert [o.version for o in await bucket.list("llama/CURRENT")] == [second.version]

    with pytest.raises(PreconditionFailed):
        await bucket.write("llama/absent", stream(b"x"), if_match=second.version)
    assert await bucket.read_small("llama/absent", cap=10) is None


async def test_racing_creators_only_one_wins(atomic_pair: tuple[Bucket, Bucket]) -> None:
    bucket, _ = atomic_pair
    results = await asyncio.gather(
        *(bucket.write("llama/CURRENT", stream(name), if_absent=True) for name in (b"one", b"two")),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ObjectInfo", "PreconditionFailed"], results
    winner = next(r for r in results if isinstance(r, buckets.ObjectInfo))
    assert [o.version for o in await bucket.list("llama/")] == [winner.version]


async def test_delete(pair: tuple[Bucket, Bucket]) -> None:
    bucket, _ = pair
    await bucket.write("llama/v1/a", stream(b"a"))
    await bucket.delete("llama/v1/a")
    await bucket.delete("llama/v1/a")
    assert await bucket.list() == []
    with pytest.raises(ObjectNotFound):
        await content(bucket, "llama/v1/a")


@pytest.fixture(params=["s3", "gs"])
def cloud_pair(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Bucket, Bucket]:
    """Two buckets of one cloud, where copies are server-side."""
    return make_pair(request, tmp_path, monkeypatch)


async def test_copy_within_one_cloud(cloud_pair: tuple[Bucket, Bucket], tmp_path: Path) -> None:
    source, destination = cloud_pair
    await source.write("llama/v1/shard-0", stream(BIG))
    copied = await source.copy_within("llama/v1/shard-0", destination, "llama/v1/shard-0")
    assert copied is not None and copied.size == len(BIG)
    assert [(o.key, o.version) for o in await destination.list()] == [("llama/v1/shard-0", copied.version)]
    assert await content(destination, "llama/v1/shard-0") == BIG

    elsewhere = open_bucket(f"file://{tmp_path}/c")
    assert await source.copy_within("llama/v1/shard-0", elsewhere, "llama/v1/shard-0") is None
    assert await elsewhere.copy_within("x", open_bucket(f"file://{tmp_path}/d"), "x") is None


async def test_s3_copies_above_the_copy_object_limit_in_parts(
    aws_credentials: None, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, destination = s3_pair(moto, monkeypatch)
    monkeypatch.setattr(buckets, "RESUMABLE_COPY", 5 * 1024 * 1024)
    monkeypatch.setattr(buckets, "COPY_PART", 5 * 1024 * 1024)
    await source.write("big", stream(BIG))
    copied = await source.copy_within("big", destination, "big")
    # A multipart ETag ends in -<parts>: three UploadPartCopy parts, not one CopyObject.
    assert copied is not None and copied.version.endswith("-3")
    assert await content(destination, "big") == BIG


async def test_an_unreachable_endpoint_is_transient(
    aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BucketError) as raised:
        await open_bucket("s3://models/x").list()
    assert raised.value.transient


@pytest.mark.parametrize("url", ["http://x/y", "s3:///prefix", "file://host/path", "file:relative", "gs://"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(BucketError):
        open_bucket(url)


@pytest.mark.parametrize("key", ["", "/a", "a//b", "../a", "a/../../b", "a/.", ".partial/x"])
async def test_keys_cannot_leave_the_prefix(key: str, tmp_path: Path) -> None:
    bucket = open_bucket(f"file://{tmp_path}/a")
    with pytest.raises(BucketError, match="invalid object key"):
        await bucket.write(key, stream(b"x"))


MiB = 1024 * 1024
SHARD = os.urandom(13 * MiB)  # with 5 MiB parts: 5 + 5 + 3


class Counted:
    """The bytes a transfer reports as moved into the destination."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, nbytes: int) -> None:
        self.total += nbytes


def shard_transfer(key: str = "llama/v1/shard") -> Transfer:
    entry = FileEntry(path="shard", size=len(SHARD), sha256=hashlib.sha256(SHARD).hexdigest())
    return Transfer(entry, key, key)


def in_progress(bucket: str, key: str) -> list[str]:
    uploads = boto3.client("s3", region_name="us-east-1").list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u["UploadId"] for u in uploads.get("Uploads", [])]


async def folder_to_s3(moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Bucket, Bucket]:
    """A folder holding the shard and an S3 destination putting it in 5 MiB parts."""
    _, destination = s3_pair(moto, monkeypatch)
    monkeypatch.setattr(buckets, "PART_SIZE", 5 * MiB)
    source = open_bucket(f"file://{tmp_path}/source")
    await source.write("llama/v1/shard", stream(SHARD))
    return source, destination


async def test_s3_put_resends_only_the_parts_a_killed_upload_lacks(
    aws_credentials: None, moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source, destination = await folder_to_s3(moto, monkeypatch, tmp_path)
    # What killed runs leave: an older upload, and a newer one with part 1 right and part 2 of the right
    # size but other bytes (its ETag is not the MD5 of the source's part 2).
    s3 = boto3.client("s3", region_name="us-east-1")
    target = {"Bucket": "models-eu", "Key": "weights/llama/v1/shard"}
    stale = s3.create_multipart_upload(**target)["UploadId"]
    upload = s3.create_multipart_upload(**target)["UploadId"]
    s3.upload_part(**target, UploadId=upload, PartNumber=1, Body=SHARD[: 5 * MiB])
    s3.upload_part(**target, UploadId=upload, PartNumber=2, Body=bytes(5 * MiB))

    moved = Counted()
    landed = await copy_file(source, destination, shard_transfer(), moved)
    assert moved.total == len(SHARD) - 5 * MiB  # parts 2 and 3
    assert landed.version.endswith("-3")
    assert await content(destination, "llama/v1/shard") == SHARD
    assert stale not in in_progress("models-eu", target["Key"])
    assert in_progress("models-eu", target["Key"]) == []


async def test_s3_put_keeps_its_parts_when_interrupted_and_drops_them_when_the_source_is_wrong(
    aws_credentials: None, moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source, destination = await folder_to_s3(moto, monkeypatch, tmp_path)
    await source.write("llama/v1/short", stream(SHARD[: 11 * MiB]))

    # A source shorter than its manifest entry fails verification after two parts landed: parts of the
    # wrong bytes, dropped.
    with pytest.raises(VerificationFailed):
        await copy_file(source, destination, Transfer(shard_transfer().entry, "llama/v1/short", "llama/v1/x"))
    assert in_progress("models-eu", "weights/llama/v1/x") == []  # a wrong source's parts are dropped

    class Interrupted(BucketError):
        pass

    original = buckets.FileBucket.read

    async def breaks_after_11_mib(
        self: buckets.FileBucket, key: str, *, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in original(self, key, start=start, length=length):
            if sent >= 11 * MiB:
                raise Interrupted("the source's connection dropped")
            sent += len(chunk)
            yield chunk

    monkeypatch.setattr(buckets, "CHUNK", MiB)
    monkeypatch.setattr(buckets.FileBucket, "read", breaks_after_11_mib)
    first = Counted()
    with pytest.raises(Interrupted):
        await copy_file(source, destination, shard_transfer(), first)
    assert first.total == 10 * MiB
    assert len(in_progress("models-eu", "weights/llama/v1/shard")) == 1  # kept for the rerun
    monkeypatch.setattr(buckets.FileBucket, "read", original)

    again = Counted()
    await copy_file(source, destination, shard_transfer(), again)
    assert again.total == 3 * MiB
    assert await content(destination, "llama/v1/shard") == SHARD


async def test_a_large_s3_copy_copies_only_the_parts_a_killed_copy_lacks(
    aws_credentials: None, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, destination = s3_pair(moto, monkeypatch)
    monkeypatch.setattr(buckets, "RESUMABLE_COPY", 5 * MiB)
    monkeypatch.setattr(buckets, "COPY_PART", 5 * MiB)
    await source.write("llama/v1/shard", stream(SHARD))
    s3 = boto3.client("s3", region_name="us-east-1")
    target = {"Bucket": "models-eu", "Key": "weights/llama/v1/shard"}
    upload = s3.create_multipart_upload(**target)["UploadId"]
    s3.upload_part_copy(
        **target,
        UploadId=upload,
        PartNumber=1,
        CopySource={"Bucket": "models-us", "Key": "models/llama/v1/shard"},
        CopySourceRange=f"bytes=0-{5 * MiB - 1}",
    )

    moved = Counted()
    landed = await copy_file(source, destination, shard_transfer(), moved)
    assert moved.total == len(SHARD) - 5 * MiB
    assert landed.version.endswith("-3")
    assert await content(destination, "llama/v1/shard") == SHARD
    assert in_progress("models-eu", target["Key"]) == []


async def left_by_a_killed_put(tmp_path: Path, held: bytes) -> tuple[Bucket, Bucket, Transfer, Path]:
    """Folder buckets holding the shard, and the partial file a put killed after `held` left behind."""
    source = open_bucket(f"file://{tmp_path}/source")
    destination = open_bucket(f"file://{tmp_path}/dest")
    assert isinstance(destination, buckets.FileBucket)
    await source.write("llama/v1/shard", stream(SHARD))
    transfer = shard_transfer()
    partial = destination._partial(transfer.dst_key, transfer.entry.sha256)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(held)
    return source, destination, transfer, partial


async def test_a_file_put_appends_to_what_a_killed_put_left(tmp_path: Path) -> None:
    source, destination, transfer, partial = await left_by_a_killed_put(tmp_path, SHARD[: 6 * MiB])
    moved = Counted()
    await copy_file(source, destination, transfer, moved)
    assert moved.total == len(SHARD) - 6 * MiB
    assert await content(destination, "llama/v1/shard") == SHARD
    assert not partial.exists()


async def test_a_damaged_partial_file_fails_verification_once_then_is_copied_whole(tmp_path: Path) -> None:
    source, destination, transfer, partial = await left_by_a_killed_put(tmp_path, bytes(6 * MiB))
    with pytest.raises(VerificationFailed):
        await copy_file(source, destination, transfer)
    assert not partial.exists()
    assert await destination.list() == []
    moved = Counted()
    await copy_file(source, destination, transfer, moved)
    assert moved.total == len(SHARD)
    assert await content(destination, "llama/v1/shard") == SHARD
