"""One async interface over the places model weights live: S3 (boto3), GCS (google-cloud-storage) and a
local folder (file://, the default for the demo and a laptop).

The SDKs block, so every call runs in a worker thread under `asyncio.timeout`. Emulators are reached only
through the SDKs' own variables (`AWS_ENDPOINT_URL`, `STORAGE_EMULATOR_HOST`), as production reaches the
clouds through their own configuration. Keys are relative to the URL's prefix and use `/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from controlplane.errors import ControlPlaneError

if TYPE_CHECKING:
    from google.cloud.storage import Bucket as GcsBucketHandle  # type: ignore[import-untyped]

T = TypeVar("T")

CHUNK = 8 * 1024 * 1024  # one read: with a part, what a transfer holds in memory at a time
REQUEST_TIMEOUT = 60.0  # one request carrying at most a part or a CHUNK
COPY_TIMEOUT = 900.0  # a server-side copy of up to RESUMABLE_COPY bytes or one part, or one rewrite step
LIST_LIMIT = 100_000  # a listing larger than this is refused rather than silently cut short
LIST_PAGE = 1000
PART_SIZE = CHUNK  # a resumable upload's parts (S3: at least 5 MiB, the last one excepted)
MAX_PARTS = 10_000  # S3's ceiling on one upload's parts: a larger object gets larger parts
# A server-side copy above RESUMABLE_COPY goes part by part (UploadPartCopy), so a killed copy resumes; below
# it, one CopyObject: one request, and the provider's fastest path (rclone copies whole up to 4.6 GiB). A
# kill loses at most the copies in flight, and a landed file is verified in place, never copied again.
RESUMABLE_COPY = 256 * 1024**2
COPY_PART = 64 * 1024**2  # a 5 GB shard in 80 requests; a kill loses at most one part per file
PARTIAL_DIR = ".partial"  # file buckets: writes in progress and the commit lock, never listed


class BucketError(ControlPlaneError):
    """A bucket refused or failed an operation; `transient` when the same call may succeed later."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class PreconditionFailed(BucketError):
    """A conditional write lost: the object exists (if_absent) or is no longer the version named (if_match)."""


class ObjectNotFound(BucketError):
    """The key is not in the bucket."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object. `version` is what `write(if_match=...)` takes: the ETag (S3), the generation (GCS), or
    inode and mtime (file: every write renames a new file in). `checksums` are the provider's own, by name
    (GCS: md5 and crc32c, base64), empty where a listing carries none (S3, file)."""

    key: str
    size: int
    version: str
    checksums: tuple[tuple[str, str], ...] = ()


Listing = list[ObjectInfo]  # `list` is a method name inside Bucket
Moved = Callable[[int], None]  # told each time bytes land in the destination (by this run, not found there)


class Resumable(Protocol):
    """What a resumable `put` reads: one file's source, checked against its manifest entry as it passes."""

    async def held(self, chunk: bytes) -> None:
        """Bytes the destination kept from an interrupted put, in order from offset 0, before `stream`:
        the check then covers the whole file, kept and new bytes alike."""

    def stream(self, start: int) -> AsyncIterator[bytes]:
        """The source's bytes from `start` to the end; raises after the last chunk (before its end is
        consumed) when the whole is not the manifest's."""


def uncounted(moved: int) -> None:
    pass


