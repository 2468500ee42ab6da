"""Sync planner: what each destination bucket needs so that it holds one model version whole and verified.

Pure: the copier lists each destination, builds a `Destination`, and acts on the `DestinationPlan`.

An object is skipped only on evidence about its content, never on size and mtime:
- a content checksum (sha256, md5, crc32c, ...) the destination reports that equals the manifest's: skip;
  one that differs: repair, whatever the size says (a same-size corruption is a repair);
- otherwise an opaque fingerprint (an ETag, which depends on how the object was uploaded, or a
  generation) that equals the one the destination's verified marker recorded when the copier last
  checked those bytes against sha256, or equals the source's: skip; differing from the marker's: the
  object was rewritten since it was verified, repair;
- nothing to judge the content by: repair (the copier rewrites it and verifies what it writes).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from controlplane.weights.manifest import MANIFEST_NAME, FileEntry, Manifest

# Checksums that are a function of the bytes alone, so equal means same content and different means
# different content, whichever bucket or upload method produced them. Anything else (etag, generation)
# only proves sameness when equal.
CONTENT_CHECKSUMS = frozenset({"sha256", "sha1", "md5", "crc32", "crc32c", "crc64nvme"})


@dataclass(frozen=True, slots=True)
class Held:
    """One object under the destination's `<prefix>/<model>/<version>/`, as its listing reports it."""

    size: int
    checksums: Mapping[str, str] = field(default_factory=dict)  # algorithm -> value, as in FileEntry


@dataclass(frozen=True, slots=True)
class Destination:
    region: str
    jurisdiction: str
    bucket: str  # URL, for the plan's wording
    held: Mapping[str, Held] = field(default_factory=dict)  # path relative to the version folder
    # The destination's own manifest.json for this version, written by the copier only after every file
    # verified, with that bucket's native checksums of what it verified. None when there is none.
    marker: Manifest | None = None
    current: str | None = None  # what the destination's CURRENT names, if it exists


@dataclass(frozen=True, slots=True)
class Repair:
    entry: FileEntry
    why: str


@dataclass(frozen=True, slots=True)
class DestinationPlan:
    region: str
    jurisdiction: str
    bucket: str
    copy: tuple[FileEntry, ...] = ()
    skip: tuple[FileEntry, ...] = ()
    repair: tuple[Repair, ...] = ()
    extra: tuple[str, ...] = ()  # held objects the manifest does not name; never deleted by the planner
    blocked: str | None = None  # the residency rule that refuses this destination, in words
    current: bool = False  # holds the version verified and CURRENT names it: nothing at all to do
    holds: str | None = None  # what the destination's CURRENT names (any version), None when absent

    @property
    def transfer(self) -> tuple[FileEntry, ...]:
        """Every file to write, absent or wrong, by path."""
        return tuple(sorted((*self.copy, *(r.entry for r in self.repair)), key=lambda f: f.path))

    @property
    def transfer_bytes(self) -> int:
        return sum(f.size for f in self.transfer)

    @property
    def promote(self) -> bool:
        """Whether the marker and CURRENT must be written once the transfers verify."""
        return self.blocked is None and not self.current


@dataclass(frozen=True, slots=True)
class ModelPlan:
    model: str
    version: str
    destinations: tuple[DestinationPlan, ...]

    @property
    def blocked(self) -> tuple[DestinationPlan, ...]:
        return tuple(d for d in self.destinations if d.blocked is not None)

    @property
    def done(self) -> bool:
        """Every allowed destination is current and none is blocked (the CLI's exit 0)."""
        return all(d.current for d in self.destinations)


def residency_rule(model: str, allowed: Collection[str] | None, region: str, jurisdiction: str) -> str | None:
    """Why `model` may not be stored in `region`, or None when it may (`allowed` None: anywhere)."""
    if allowed is None or jurisdiction in allowed:
        return None
    return (
        f"model {model} may be stored only in {', '.join(sorted(allowed))}; "
        f"region {region} is in {jurisdiction}"
    )


def _judge(entry: FileEntry, held: Held, verified: FileEntry | None) -> str | None:
    """Why `held` is not `entry`'s bytes, or None when its content is known to be right."""
    if held.size != entry.size:
        return f"size {held.size}, manifest says {entry.size}"
    expected = entry.expected()
    matched = False
    for algorithm in sorted(held.checksums.keys() & expected.keys() & CONTENT_CHECKSUMS):
        if held.checksums[algorithm] != expected[algorithm]:
            return f"{algorithm} differs from the manifest"
        matched = True
    if matched:
        return None
    recorded = verified.checksums if verified is not None else {}
    for algorithm in sorted(held.checksums.keys() & recorded.keys()):
        if held.checksums[algorithm] != recorded[algorithm]:
            return f"{algorithm} changed since it was verified"
        matched = True
    if matched:
        return None
    for algorithm in sorted(held.checksums.keys() & expected.keys()):
        if held.checksums[algorithm] == expected[algorithm]:
            return None
    return "no checksum to verify its content by"


def _content(manifest: Manifest) -> tuple[tuple[str, int, str], ...]:
    return tuple((f.path, f.size, f.sha256) for f in manifest.files)


def plan_destination(
    manifest: Manifest, destination: Destination, allowed: Collection[str] | None
) -> DestinationPlan:
    rule = residency_rule(manifest.model, allowed, destination.region, destination.jurisdiction)
    if rule is not None:
        return DestinationPlan(destination.region, destination.jurisdiction, destination.bucket, blocked=rule)
    marker = destination.marker
    if marker is not None and (marker.model, marker.version) != (manifest.model, manifest.version):
        marker = None
    copy: list[FileEntry] = []
    skip: list[FileEntry] = []
    repair: list[Repair] = []
    for entry in manifest.files:  # sorted by path
        held = destination.held.get(entry.path)
        if held is None:
            copy.append(entry)
            continue
        verified = marker.file(entry.path) if marker is not None else None
        # The marker vouches only for bytes that had this manifest's sha256 when it was written.
        if verified is not None and (verified.sha256, verified.size) != (entry.sha256, entry.size):
            verified = None
        why = _judge(entry, held, verified)
        if why is None:
            skip.append(entry)
        else:
            repair.append(Repair(entry, why))
    names = {f.path for f in manifest.files}
    extra = tuple(sorted(p for p in destination.held if p not in names and p != MANIFEST_NAME))
    whole = not copy and not repair
    verified_marker = marker is not None and _content(marker) == _content(manifest)
    return DestinationPlan(
        destination.region,
        destination.jurisdiction,
        destination.bucket,
        copy=tuple(copy),
        skip=tuple(skip),
        repair=tuple(repair),
        extra=extra,
        current=whole and verified_marker and destination.current == manifest.version,
        holds=destination.current,
    )


def plan_model(
    manifest: Manifest, destinations: Collection[Destination], allowed: Collection[str] | None
) -> ModelPlan:
    """The plan for every destination (one per region) of one model version, by region.

    `allowed`: the model's jurisdictions from the policy, None when it may be stored anywhere.
    """
    ordered = sorted(destinations, key=lambda d: d.region)
    for first, second in pairwise(ordered):
        if first.region == second.region:
            # Two listings for one region would make the plan depend on which came first.
            raise ValueError(f"region {first.region} is listed twice")
    return ModelPlan(
        manifest.model, manifest.version, tuple(plan_destination(manifest, d, allowed) for d in ordered)
    )
