"""Moves a model version's files into a destination bucket, every byte checked against the manifest.

Within one cloud the copy is server-side, and the destination's object is then read back and hashed: the
provider's word is not taken for the bytes. Across clouds the bytes stream through, hashed as they pass;
a stream whose bytes are not the manifest's fails before its last chunk is handed over, so the write is
abandoned (multipart aborted, temporary file dropped) and never lands.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass

from controlplane.errors import ControlPlaneError
from controlplane.weights.buckets import Bucket, BucketError, FileBucket, GcsBucket, ObjectInfo, S3Bucket
from controlplane.weights.manifest import FileEntry, Hasher


class VerificationFailed(ControlPlaneError):
    """The bytes read are not the ones the manifest names."""


@dataclass(frozen=True, slots=True)
class Transfer:
    entry: FileEntry
    src_key: str
    dst_key: str


@dataclass(frozen=True, slots=True)
class Outcome:
    transfer: Transfer
    landed: ObjectInfo | None  # what the destination holds now, verified; None when the copy failed
    error: str | None = None


def fingerprint(bucket: Bucket, info: ObjectInfo) -> dict[str, str]:
    """What `bucket` reports about an object, by name, as a manifest's `checksums` records it: the
    provider's content checksums plus its opaque version (ETag, generation, or inode and mtime)."""
    kind = "etag" if isinstance(bucket, S3Bucket) else "generation" if isinstance(bucket, GcsBucket) else None
    if kind is None:
        assert isinstance(bucket, FileBucket)
        kind = "file-version"
    return {**dict(info.checksums), kind: info.version}


async def _checked(chunks: AsyncIterator[bytes], entry: FileEntry, what: str) -> AsyncIterator[bytes]:
    hasher = Hasher()
    try:
        async for chunk in chunks:
            await hasher.update(chunk)
            if hasher.size > entry.size:
                raise VerificationFailed(f"{what}: more than the manifest's {entry.size} bytes")
            yield chunk
    finally:
        # Abandoned early, the reader must still release its connection or file now, not at collection.
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
    if hasher.size != entry.size:
        raise VerificationFailed(f"{what}: {hasher.size} bytes, the manifest says {entry.size}")
    if hasher.hexdigest() != entry.sha256:
        raise VerificationFailed(f"{what}: sha256 differs from the manifest")


async def verify(bucket: Bucket, key: str, entry: FileEntry) -> None:
    """Read `key` whole and check it is `entry`'s bytes; VerificationFailed otherwise."""
    async for _ in _checked(bucket.read(key), entry, f"{bucket.url.rstrip('/')}/{key}"):
        pass


async def copy_file(source: Bucket, dest: Bucket, transfer: Transfer) -> ObjectInfo:
    entry = transfer.entry
    landed = await source.copy_within(transfer.src_key, dest, transfer.dst_key)
    if landed is None:
        what = f"{source.url.rstrip('/')}/{transfer.src_key}"
        return await dest.write(transfer.dst_key, _checked(source.read(transfer.src_key), entry, what))
    try:
        await verify(dest, transfer.dst_key, entry)
    except VerificationFailed:
        # Wrong bytes must not stay where a later listing could mistake them for a verified copy.
        with contextlib.suppress(BucketError):
            await dest.delete(transfer.dst_key)
        raise
    return landed


async def copy_files(
    source: Bucket, dest: Bucket, transfers: Iterable[Transfer], limit: asyncio.Semaphore
) -> list[Outcome]:
    """Every transfer, at most `limit` at once (shared by the caller across destinations); a failed file
    is reported in its outcome and does not stop the others."""

    async def one(transfer: Transfer) -> Outcome:
        async with limit:
            try:
                return Outcome(transfer, await copy_file(source, dest, transfer))
            except (BucketError, VerificationFailed) as exc:
                return Outcome(transfer, None, str(exc))

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(t)) for t in transfers]
    return [task.result() for task in tasks]
