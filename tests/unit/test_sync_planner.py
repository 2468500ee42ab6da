"""The sync planner: copy, skip, repair or blocked, judged by content and residency, never by size + mtime."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.weights.manifest import FileEntry, Manifest
from controlplane.weights.planner import Destination, Held, Repair, plan_destination, plan_model


def sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


A = FileEntry(path="a.bin", size=10, sha256=sha("a"), checksums={"crc32c": "ca", "etag": "ea"})
B = FileEntry(path="shards/b.bin", size=20, sha256=sha("b"))
MANIFEST = Manifest(model="llama-8b", version="v2", files=(A, B))
EU = frozenset({"EU"})


def dest(
    held: dict[str, Held] | None = None, marker: Manifest | None = None, current: str | None = None
) -> Destination:
    return Destination("eu-west", "EU", "s3://eu/models", held or {}, marker, current)


def whole(entry: FileEntry) -> Held:
    return Held(entry.size, {"sha256": entry.sha256})


def marker(*files: FileEntry) -> Manifest:
    return Manifest(model="llama-8b", version="v2", files=files)


def verdict(held: Held, recorded: FileEntry | None = None) -> str:
    """What the planner does with A when the destination holds `held` for it."""
    plan = plan_destination(
        MANIFEST, dest({"a.bin": held}, marker=marker(recorded) if recorded else None), EU
    )
    if plan.skip == (A,):
        return "skip"
    (repair,) = plan.repair
    return f"repair: {repair.why}"


@pytest.mark.parametrize(
    ("held", "recorded", "expected"),
    [
        (Held(10, {"sha256": sha("a")}), None, "skip"),
        (Held(10, {"crc32c": "ca"}), None, "skip"),
        (Held(10, {"sha256": sha("a"), "etag": "other-upload"}), None, "skip"),
        # Same size, different bytes: the case size + mtime would miss.
        (Held(10, {"sha256": sha("corrupt")}), None, "repair: sha256 differs from the manifest"),
        (Held(10, {"crc32c": "XX"}), None, "repair: crc32c differs from the manifest"),
        (Held(10, {"crc32c": "XX", "etag": "ea"}), None, "repair: crc32c differs from the manifest"),
        (Held(9, {"sha256": sha("a")}), None, "repair: size 9, manifest says 10"),
        (Held(10), None, "repair: no checksum to verify its content by"),
        (Held(10, {"etag": "ea"}), None, "skip"),  # a server-side copy keeps the source's ETag
        (Held(10, {"etag": "ea-2"}), None, "repair: no checksum to verify its content by"),
        # The destination's own ETag, recorded when the copier verified those bytes against sha256.
        (Held(10, {"etag": "d1"}), A.model_copy(update={"checksums": {"etag": "d1"}}), "skip"),
        (
            Held(10, {"etag": "d2"}),
            A.model_copy(update={"checksums": {"etag": "d1"}}),
            "repair: etag changed since it was verified",
        ),
        # A marker entry for other bytes vouches for nothing.
        (
            Held(10, {"etag": "d1"}),
            A.model_copy(update={"sha256": sha("old"), "checksums": {"etag": "d1"}}),
            "repair: no checksum to verify its content by",
        ),
        # Content evidence outranks a fingerprint that moved (same bytes rewritten).
        (
            Held(10, {"md5": "m", "sha256": sha("a"), "etag": "d2"}),
            A.model_copy(update={"checksums": {"etag": "d1"}}),
            "skip",
        ),
    ],
)
def test_a_present_file_is_skipped_only_on_content_evidence(
    held: Held, recorded: FileEntry | None, expected: str
) -> None:
    assert verdict(held, recorded) == expected


def test_absent_files_are_copied_and_the_rest_sorted_out() -> None:
    plan = plan_destination(
        MANIFEST,
        dest({"a.bin": Held(10, {"sha256": sha("x")}), "old.bin": Held(1), "manifest.json": Held(5)}),
        EU,
    )
    assert plan.copy == (B,)
    assert plan.skip == ()
    assert plan.repair == (Repair(A, "sha256 differs from the manifest"),)
    assert plan.extra == ("old.bin",)
    assert plan.transfer == (A, B)
    assert plan.transfer_bytes == 30
    assert (plan.blocked, plan.current, plan.promote) == (None, False, True)


def test_a_destination_outside_the_models_jurisdictions_is_blocked_whole_with_the_rule() -> None:
    us = Destination(region="us-east", jurisdiction="US", bucket="s3://us/models")
    plan = plan_destination(MANIFEST, us, EU)
    assert plan.blocked == "model llama-8b may be stored only in EU; region us-east is in US"
    assert (plan.copy, plan.skip, plan.repair, plan.transfer, plan.current, plan.promote) == (
        (),
        (),
        (),
        (),
        False,
        False,
    )


def test_a_model_without_jurisdictions_may_be_stored_anywhere() -> None:
    us = Destination(region="us-east", jurisdiction="US", bucket="s3://us/models")
    assert plan_destination(MANIFEST, us, None).copy == (A, B)


@pytest.mark.parametrize(
    ("marker_", "current", "is_current"),
    [
        (marker(A, B), "v2", True),
        (marker(A, B), "v1", False),  # verified but not promoted yet
        (marker(A, B), None, False),
        (None, "v2", False),  # CURRENT without a marker: never trusted as whole
        (marker(A), "v2", False),  # a marker of part of the version
        (marker(A, B.model_copy(update={"sha256": sha("old")})), "v2", False),
        (Manifest(model="llama-8b", version="v1", files=(A, B)), "v2", False),
    ],
)
def test_current_only_when_whole_verified_marked_and_named_by_current(
    marker_: Manifest | None, current: str | None, is_current: bool
) -> None:
    plan = plan_destination(
        MANIFEST, dest({"a.bin": whole(A), "shards/b.bin": whole(B)}, marker=marker_, current=current), EU
    )
    assert (plan.skip, plan.copy, plan.repair) == ((A, B), (), ())
    assert (plan.current, plan.promote) == (is_current, not is_current)


def test_a_current_destination_missing_a_file_is_not_current() -> None:
    plan = plan_destination(MANIFEST, dest({"a.bin": whole(A)}, marker=marker(A, B), current="v2"), EU)
    assert (plan.copy, plan.current) == ((B,), False)


def test_the_model_plan_orders_destinations_and_is_done_only_when_all_are_current() -> None:
    done = dest({"a.bin": whole(A), "shards/b.bin": whole(B)}, marker=marker(A, B), current="v2")
    empty = Destination(region="eu-central", jurisdiction="EU", bucket="gs://c/m")
    us = Destination(region="us-east", jurisdiction="US", bucket="s3://us/models")
    plan = plan_model(MANIFEST, [us, done, empty], EU)
    assert [d.region for d in plan.destinations] == ["eu-central", "eu-west", "us-east"]
    assert [d.region for d in plan.blocked] == ["us-east"]
    assert not plan.done
    assert plan_model(MANIFEST, [done], EU).done
    assert not plan_model(MANIFEST, [done, us], EU).done


def test_a_region_listed_twice_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="region eu-west is listed twice"):
        plan_model(MANIFEST, [dest(), dest(current="v2")], EU)


paths = st.text(alphabet="abc/", min_size=1, max_size=6).filter(
    lambda p: "//" not in p and not p.startswith("/") and not p.endswith("/")
)
digests = st.sampled_from([sha(str(i)) for i in range(4)])
manifests = (
    st.lists(
        st.builds(FileEntry, path=paths, size=st.integers(0, 3), sha256=digests, checksums=st.just({})),
        max_size=6,
        unique_by=lambda f: f.path,
    )
    .filter(lambda fs: not any(b.path.startswith(a.path + "/") for a in fs for b in fs))
    .map(lambda fs: Manifest(model="m", version="v", files=tuple(fs)))
)
helds = st.builds(
    Held, size=st.integers(0, 3), checksums=st.dictionaries(st.sampled_from(["sha256", "etag"]), digests)
)


@st.composite
def destinations(draw: st.DrawFn, m: Manifest) -> Destination:
    names = [f.path for f in m.files] + ["zz", "a/zz"]
    held = draw(st.dictionaries(st.sampled_from(names), helds))
    return Destination(
        region=draw(st.sampled_from(["r1", "r2", "r3"])),
        jurisdiction=draw(st.sampled_from(["EU", "US"])),
        bucket=draw(st.sampled_from(["s3://x/p", "gs://y/p"])),
        held=held,
        marker=draw(st.sampled_from([None, m])),
        current=draw(st.sampled_from([None, "v", "old"])),
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[Manifest, list[Destination], frozenset[str] | None]:
    m = draw(manifests)
    return (
        m,
        draw(st.lists(destinations(m), max_size=3, unique_by=lambda d: d.region)),
        draw(st.sampled_from([None, EU, frozenset({"US", "EU"})])),
    )


@given(cases())
@settings(max_examples=300)
def test_every_file_lands_in_exactly_one_outcome_and_blocked_means_nothing(
    case: tuple[Manifest, list[Destination], frozenset[str] | None],
) -> None:
    m, dests, allowed = case
    for d in plan_model(m, dests, allowed).destinations:
        if d.blocked is not None:
            assert allowed is not None and d.jurisdiction not in allowed
            assert (d.copy, d.skip, d.repair, d.current) == ((), (), (), False)
            continue
        outcomes = [f.path for f in d.copy] + [f.path for f in d.skip] + [r.entry.path for r in d.repair]
        assert sorted(outcomes) == [f.path for f in m.files]
        for part in (d.copy, d.skip, tuple(r.entry for r in d.repair)):
            assert [f.path for f in part] == sorted(f.path for f in part)


@given(cases())
@settings(max_examples=200)
def test_planning_is_deterministic_whatever_the_input_order(
    case: tuple[Manifest, list[Destination], frozenset[str] | None],
) -> None:
    m, dests, allowed = case
    shuffled = [
        Destination(
            d.region, d.jurisdiction, d.bucket, dict(reversed(list(d.held.items()))), d.marker, d.current
        )
        for d in reversed(dests)
    ]
    assert plan_model(m, dests, allowed) == plan_model(m, shuffled, allowed)


@given(manifests, st.sampled_from([None, "v"]))
@settings(max_examples=200)
def test_a_destination_whose_listing_equals_the_manifest_needs_nothing(
    m: Manifest, current: str | None
) -> None:
    held = {f.path: Held(f.size, {"sha256": f.sha256, "etag": "anything"}) for f in m.files}
    plan = plan_destination(m, dest(held, marker=m, current=current), EU)
    assert plan.transfer == ()
    assert plan.skip == m.files
    assert plan.current == (current == "v")
