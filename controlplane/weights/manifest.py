"""The manifest of one model version, where it lives in a bucket, and how a file's entry is computed.

A manifest is `{"model", "version", "files": [{"path", "size", "sha256", "checksums"?}]}`. `sha256` is the
truth every byte is verified against; `checksums` holds what a provider reports natively for the same
object (`crc32c`, `md5`, `etag`, ...) so a later sync can recognise unchanged objects from a listing without
reading them. Manifests come from buckets, so parsing is bounded and refuses anything that could escape
the version's folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterable, Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from controlplane.errors import InvalidInput
from controlplane.policy import Name, Version

MANIFEST_NAME = "manifest.json"
CURRENT_NAME = "CURRENT"
MAX_MANIFEST_BYTES = 32 * 1024 * 1024  # ~200k entries; the JSON parse is done whole, so this bounds memory
MAX_FILES = 100_000
MAX_PATH_BYTES = 1024  # S3's key limit; GCS allows the same
MAX_CURRENT_BYTES = 256
MAX_CHECKSUMS = 8
# hashlib releases the GIL while hashing buffers above ~2 KiB, so a chunk this big hashed in a worker
# thread runs in parallel with the event loop (and with other files' hashing) instead of stalling it;
# below it the thread hop costs more than the hash.
THREAD_HASH_MIN = 1024 * 1024

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ChecksumName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
ChecksumValue = Annotated[str, StringConstraints(min_length=1, max_length=256)]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ManifestError(InvalidInput):
    """A manifest (or CURRENT) that cannot be trusted as written; the message says which field and why."""


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file inside a version folder on every backend, or None when it can."""
    if not path:
        return "empty"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    if _CONTROL.search(path):
        return "contains a control character"
    if "\\" in path:
        return "contains '\\' (use '/' as the separator)"
    if path.startswith("/"):
        return "is absolute (starts with '/')"
    parts = path.split("/")
    if any(p == "" for p in parts):
        return "has an empty segment ('//' or a trailing '/')"
    if any(p in (".", "..") for p in parts):
        return "has a '.' or '..' segment"
    if path == MANIFEST_NAME:
        return f"is {MANIFEST_NAME!r}, which the manifest itself occupies"
    return None


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: Annotated[StrictInt, Field(ge=0)]
    sha256: Sha256Hex
    checksums: Annotated[dict[ChecksumName, ChecksumValue], Field(max_length=MAX_CHECKSUMS)] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _path(self) -> FileEntry:
        problem = path_problem(self.path)
        if problem is not None:
            raise ValueError(f"path {self.path[:80]!r} {problem}")
        if "sha256" in self.checksums:
            raise ValueError("checksums must not repeat sha256, which is a field of its own")
        return self

    def expected(self) -> dict[str, str]:
        """Every checksum this entry names, sha256 included, by algorithm."""
        return {**self.checksums, "sha256": self.sha256}


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The policy's own rules, so every model and version a policy can name has a manifest, and no other.
    model: Name
    version: Version
    files: Annotated[tuple[FileEntry, ...], Field(max_length=MAX_FILES)]

    @field_validator("files")
    @classmethod
    def _canonical(cls, files: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
        # Sorted here, not only when encoding, so two manifests listing the same files compare equal.
        ordered = tuple(sorted(files, key=lambda f: f.path))
        seen: set[str] = set()
        for f in ordered:
            if f.path in seen:
                raise ValueError(f"duplicate path {f.path[:80]!r}")
            seen.add(f.path)
        # A path that is also another's folder cannot exist on a file system, and on object stores
        # it would make the folder's listing ambiguous.
        for f in ordered:
            parts = f.path.split("/")
            for i in range(1, len(parts)):
                folder = "/".join(parts[:i])
                if folder in seen:
                    raise ValueError(f"path {folder[:80]!r} is a file and also the folder of {f.path[:80]!r}")
        return ordered

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def encode(self) -> bytes:
        """Canonical bytes: keys sorted, no spaces, files by path, empty `checksums` left out, one final
        newline. Rewriting an unchanged manifest therefore writes the same bytes (and the same ETag)."""
        doc: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "files": [
                {
                    "path": f.path,
                    "size": f.size,
                    "sha256": f.sha256,
                    **({"checksums": f.checksums} if f.checksums else {}),
                }
                for f in self.files
            ],
        }
        return (json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _problems(error: ValidationError) -> str:
    shown = []
    for e in error.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        shown.append(f"{where}: {message}" if where else message)
    more = error.error_count() - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def parse_manifest(data: bytes | str, *, model: str | None = None, version: str | None = None) -> Manifest:
    """Parse manifest text read from a bucket. With `model`/`version`, also refuse a manifest that claims
    to be of another one (one copied into the wrong folder).

    Up to MAX_MANIFEST_BYTES, this is tens of milliseconds of CPU: async callers run it with
    `asyncio.to_thread`.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest: {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as e:
        raise ManifestError(f"manifest: {_problems(e)}") from None
    if model is not None and manifest.model != model:
        raise ManifestError(f"manifest: model is {manifest.model!r}, expected {model!r}")
    if version is not None and manifest.version != version:
        raise ManifestError(f"manifest: version is {manifest.version!r}, expected {version!r}")
    return manifest


class Hasher:
    """SHA-256 and size of one object, fed chunk by chunk as the bytes stream past (so a copy can verify
    what it moves without reading it twice). Big chunks are hashed in a worker thread; see THREAD_HASH_MIN.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    async def update(self, chunk: bytes) -> None:
        # Awaited one at a time per Hasher, so the thread never races another update of the same object.
        if len(chunk) >= THREAD_HASH_MIN:
            await asyncio.to_thread(self._sha.update, chunk)
        else:
            self._sha.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def entry(self, path: str, checksums: Mapping[str, str] | None = None) -> FileEntry:
        return FileEntry(path=path, size=self.size, sha256=self.hexdigest(), checksums=dict(checksums or {}))


async def hash_stream(
    path: str, chunks: AsyncIterable[bytes], checksums: Mapping[str, str] | None = None
) -> FileEntry:
    """The manifest entry for `path` from its bytes, each read once."""
    hasher = Hasher()
    async for chunk in chunks:
        await hasher.update(chunk)
    return hasher.entry(path, checksums)


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def version_prefix(prefix: str, model: str, version: str) -> str:
    """`<prefix>/<model>/<version>` (no trailing '/'); `prefix` may be empty (the bucket's root)."""
    return _join(prefix, model, version)


def file_key(prefix: str, model: str, version: str, path: str) -> str:
    return _join(prefix, model, version, path)


def manifest_key(prefix: str, model: str, version: str) -> str:
    return _join(prefix, model, version, MANIFEST_NAME)


def current_key(prefix: str, model: str) -> str:
    return _join(prefix, model, CURRENT_NAME)


def encode_current(version: str) -> bytes:
    return version.encode()


def parse_current(data: bytes) -> str:
    """The version a CURRENT object names. One trailing newline is forgiven (hand-written with echo)."""
    if len(data) > MAX_CURRENT_BYTES:
        raise ManifestError(f"CURRENT: {len(data)} bytes, more than the {MAX_CURRENT_BYTES} allowed")
    try:
        return _VERSION.validate_python(data.decode("utf-8").removesuffix("\n"))
    except (UnicodeDecodeError, ValidationError):
        raise ManifestError(f"CURRENT: {data[:80]!r} is not a version name") from None


_VERSION: TypeAdapter[str] = TypeAdapter(Version)
