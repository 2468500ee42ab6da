"""Moves a model version's files into a destination bucket, every byte checked against the manifest.

Within one cloud the copy is server-side, and the destination's object is then read back and hashed: the
provider's word is not taken for the bytes. Across clouds the bytes stream through, hashed as they pass;
a stream whose bytes are not the manifest's fails before its last chunk is handed over, so the write is
abandoned and never lands. A transfer interrupted any other way (an error, a cancel, SIGKILL) leaves what
it wrote for the next run to resume: S3 multipart parts, or a file bucket's partial file (buckets.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass

from controlplane.errors import ControlPlaneError
from controlplane.weights.buckets import (
    Bucket,
    BucketError,
    FileBucket,
    GcsBucket,
    Moved,
    ObjectInfo,
    ObjectNotFound,
    S3Bucket,
    uncounted,
)
from controlplane.weights.manifest import FileEntry, Hasher
from controlplane.weights.progress import QUIET, TransferProgress


class VerificationFailed(ControlPlaneError):
    """The bytes read are not the ones the manifest names."""


@dataclass(frozen=True, slots=True)
class Transfer:
    entry: FileEntry
    src_key: str
    dst_key: str
    # What the destination holds under dst_key when it may already be the entry's bytes without evidence
    # to skip it by (a file a killed run finished, before any marker recorded it): verified in place
    # first, and copied only if that fails.
    held: ObjectInfo | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    transfer: Transfer
    landed: ObjectInfo | None  # what the destination holds now, verified; None when the copy failed
    moved: int = 0  # bytes this copy landed in the destination, kept parts of an earlier run not counted
    error: str | None = None


def fingerprint(bucket: Bucket, info: ObjectInfo) -> dict[str, str]:
    """What `bucket` reports about an object, by name, as a manifest's `checksums` records it: the
    provider's content checksums plus its opaque version (ETag, generation, or inode and mtime)."""
    kind = "etag" if isinstance(bucket, S3Bucket) else "generation" if isinstance(bucket, GcsBucket) else None
    if kind is None:
        assert isinstance(bucket, FileBucket)
        kind = "file-version"
    return {**dict(info.checksums), kind: info.version}


async def _checked(
    chunks: AsyncIterator[bytes], entry: FileEntry, what: str, hasher: Hasher | None = None
) -> AsyncIterator[bytes]:
    """The chunks, hashed as they pass (after whatever `hasher` already holds); raises instead of ending
    when the whole is not `entry`."""
    hasher = hasher or Hasher()
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


class _Source:
    """One file's source as a resumable put reads it: bytes the destination kept count toward the hash
    before the source is read from where they end."""

    def __init__(self, bucket: Bucket, transfer: Transfer) -> None:
        self.bucket = bucket
        self.transfer = transfer
        self.what = f"{bucket.url.rstrip('/')}/{transfer.src_key}"
        self.hasher = Hasher()

    async def held(self, chunk: bytes) -> None:
        await self.hasher.update(chunk)

    def stream(self, start: int) -> AsyncIterator[bytes]:
        if start != self.hasher.size:
            raise ValueError(f"{self.what}: read from {start}, but {self.hasher.size} bytes were kept")
        chunks = self.bucket.read(self.transfer.src_key, start=start)
        return _checked(chunks, self.transfer.entry, self.what, self.hasher)


async def copy_file(source: Bucket, dest: Bucket, transfer: Transfer, moved: Moved = uncounted) -> ObjectInfo:
    """Copy one file, resuming an interrupted copy of it; `moved` hears of every byte this call lands."""
    entry = transfer.entry
    if transfer.held is not None:
        # Gone meanwhile, or not the bytes: copied below like any other.
        with contextlib.suppress(VerificationFailed, ObjectNotFound):
            await verify(dest, transfer.dst_key, entry)
            return transfer.held
    landed = await source.copy_within(transfer.src_key, dest, transfer.dst_key, moved)
    if landed is None:
        try:
            return await dest.put(
                transfer.dst_key, entry.size, entry.sha256, _Source(source, transfer), moved
            )
        except VerificationFailed:
            # Kept bytes or source, something is not the manifest's: nothing of it is worth resuming.
            with contextlib.suppress(BucketError):
                await dest.abandon(transfer.dst_key, entry.sha256)
            raise
    try:
        await verify(dest, transfer.dst_key, entry)
    except VerificationFailed:
        # Wrong bytes must not stay where a later listing could mistake them for a verified copy.
        with contextlib.suppress(BucketError):
            await dest.delete(transfer.dst_key)
        raise
    return landed


async def copy_files(
    source: Bucket,
    dest: Bucket,
    transfers: Iterable[Transfer],
    limit: asyncio.Semaphore,
    progress: TransferProgress = QUIET,
) -> list[Outcome]:
    """Every transfer, at most `limit` at once (shared by the caller across destinations); a failed file
    is reported in its outcome and does not stop the others."""

    async def one(transfer: Transfer) -> Outcome:
        moved = 0

        def count(nbytes: int) -> None:
            nonlocal moved
            moved += nbytes
            progress.moved(nbytes)

        async with limit:
            try:
                landed = await copy_file(source, dest, transfer, count)
            except (BucketError, VerificationFailed) as exc:
                progress.finished(transfer.entry.size, moved, ok=False)
                return Outcome(transfer, None, moved, str(exc))
            progress.finished(transfer.entry.size, moved, ok=True)
            return Outcome(transfer, landed, moved)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(t)) for t in transfers]
    return [task.result() for task in tasks]