class Bucket(ABC):
    """A bucket (or a folder) under a URL's prefix."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix.strip("/")

    @abstractmethod
    async def list(self, prefix: str = "") -> Listing:
        """Every object whose key starts with `prefix`, sorted by key; BucketError past LIST_LIMIT."""

    @abstractmethod
    def read(self, key: str, *, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, start+length) (to the end when length is None) in chunks of at most CHUNK."""

    @abstractmethod
    async def write(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        """Store the stream as `key`, whole or not at all. With `if_absent` only if there is no such object,
        with `if_match` only if the object is still that version; else PreconditionFailed."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove `key`; an absent key is not an error."""

    @abstractmethod
    async def copy_within(
        self, src_key: str, dst: Bucket, dst_key: str, moved: Moved = uncounted
    ) -> ObjectInfo | None:
        """Copy server-side when `dst` is in the same cloud; None when it is not (the caller streams).
        A large S3 copy goes in parts and resumes an interrupted one (parts already there are not copied
        again); the caller reads the result back, which also catches a resumed part of other bytes."""

    async def put(
        self, key: str, size: int, sha256: str, source: Resumable, moved: Moved = uncounted
    ) -> ObjectInfo:
        """Store `size` bytes whose SHA-256 is `sha256`, resuming what an interrupted put of the same
        content left behind; an interrupted put leaves its progress in place for the next one. Here (GCS):
        no resume below the file, a file either landed whole or is sent again."""

        async def counted() -> AsyncIterator[bytes]:
            async for chunk in source.stream(0):
                yield chunk
                moved(len(chunk))

        return await self.write(key, counted())

    async def abandon(self, key: str, sha256: str) -> None:
        """Drop what interrupted puts of `key` left behind, after their source proved wrong."""
        return None  # a GCS put leaves nothing behind: it is resumed, if at all, a whole file at a time

    @abstractmethod
    def _translate(self, exc: Exception, what: str) -> BucketError | None:
        """The SDK's exception as a BucketError, or None for one that is a bug here (re-raised as is)."""

    async def read_small(self, key: str, cap: int) -> bytes | None:
        """The whole of a small object (CURRENT, a manifest); None when absent, BucketError above `cap`."""
        data = bytearray()
        try:
            async for chunk in self.read(key, length=cap + 1):
                data += chunk
        except ObjectNotFound:
            return None
        if len(data) > cap:
            raise BucketError(f"{self._name(key)} is larger than {cap} bytes: not read")
        return bytes(data)

    def _name(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    def _path(self, key: str) -> str:
        """The provider's key for `key`; a key that could leave the prefix is refused."""
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts) or key.startswith(PARTIAL_DIR + "/"):
            raise BucketError(f"invalid object key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, path: str) -> str:
        return path[len(self.prefix) + 1 :] if self.prefix else path

    async def _run(self, call: Callable[[], T], what: str, within: float = REQUEST_TIMEOUT) -> T:
        try:
            async with asyncio.timeout(within):
                return await asyncio.to_thread(call)
        except TimeoutError as exc:
            raise BucketError(f"{what}: no answer within {within:g} s", transient=True) from exc
        except BucketError:
            raise
        except Exception as exc:
            translated = self._translate(exc, what)
            if translated is None:
                raise
            raise translated from exc


async def whole(data: bytes) -> AsyncIterator[bytes]:
    """A small object's bytes as the stream `Bucket.write` takes."""
    yield data


def open_bucket(url: str) -> Bucket:
    """The bucket at `s3://bucket/prefix`, `gs://bucket/prefix` or `file:///path`."""
    parts = urlsplit(url)
    if parts.scheme in ("s3", "gs"):
        if not parts.netloc:
            raise BucketError(f"{url}: no bucket name")
        cls: type[S3Bucket | GcsBucket] = S3Bucket if parts.scheme == "s3" else GcsBucket
        return cls(url, parts.netloc, parts.path)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise BucketError(f"{url}: a file URL is file:///absolute/path")
        return FileBucket(url, Path(unquote(parts.path)))
    raise BucketError(f"{url}: unsupported bucket URL (s3://, gs:// or file:///)")


async def _parts(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """The stream re-cut into parts of exactly `size` bytes, the last one shorter (or b"" for no bytes)."""
    buffer = bytearray()
    sent = False
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
            sent = True
    if buffer or not sent:
        yield bytes(buffer)


Part = dict[str, Any]  # one completed part of a multipart upload: {"PartNumber", "ETag"}
Parts = list[Part]
Uploads = list[dict[str, Any]]  # multipart uploads in progress: {"Key", "UploadId", "Initiated", ...}


class S3Bucket(Bucket):
    def __init__(self, url: str, bucket: str, prefix: str) -> None:
        super().__init__(url, prefix)
        self.bucket = bucket
        self._client: Any = None  # boto3's S3 client (its typed stubs are not a dependency)

    async def _s3(self) -> Any:
        """One client per bucket, made off the event loop (it reads files). botocore follows a bucket to
        its region by itself, so the default region serves buckets in any."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=10,
                read_timeout=REQUEST_TIMEOUT,
            )
            self._client = await self._run(
                lambda: boto3.session.Session().client("s3", config=config), f"{self.url}: S3 client"
            )
        return self._client

    def _translate(self, exc: Exception, what: str) -> BucketError | None:
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            message = f"{what}: {exc}"
            # ConditionalRequestConflict: another conditional write to the key was in flight; it won.
            if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return PreconditionFailed(message)
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFound(message)
            return BucketError(message, transient=status >= 500 or status == 429 or code == "SlowDown")
        if isinstance(exc, BotoCoreError):
            return BucketError(f"{what}: {exc}", transient=isinstance(exc, ConnectionError | HTTPClientError))
        return None

    async def list(self, prefix: str = "") -> Listing:
        s3 = await self._s3()
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": f"{self.prefix}/{prefix}" if self.prefix else prefix,
            "MaxKeys": LIST_PAGE,
        }
        found: Listing = []
        while True:
            page = await self._run(lambda: s3.list_objects_v2(**args), f"{self.url}: list {prefix!r}")
            found += [
                ObjectInfo(self._relative(o["Key"]), o["Size"], o["ETag"].strip('"'))
                for o in page.get("Contents", [])
            ]
            if len(found) > LIST_LIMIT:
                raise BucketError(f"{self.url}: more than {LIST_LIMIT} objects under {prefix!r}")
            if not page.get("IsTruncated"):
                return sorted(found, key=lambda info: info.key)
            args["ContinuationToken"] = page["NextContinuationToken"]

    async def read(self, key: str, *, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        if length == 0:
            return
        s3 = await self._s3()
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._path(key)}
        if start or length is not None:
            args["Range"] = f"bytes={start}-{'' if length is None else start + length - 1}"
        what = f"read {self._name(key)}"
        reply = await self._run(lambda: s3.get_object(**args), what)
        body = reply["Body"]
        try:
            while chunk := await self._run(lambda: body.read(CHUNK), what):
                yield chunk
        finally:
            body.close()

    async def write(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        s3 = await self._s3()
        target = {"Bucket": self.bucket, "Key": self._path(key)}
        conditions: dict[str, str] = {}
        if if_absent:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        what = f"write {self._name(key)}"
        parts = _parts(chunks, PART_SIZE)
        first = await anext(parts)
        second = await anext(parts, None)
        try:
            if second is None:
                reply = await self._run(lambda: s3.put_object(**target, Body=first, **conditions), what)
                return ObjectInfo(key, len(first), reply["ETag"].strip('"'))
            size = 0

            async def every_part() -> AsyncIterator[bytes]:
                yield first
                yield second
                async for part in parts:
                    yield part

            async def upload(upload_id: str) -> list[dict[str, Any]]:
                nonlocal size
                done: list[dict[str, Any]] = []
                async for part in every_part():
                    done.append(await self._upload_part(s3, target, upload_id, len(done) + 1, part, what))
                    size += len(part)
                return done

            # S3 checks the conditions when the upload completes; moto enforces only IfNoneMatch here.
            etag = await self._multipart(s3, target, what, upload, conditions)
            return ObjectInfo(key, size, etag)
        except ObjectNotFound as exc:
            if if_match is None:
                raise
            raise PreconditionFailed(f"{what}: no version {if_match} to replace") from exc

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await self._run(
            lambda: s3.delete_object(Bucket=self.bucket, Key=self._path(key)), f"delete {self._name(key)}"
        )

    async def copy_within(
        self, src_key: str, dst: Bucket, dst_key: str, moved: Moved = uncounted
    ) -> ObjectInfo | None:
        if not isinstance(dst, S3Bucket):
            return None
        s3 = await dst._s3()
        source = {"Bucket": self.bucket, "Key": self._path(src_key)}
        target = {"Bucket": dst.bucket, "Key": dst._path(dst_key)}
        what = f"copy {self._name(src_key)} to {dst._name(dst_key)}"
        head = await self._run(lambda: s3.head_object(**source), what)
        size = int(head["ContentLength"])
        if size <= RESUMABLE_COPY:
            reply = await self._run(lambda: s3.copy_object(**target, CopySource=source), what, COPY_TIMEOUT)
            moved(size)
            return ObjectInfo(dst_key, size, reply["CopyObjectResult"]["ETag"].strip('"'))
        step = part_size(size, COPY_PART)

        async def fill(upload_id: str, recorded: dict[int, Part]) -> Parts:
            done: Parts = []
            for number, offset in enumerate(range(0, size, step), start=1):
                length = min(step, size - offset)
                kept = recorded.get(number)
                # Only the size can be checked here without reading the source; the caller's read-back
                # of the whole object catches a kept part of other bytes.
                if kept is not None and kept["Size"] == length:
                    done.append(_completed(kept))
                    continue
                # Pinned to the ETag read above, so parts of one run never mix two versions.
                reply = await self._run(
                    partial(
                        s3.upload_part_copy,
                        **target,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=source,
                        CopySourceRange=f"bytes={offset}-{offset + length - 1}",
                        CopySourceIfMatch=head["ETag"],
                    ),
                    what,
                    COPY_TIMEOUT,
                )
                done.append({"PartNumber": number, "ETag": reply["CopyPartResult"]["ETag"]})
                moved(length)
            return done

        return ObjectInfo(dst_key, size, await dst._resume(s3, target, what, fill))

    async def put(
        self, key: str, size: int, sha256: str, source: Resumable, moved: Moved = uncounted
    ) -> ObjectInfo:
        step = part_size(size)
        if size <= step:
            info = await self.write(key, source.stream(0))
            moved(info.size)
            return info
        s3 = await self._s3()
        target = {"Bucket": self.bucket, "Key": self._path(key)}
        what = f"write {self._name(key)}"

        async def fill(upload_id: str, recorded: dict[int, Part]) -> Parts:
            done: Parts = []
            # The source is read whole even when every part is there: its SHA-256 is what lets the upload
            # complete. A kept part is trusted only when its ETag is the MD5 of the source's bytes for it.
            async for part in _parts(source.stream(0), step):
                number = len(done) + 1
                kept = recorded.get(number)
                if (
                    kept is not None
                    and kept["Size"] == len(part)
                    and kept["ETag"].strip('"') == await _md5(part)
                ):
                    done.append(_completed(kept))
                    continue
                done.append(await self._upload_part(s3, target, upload_id, number, part, what))
                moved(len(part))
            return done

        return ObjectInfo(key, size, await self._resume(s3, target, what, fill))

    async def abandon(self, key: str, sha256: str) -> None:
        s3 = await self._s3()
        target = {"Bucket": self.bucket, "Key": self._path(key)}
        what = f"abandon the uploads of {self._name(key)}"
        for upload in await self._uploads(s3, target, what):
            await self._abort(s3, target, upload["UploadId"], what)

    async def _upload_part(
        self, s3: Any, target: dict[str, str], upload_id: str, number: int, part: bytes, what: str
    ) -> Part:
        reply = await self._run(
            lambda: s3.upload_part(**target, UploadId=upload_id, PartNumber=number, Body=part), what
        )
        return {"PartNumber": number, "ETag": reply["ETag"]}

    async def _multipart(
        self,
        s3: Any,
        target: dict[str, str],
        what: str,
        upload: Callable[[str], Awaitable[Parts]],
        conditions: dict[str, str] | None = None,
    ) -> str:
        """Create a multipart upload, fill it (`upload` returns its parts), complete it; on any failure abort
        it, so no orphaned parts stay billed. Returns the object's ETag."""
        upload_id = (await self._run(lambda: s3.create_multipart_upload(**target), what))["UploadId"]
        try:
            parts = await upload(upload_id)
            reply = await self._run(
                lambda: s3.complete_multipart_upload(
                    **target, UploadId=upload_id, MultipartUpload={"Parts": parts}, **(conditions or {})
                ),
                what,
            )
        except BaseException:
            with contextlib.suppress(BucketError):
                await self._abort(s3, target, upload_id, what)
            raise
        return str(reply["ETag"]).strip('"')

    async def _resume(
        self,
        s3: Any,
        target: dict[str, str],
        what: str,
        fill: Callable[[str, dict[int, Part]], Awaitable[Parts]],
    ) -> str:
        """Complete the key's newest upload in progress, or a new one: `fill` gets its recorded parts (by
        number, with ETag and Size) and returns the whole list. Older uploads of the key are aborted, so
        they do not pile up. A failure leaves the upload and its parts for the next run, to be resumed;
        one nobody resumes is for the bucket's lifecycle rule (AbortIncompleteMultipartUpload) to clear.

        S3 shows no metadata of an upload in progress, so an upload cannot be matched to its content by
        a tag: each kept part is judged by its own evidence instead (`fill`)."""
        uploads = sorted(await self._uploads(s3, target, what), key=lambda u: u["Initiated"])
        for stale in uploads[:-1]:
            await self._abort(s3, target, stale["UploadId"], what)
        if uploads:
            upload_id = uploads[-1]["UploadId"]
            recorded = await self._recorded(s3, target, upload_id, what)
        else:
            upload_id = (await self._run(lambda: s3.create_multipart_upload(**target), what))["UploadId"]
            recorded = {}
        parts = await fill(upload_id, recorded)
        reply = await self._run(
            lambda: s3.complete_multipart_upload(
                **target, UploadId=upload_id, MultipartUpload={"Parts": parts}
            ),
            what,
        )
        return str(reply["ETag"]).strip('"')

    async def _uploads(self, s3: Any, target: dict[str, str], what: str) -> Uploads:
        """The uploads in progress for exactly this key."""
        args: dict[str, Any] = {"Bucket": target["Bucket"], "Prefix": target["Key"]}
        found: Uploads = []
        while True:
            page = await self._run(lambda: s3.list_multipart_uploads(**args), what)
            found += [u for u in page.get("Uploads", []) if u["Key"] == target["Key"]]
            if not page.get("IsTruncated"):
                return found
            args.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])

    async def _recorded(self, s3: Any, target: dict[str, str], upload_id: str, what: str) -> dict[int, Part]:
        args: dict[str, Any] = {**target, "UploadId": upload_id}
        found: dict[int, Part] = {}
        while True:
            page = await self._run(lambda: s3.list_parts(**args), what)
            found.update((p["PartNumber"], p) for p in page.get("Parts", []))
            if not page.get("IsTruncated"):
                return found
            args["PartNumberMarker"] = page["NextPartNumberMarker"]

    async def _abort(self, s3: Any, target: dict[str, str], upload_id: str, what: str) -> None:
        await self._run(lambda: s3.abort_multipart_upload(**target, UploadId=upload_id), what)


def part_size(size: int, smallest: int | None = None) -> int:
    """The part size for an object of `size` bytes: `smallest` (PART_SIZE by default), or more when that
    would make more than MAX_PARTS parts. A function of the size alone, so a rerun cuts the same parts."""
    return max(PART_SIZE if smallest is None else smallest, -(-size // MAX_PARTS))


def _completed(part: Part) -> Part:
    return {"PartNumber": part["PartNumber"], "ETag": part["ETag"]}


async def _md5(data: bytes) -> str:
    # Not a security use: S3's ETag of a part is the MD5 of its bytes (unless KMS-encrypted, and then a
    # kept part merely looks different and is sent again).
    return await asyncio.to_thread(lambda: hashlib.md5(data, usedforsecurity=False).hexdigest())


class GcsBucket(Bucket):
    def __init__(self, url: str, bucket: str, prefix: str) -> None:
        super().__init__(url, prefix)
        self.bucket = bucket
        self._handle: GcsBucketHandle | None = None

    async def _gcs(self) -> GcsBucketHandle:
        """One client per bucket, made off the event loop (it looks for credentials)."""
        if self._handle is None:
            from google.cloud import storage  # type: ignore[import-untyped]

            self._handle = await self._run(
                lambda: storage.Client().bucket(self.bucket), f"{self.url}: GCS client"
            )
        return self._handle

    def _translate(self, exc: Exception, what: str) -> BucketError | None:
        import requests
        from google.api_core import exceptions as api
        from google.auth.exceptions import GoogleAuthError, TransportError

        message = f"{what}: {exc}"
        if isinstance(exc, api.PreconditionFailed):
            return PreconditionFailed(message)
        if isinstance(exc, api.NotFound):
            return ObjectNotFound(message)
        if isinstance(exc, api.GoogleAPICallError):
            return BucketError(message, transient=isinstance(exc, api.ServerError | api.TooManyRequests))
        if isinstance(exc, requests.ConnectionError | requests.Timeout | TransportError):
            return BucketError(message, transient=True)
        if isinstance(exc, GoogleAuthError):
            return BucketError(message)
        return None

    async def list(self, prefix: str = "") -> Listing:
        handle = await self._gcs()
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        pages = iter(handle.list_blobs(prefix=full, page_size=LIST_PAGE).pages)
        found: Listing = []
        while True:
            page = await self._run(lambda: next(pages, None), f"{self.url}: list {prefix!r}")
            if page is None:
                return sorted(found, key=lambda info: info.key)
            for blob in page:
                checksums = tuple(
                    (name, value) for name in ("md5", "crc32c") if (value := _checksum(blob, name))
                )
                found.append(
                    ObjectInfo(self._relative(blob.name), blob.size, str(blob.generation), checksums)
                )
            if len(found) > LIST_LIMIT:
                raise BucketError(f"{self.url}: more than {LIST_LIMIT} objects under {prefix!r}")

    async def read(self, key: str, *, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        if length == 0:
            return
        handle = await self._gcs()
        what = f"read {self._name(key)}"
        blob = await self._run(lambda: handle.get_blob(self._path(key)), what)
        if blob is None:
            raise ObjectNotFound(f"{what}: no such object")
        size = int(blob.size or 0)
        if start > size:
            raise BucketError(f"{what}: offset {start} is past the end ({size} bytes)")
        stop = size if length is None else min(size, start + length)
        # Every range from the generation read above: an overwrite mid-read fails the read (that generation
        # is gone) instead of splicing two versions.
        pinned = handle.blob(self._path(key), generation=blob.generation)
        for offset in range(start, stop, CHUNK):
            end = min(offset + CHUNK, stop) - 1
            yield await self._run(
                partial(pinned.download_as_bytes, start=offset, end=end, checksum=None),
                what,
            )

    async def write(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        handle = await self._gcs()
        blob = handle.blob(self._path(key), chunk_size=CHUNK)
        # GCS: generation 0 means "no live object".
        generation = 0 if if_absent else (int(if_match) if if_match is not None else None)
        what = f"write {self._name(key)}"
        parts = _parts(chunks, CHUNK)
        first = await anext(parts)
        second = await anext(parts, None)
        if second is None:
            await self._run(
                lambda: blob.upload_from_string(first, if_generation_match=generation, checksum="crc32c"),
                what,
            )
            return ObjectInfo(key, len(first), str(blob.generation))
        writer = await self._run(lambda: blob.open("wb", if_generation_match=generation), what)
        size = 0
        for part in (first, second):
            await self._run(partial(writer.write, part), what)
            size += len(part)
        async for part in parts:
            await self._run(partial(writer.write, part), what)
            size += len(part)
        await self._run(writer.close, what)
        # The SDK's writer drops the final response that names the new generation, so it is read back: a
        # writer landing in between would be reported instead (large objects only; CURRENT and manifests
        # go through the single request above).
        landed = await self._run(lambda: handle.get_blob(self._path(key)), what)
        if landed is None:
            raise BucketError(f"{what}: the object vanished right after it was written", transient=True)
        return ObjectInfo(key, size, str(landed.generation))

    async def delete(self, key: str) -> None:
        handle = await self._gcs()
        with contextlib.suppress(ObjectNotFound):
            await self._run(lambda: handle.delete_blob(self._path(key)), f"delete {self._name(key)}")

    async def copy_within(
        self, src_key: str, dst: Bucket, dst_key: str, moved: Moved = uncounted
    ) -> ObjectInfo | None:
        if not isinstance(dst, GcsBucket):
            return None
        source = (await self._gcs()).blob(self._path(src_key))
        target = (await dst._gcs()).blob(dst._path(dst_key))
        what = f"copy {self._name(src_key)} to {dst._name(dst_key)}"
        # A rewrite across locations or storage classes may take several calls, each resuming with a token.
        token: str | None = None
        while True:
            token, _, total = await self._run(
                partial(target.rewrite, source, token=token),
                what,
                COPY_TIMEOUT,
            )
            if token is None:
                moved(int(total))
                return ObjectInfo(dst_key, int(total), str(target.generation))


def _checksum(blob: Any, name: str) -> str | None:
    value = blob.md5_hash if name == "md5" else blob.crc32c
    return str(value) if value else None


class FileBucket(Bucket):
    """A folder. A write lands in PARTIAL_DIR first and is renamed in, so a reader never sees half a file;
    the rename and its precondition check happen under one lock per folder (flock), taken only for that."""

    def __init__(self, url: str, root: Path) -> None:
        super().__init__(url, "")
        self.root = root

    def _translate(self, exc: Exception, what: str) -> BucketError | None:
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFound(f"{what}: no such object")
        if isinstance(exc, OSError):
            return BucketError(f"{what}: {exc}")
        return None

    def _file(self, key: str) -> Path:
        return self.root / self._path(key)

    async def list(self, prefix: str = "") -> Listing:
        return await self._run(lambda: self._list(prefix), f"{self.url}: list {prefix!r}")

    def _list(self, prefix: str) -> Listing:
        top = self.root / prefix.rpartition("/")[0]
        found: Listing = []
        for folder, dirs, files in os.walk(top):
            if Path(folder) == self.root:
                dirs[:] = [d for d in dirs if d != PARTIAL_DIR]
            for name in files:
                path = Path(folder) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        found.append(ObjectInfo(key, *_size_and_version(path)))
            if len(found) > LIST_LIMIT:
                raise BucketError(f"{self.url}: more than {LIST_LIMIT} objects under {prefix!r}")
        return sorted(found, key=lambda info: info.key)

    async def read(self, key: str, *, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        path = self._file(key)
        what = f"read {self._name(key)}"
        file = await self._run(lambda: path.open("rb"), what)
        try:
            size = os.fstat(file.fileno()).st_size
            if start > size:
                raise BucketError(f"{what}: offset {start} is past the end ({size} bytes)")
            file.seek(start)
            left = size - start if length is None else length
            while left > 0 and (chunk := await self._run(partial(file.read, min(CHUNK, left)), what)):
                left -= len(chunk)
                yield chunk
        finally:
            file.close()

    async def write(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        async def fill(file: BinaryIO) -> None:
            async for chunk in chunks:
                await self._run(partial(file.write, chunk), f"write {self._name(key)}")

        return await self._land(key, fill, if_absent, if_match)

    async def _land(
        self,
        key: str,
        fill: Callable[[BinaryIO], Awaitable[None]],
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        """Fill a new file in PARTIAL_DIR, then rename it to `key` if the precondition holds."""
        path = self._file(key)
        what = f"write {self._name(key)}"
        partial = self.root / PARTIAL_DIR
        await self._run(lambda: partial.mkdir(parents=True, exist_ok=True), what)
        temporary = partial / uuid.uuid4().hex
        file = await self._run(lambda: temporary.open("xb"), what)
        try:
            try:
                await fill(file)
                await self._run(lambda: os.fsync(file.fileno()), what)
            finally:
                file.close()
            await self._run(lambda: self._commit(temporary, path, if_absent, if_match, what), what)
        finally:
            temporary.unlink(missing_ok=True)
        size, version = await self._run(lambda: _size_and_version(path), what)
        return ObjectInfo(key, size, version)

    def _commit(self, temporary: Path, path: Path, if_absent: bool, if_match: str | None, what: str) -> None:
        with (self.root / PARTIAL_DIR / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = _size_and_version(path)[1]
            except FileNotFoundError:
                current = None
            if if_absent and current is not None:
                raise PreconditionFailed(f"{what}: the object exists")
            if if_match is not None and current != if_match:
                raise PreconditionFailed(f"{what}: the object is no longer version {if_match}")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, path)

    async def delete(self, key: str) -> None:
        path = self._file(key)
        await self._run(lambda: path.unlink(missing_ok=True), f"delete {self._name(key)}")

    async def copy_within(
        self, src_key: str, dst: Bucket, dst_key: str, moved: Moved = uncounted
    ) -> ObjectInfo | None:
        # Between folders the bytes stream through `put`: hashed as they move (read once, where a copy
        # would be read back) and resumable.
        return None

    def _partial(self, key: str, sha256: str) -> Path:
        name = hashlib.sha256(f"{self._path(key)}\n{sha256}".encode()).hexdigest()
        return self.root / PARTIAL_DIR / f"resume-{name}"

    async def put(
        self, key: str, size: int, sha256: str, source: Resumable, moved: Moved = uncounted
    ) -> ObjectInfo:
        """Appended to a partial file named after the key and the content, so a rerun finds what a killed
        run wrote, hashes it again (local, cheap) and reads the source only from there on."""
        path = self._file(key)
        what = f"write {self._name(key)}"
        partial_file = self._partial(key, sha256)
        await self._run(lambda: partial_file.parent.mkdir(parents=True, exist_ok=True), what)
        file = await self._run(lambda: partial_file.open("a+b"), what)
        try:
            await self._run(lambda: _lock_alone(file, what), what)
            held = os.fstat(file.fileno()).st_size
            if held > size:
                await self._run(lambda: file.truncate(0), what)
                held = 0
            file.seek(0)
            left = held
            while left > 0 and (chunk := await self._run(partial(file.read, min(CHUNK, left)), what)):
                left -= len(chunk)
                await source.held(chunk)
            async for chunk in source.stream(held):
                await self._run(partial(file.write, chunk), what)
                moved(len(chunk))
            await self._run(partial(_flush, file), what)
            await self._run(lambda: self._commit(partial_file, path, False, None, what), what)
        finally:
            file.close()
        size_now, version = await self._run(lambda: _size_and_version(path), what)
        return ObjectInfo(key, size_now, version)

    async def abandon(self, key: str, sha256: str) -> None:
        partial_file = self._partial(key, sha256)
        await self._run(lambda: partial_file.unlink(missing_ok=True), f"abandon {self._name(key)}")


def _flush(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _lock_alone(file: BinaryIO, what: str) -> None:
    """Two syncers appending to one partial file would interleave; the second one fails instead (the lock
    goes with the file's closing, a killed process's too)."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise BucketError(f"{what}: another sync is writing it", transient=True) from exc


def _size_and_version(path: Path) -> tuple[int, str]:
    status = path.stat()
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "not a file", str(path))
    return status.st_size, f"{status.st_ino}-{status.st_mtime_ns}"
