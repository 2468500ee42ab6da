"""The manifest: canonical bytes, bounded parsing that refuses anything escaping its folder, and hashing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.errors import InvalidInput
from controlplane.weights.manifest import (
    MAX_FILES,
    MAX_MANIFEST_BYTES,
    THREAD_HASH_MIN,
    FileEntry,
    Manifest,
    ManifestError,
    current_key,
    encode_current,
    file_key,
    hash_stream,
    manifest_key,
    parse_current,
    parse_manifest,
    version_prefix,
)

SHA = "ab" * 32


def doc(*files: dict[str, Any], model: str = "llama-8b", version: str = "2026-11-01") -> str:
    return json.dumps({"model": model, "version": version, "files": list(files)})


def entry(path: str, size: int = 1, **more: Any) -> dict[str, Any]:
    return {"path": path, "size": size, "sha256": SHA, **more}


segments = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
paths = st.lists(segments, min_size=1, max_size=3).map("/".join)
manifests = st.builds(
    Manifest,
    model=st.just("llama-8b"),
    version=st.sampled_from(["v1", "2026-11-01"]),
    files=st.lists(
        st.builds(
            FileEntry,
            path=paths.filter(lambda p: p != "manifest.json"),
            size=st.integers(0, 2**40),
            sha256=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
            checksums=st.dictionaries(
                st.sampled_from(["crc32c", "etag", "md5"]), st.text(min_size=1, max_size=20)
            ),
        ),
        max_size=6,
        unique_by=lambda f: f.path,
    ).filter(lambda fs: not any(b.path.startswith(a.path + "/") for a in fs for b in fs)),
)


@given(manifests)
@settings(max_examples=150)
def test_round_trip_is_identity_and_rewriting_is_byte_identical(m: Manifest) -> None:
    encoded = m.encode()
    again = parse_manifest(encoded)
    assert again == m
    assert again.encode() == encoded


def test_file_order_does_not_change_the_manifest_or_its_bytes() -> None:
    a = parse_manifest(doc(entry("b"), entry("a/x", checksums={"crc32c": "q"})))
    b = parse_manifest(doc(entry("a/x", checksums={"crc32c": "q"}), entry("b")))
    assert a == b
    assert a.encode() == b.encode()
    assert [f.path for f in a.files] == ["a/x", "b"]


def test_encoding_is_compact_sorted_and_leaves_out_empty_checksums() -> None:
    m = parse_manifest(doc(entry("w.bin", 7)))
    head = '{"files":[{"path":"w.bin","sha256":"' + SHA
    expected = head + '","size":7}],"model":"llama-8b","version":"2026-11-01"}\n'
    assert m.encode() == expected.encode()
    assert m.total_bytes == 7
    assert m.file("w.bin") is not None and m.file("nope") is None


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../x", "'..' segment"),
        ("a/../../x", "'..' segment"),
        ("a/./b", "'.' or '..' segment"),
        ("a\\b", "use '/'"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("manifest.json", "manifest itself"),
        ("x" * 1025, "longer than 1024 bytes"),
    ],
)
def test_paths_that_could_escape_or_collide_are_refused(path: str, why: str) -> None:
    with pytest.raises(ManifestError, match=r"^manifest: files\.0: path") as info:
        parse_manifest(doc(entry(path)))
    assert why in str(info.value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (doc(entry("a"), entry("a")), "duplicate path 'a'"),
        (doc(entry("a"), entry("a/b")), "'a' is a file and also the folder of 'a/b'"),
        (doc(entry("a"), model="../etc"), "model"),
        (doc(entry("a"), version="v/1"), "version"),
        (doc(entry("a", -1)), "files.0.size"),
        (doc(entry("a", True)), "files.0.size"),
        (doc(entry("a", "1")), "files.0.size"),
        (doc({"path": "a", "size": 1, "sha256": "AB" * 32}), "files.0.sha256"),
        (doc({"path": "a", "size": 1, "sha256": "ab"}), "files.0.sha256"),
        (doc({"path": "a", "size": 1}), "files.0.sha256"),
        (doc(entry("a", mtime=3)), "files.0.mtime"),
        (doc(entry("a", checksums={"sha256": SHA})), "repeat sha256"),
        (doc(entry("a", checksums={"Bad Name": "x"})), "files.0.checksums"),
        (doc(entry("a", checksums={"crc32c": ""})), "files.0.checksums.crc32c"),
        (doc(entry("a", checksums={f"c{i}": "x" for i in range(9)})), "files.0.checksums"),
        (json.dumps({"model": "m", "version": "v", "files": [], "extra": 1}), "extra"),
        (json.dumps({"model": "m", "version": "v", "files": {}}), "files"),
        ("[]", "should be an object"),
        ("{not json", "Invalid JSON"),
    ],
)
def test_malformed_manifests_are_refused_with_the_field_named(text: str, why: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    assert why in str(info.value)
    assert str(info.value).startswith("manifest: ")
    assert len(str(info.value)) < 600


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(ManifestError, match="Invalid JSON"):
        parse_manifest(b'{"model": "\xff"}')


def test_a_manifest_error_is_invalid_input_for_the_cli_and_api() -> None:
    assert issubclass(ManifestError, InvalidInput)


def test_a_manifest_of_another_model_or_version_is_refused_when_expected() -> None:
    text = doc(entry("a"))
    assert parse_manifest(text, model="llama-8b", version="2026-11-01").version == "2026-11-01"
    with pytest.raises(ManifestError, match="model is 'llama-8b', expected 'other'"):
        parse_manifest(text, model="other")
    with pytest.raises(ManifestError, match="version is '2026-11-01', expected 'v2'"):
        parse_manifest(text, version="v2")


def test_oversized_text_is_refused_before_it_is_parsed() -> None:
    big = doc(entry("a")) + " " * MAX_MANIFEST_BYTES
    with pytest.raises(ManifestError, match="more than the"):
        parse_manifest(big)


def test_too_many_files_are_refused() -> None:
    text = doc(*(entry(f"f{i}") for i in range(MAX_FILES + 1)))
    assert len(text) < MAX_MANIFEST_BYTES
    with pytest.raises(ManifestError, match=f"at most {MAX_FILES}"):
        parse_manifest(text)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("chunk", [1, 4096, THREAD_HASH_MIN - 1, THREAD_HASH_MIN, 3 * THREAD_HASH_MIN])
async def test_hash_stream_gives_the_sha256_and_size_of_every_byte(chunk: int) -> None:
    data = bytes(range(256)) * (3 * THREAD_HASH_MIN // 256 + 7) if chunk > 1 else b"hello, weights"
    got = await hash_stream("w/0.bin", _chunks(data, chunk), {"crc32c": "x"})
    assert got == FileEntry(
        path="w/0.bin", size=len(data), sha256=hashlib.sha256(data).hexdigest(), checksums={"crc32c": "x"}
    )


async def test_hash_stream_of_nothing_is_the_empty_file() -> None:
    got = await hash_stream("empty", _chunks(b"", 1))
    assert (got.size, got.sha256) == (0, hashlib.sha256(b"").hexdigest())


@pytest.mark.parametrize(
    ("prefix", "root"),
    [("models", "models/"), ("/models/", "models/"), ("", ""), ("a/b", "a/b/")],
)
def test_layout(prefix: str, root: str) -> None:
    assert version_prefix(prefix, "llama-8b", "v1") == f"{root}llama-8b/v1"
    assert file_key(prefix, "llama-8b", "v1", "shards/0.bin") == f"{root}llama-8b/v1/shards/0.bin"
    assert manifest_key(prefix, "llama-8b", "v1") == f"{root}llama-8b/v1/manifest.json"
    assert current_key(prefix, "llama-8b") == f"{root}llama-8b/CURRENT"


def test_current_round_trips_and_forgives_one_newline() -> None:
    assert parse_current(encode_current("2026-11-01")) == "2026-11-01"
    assert parse_current(b"2026-11-01\n") == "2026-11-01"


@pytest.mark.parametrize("data", [b"", b"../v1", b"v1\n\n", b"v\t1", b"v" * 200, b"\xff"])
def test_a_current_that_names_no_version_is_refused(data: bytes) -> None:
    with pytest.raises(ManifestError, match="CURRENT"):
        parse_current(data)


def test_any_version_the_policy_accepts_has_a_manifest_and_a_current() -> None:
    m = parse_manifest(doc(entry("a"), version="v1+cu121 rc.2"))
    assert parse_manifest(m.encode()) == m
    assert parse_current(encode_current(m.version)) == "v1+cu121 rc.2"
