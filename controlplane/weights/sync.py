"""One sync of one model version from its source to the bucket of every region serving it.

Read (or compute once and store) the source manifest; list each allowed destination's version folder,
its marker (its own manifest.json, written only after every file verified there) and CURRENT; plan
(planner.py, pure); copy and repair (copier.py); write the marker; then move CURRENT with a precondition,
so two syncers racing cannot both promote and a partial version is never current: a run killed at any
point before the marker leaves neither marker nor a moved CURRENT, and the next run resumes its transfers
(copier.py). A destination the model may not be stored in is never read or written.

Every write into a destination (copies, marker, CURRENT, retention's) happens under its lease (lease.py),
and the destination is surveyed again once the lease is held: one syncer at a time does the work, and
another one finding it held reports the destination busy. A destination already current with no retention
to do is not written, so it takes no lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass

from controlplane.policy import Model, Policy, Region
from controlplane.weights.buckets import (
    Bucket,
    BucketError,
    ObjectInfo,
    PreconditionFailed,
    open_bucket,
    whole,
)
from controlplane.weights.copier import Transfer, copy_files, fingerprint
from controlplane.weights.lease import (
    LEASE_TERMS,
    HeldLease,
    LeaseBusy,
    LeaseLost,
    LeaseTerms,
    Syncer,
    acquire,
    run_leased,
)
from controlplane.weights.manifest import (
    MAX_MANIFEST_BYTES,
    FileEntry,
    Manifest,
    ManifestError,
    current_key,
    file_key,
    hash_stream,
    manifest_key,
    parse_manifest,
    version_prefix,
)
from controlplane.weights.planner import CONTENT_CHECKSUMS, Destination, DestinationPlan, Held, plan_model
from controlplane.weights.progress import QUIET, SyncProgress, TransferProgress
from controlplane.weights.retention import (
    MAX_HISTORY_BYTES,
    Retention,
    after_promotion,
    current_version,
    garbage,
    history_key,
    parse_history,
    retain,
)

log = logging.getLogger(__name__)

# A survey only lists buckets and reads small markers; one that takes longer is treated as a bucket that
# could not be read (what was known stays), so a hung bucket API cannot hold routing's first decision.
SURVEY_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class DestinationResult:
    plan: DestinationPlan
    failures: tuple[str, ...] = ()
    # This run wrote the marker and CURRENT names the version: this run moved it, or another syncer of the
    # same version did between this run's survey and its own conditional write.
    promoted: bool = False
    bytes_copied: int = 0  # moved into the destination by this run; what an interrupted run left, not
    failed_files: tuple[str, ...] = ()  # paths whose copy failed (their errors are among `failures`)
    retention: Retention | None = None  # the history recorded and old versions deleted once current
    surveyed: bool = True  # False: the bucket could not be listed, so the plan is empty and says nothing

    @property
    def ok(self) -> bool:
        return self.plan.blocked is None and not self.failures and (self.plan.current or self.promoted)


@dataclass(frozen=True, slots=True)
class SyncReport:
    model: str
    version: str
    dry_run: bool
    destinations: tuple[DestinationResult, ...] = ()
    manifest_computed: bool = False  # the source had none; one was computed (and, unless dry, stored)
    error: str | None = None  # the source itself could not be read: nothing was planned

    @property
    def ok(self) -> bool:
        """Every allowed copy is current, none is blocked and nothing failed (the CLI's exit 0)."""
        return self.error is None and all(d.ok for d in self.destinations)

    @property
    def bytes_copied(self) -> int:
        return sum(d.bytes_copied for d in self.destinations)


class _CurrentState:
    """A destination's CURRENT: what it names (None when absent or unreadable) and the object's version,
    which the promotion's precondition pins."""

    def __init__(self, info: ObjectInfo | None, names: str | None) -> None:
        self.info = info
        self.names = names


async def _read_manifest(bucket: Bucket, model: str, version: str) -> Manifest | None:
    data = await bucket.read_small(manifest_key("", model, version), MAX_MANIFEST_BYTES)
    if data is None:
        return None
    return await asyncio.to_thread(parse_manifest, data, model=model, version=version)


async def source_manifest(
    source: Bucket, model: str, version: str, limit: asyncio.Semaphore, *, dry_run: bool
) -> tuple[Manifest, bool]:
    """The source's manifest, and whether it had to be computed (every byte read once)."""
    found = await _read_manifest(source, model, version)
    if found is not None:
        return found, False
    folder = version_prefix("", model, version) + "/"
    listing = [i for i in await source.list(folder) if i.key != manifest_key("", model, version)]
    if not listing:
        raise BucketError(f"{source.url}: nothing under {folder} to sync")

    async def entry(info: ObjectInfo) -> FileEntry:
        content = {k: v for k, v in info.checksums if k in CONTENT_CHECKSUMS}
        async with limit:
            return await hash_stream(info.key[len(folder) :], source.read(info.key), content)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(entry(info)) for info in listing]
    manifest = Manifest(model=model, version=version, files=tuple(t.result() for t in tasks))
    if not dry_run:
        try:
            await source.write(manifest_key("", model, version), whole(manifest.encode()), if_absent=True)
        except PreconditionFailed:
            # Another syncer stored one meanwhile: theirs is the source's manifest from now on.
            theirs = await _read_manifest(source, model, version)
            if theirs is None:
                raise
            return theirs, True
    return manifest, True


async def _current(bucket: Bucket, model: str) -> _CurrentState:
    key = current_key("", model)
    info = next((i for i in await bucket.list(key) if i.key == key), None)
    if info is None:
        return _CurrentState(None, None)
    return _CurrentState(info, await current_version(bucket, model))


@dataclass(frozen=True, slots=True)
class _Survey:
    region: Region
    bucket: Bucket | None  # None for a destination the model may not be stored in: never opened
    destination: Destination
    listing: dict[str, ObjectInfo]
    current: _CurrentState


async def _survey(region: Region, model: Model) -> _Survey:
    if not model.may_store_in(region.jurisdiction) or region.bucket is None:
        destination = Destination(region.name, region.jurisdiction, region.bucket or "")
        return _Survey(region, None, destination, {}, _CurrentState(None, None))
    return await _look(region, model, open_bucket(region.bucket))


async def _look(region: Region, model: Model, bucket: Bucket) -> _Survey:
    """What an allowed destination's bucket holds of the model's version."""
    folder = version_prefix("", model.name, model.version) + "/"
    listing = {i.key[len(folder) :]: i for i in await bucket.list(folder)}
    try:
        marker = await _read_manifest(bucket, model.name, model.version)
    except ManifestError:
        marker = None  # unreadable: every file is judged without it, and it is rewritten on promotion
    current = await _current(bucket, model.name)
    held = {path: Held(i.size, fingerprint(bucket, i)) for path, i in listing.items()}
    destination = Destination(region.name, region.jurisdiction, bucket.url, held, marker, current.names)
    return _Survey(region, bucket, destination, listing, current)


def _unproven(held: ObjectInfo | None, entry: FileEntry) -> ObjectInfo | None:
    """A held object that may well be the entry's bytes, no content checksum saying otherwise (a file a
    killed run finished): reading it back is cheaper than sending it again."""
    if held is None or held.size != entry.size or any(k in CONTENT_CHECKSUMS for k, _ in held.checksums):
        return None
    return held


@dataclass(frozen=True, slots=True)
class _Run:
    """What every destination of one sync run shares."""

    source: Bucket
    manifest: Manifest
    model: Model
    limit: asyncio.Semaphore
    progress: SyncProgress
    keep: int
    me: Syncer
    lease: LeaseTerms


class _Counting:
    """A destination's progress, counted here as well: work cancelled when its lease is lost leaves no
    outcomes to sum, yet what it moved was moved."""

    def __init__(self, inner: SyncProgress) -> None:
        self.inner = inner
        self.total = 0
        self._bar: TransferProgress = QUIET

    def destination(self, model: str, region: str, files: int, total: int) -> TransferProgress:
        self._bar = self.inner.destination(model, region, files, total)
        return self

    def moved(self, nbytes: int) -> None:
        self.total += nbytes
        self._bar.moved(nbytes)

    def finished(self, size: int, moved: int, *, ok: bool) -> None:
        self._bar.finished(size, moved, ok=ok)


async def _history(bucket: Bucket, model: str) -> tuple[str, ...] | None:
    """The promotion history the bucket records; None when it cannot be read or parsed."""
    try:
        data = await bucket.read_small(history_key(model), MAX_HISTORY_BYTES)
        return parse_history(data) if data is not None else ()
    except (BucketError, ManifestError):
        return None


def _retention_due(history: tuple[str, ...], version: str, keep: int) -> bool:
    """Whether retention in a bucket whose CURRENT names `version` would write: record the promotion or
    delete old versions (retention.py decides the same way)."""
    recorded = after_promotion(history, version)
    return recorded != history or bool(garbage(recorded, current=version, target=version, keep=keep))


async def _apply(run: _Run, survey: _Survey, plan: DestinationPlan) -> DestinationResult:
    """Bring one destination to the plan, writing only under its lease: a destination already current
    with no retention to do is left alone, one whose lease another live syncer holds is busy."""
    bucket = survey.bucket
    if bucket is None:
        return DestinationResult(plan)
    model, version = run.model.name, run.model.version
    if plan.current:
        history = await _history(bucket, model)
        if history is not None and not _retention_due(history, version, run.keep):
            return DestinationResult(plan, retention=Retention(history))
    try:
        held = await acquire(bucket, model, version, run.me, run.lease)
    except (LeaseBusy, BucketError) as exc:
        why = str(exc) if isinstance(exc, LeaseBusy) else f"lease not taken: {exc}"
        if plan.current:
            # It serves the right version already: only the clean-up waits for a later sync.
            return DestinationResult(
                plan, retention=Retention(failures=(f"old versions not collected: {why}",))
            )
        return DestinationResult(plan, (why,))
    counting = _Counting(run.progress)
    try:
        return await run_leased(held, lambda: _leased(run, survey, plan, held, counting))
    except LeaseLost as exc:
        return DestinationResult(plan, (str(exc),), bytes_copied=counting.total)
    finally:
        await held.release()


async def _leased(
    run: _Run, first: _Survey, planned: DestinationPlan, held: HeldLease, progress: _Counting
) -> DestinationResult:
    """`_apply` under the lease. The first survey was made without it: another syncer may have copied or
    promoted since, so the destination is looked at again and planned anew before anything is written."""
    bucket = held.bucket
    model, version = run.model.name, run.model.version
    try:
        survey = await _look(first.region, run.model, bucket)
    except BucketError as exc:
        return DestinationResult(planned, (str(exc),))
    (plan,) = plan_model(run.manifest, [survey.destination], run.model.jurisdictions).destinations
    if plan.current:
        return DestinationResult(plan, retention=await retain(bucket, model, version, run.keep, run.limit))
    keys = {e.path: file_key("", model, version, e.path) for e in plan.transfer}
    transfers = [
        Transfer(e, keys[e.path], keys[e.path], _unproven(survey.listing.get(e.path), e))
        for e in plan.transfer
    ]
    bar = progress.destination(model, plan.region, len(transfers), plan.transfer_bytes)
    outcomes = await copy_files(run.source, bucket, transfers, run.limit, bar)
    copied = sum(o.moved for o in outcomes)
    failures = tuple(o.error for o in outcomes if o.error is not None)
    if failures:
        failed = tuple(o.transfer.entry.path for o in outcomes if o.error is not None)
        return DestinationResult(plan, failures, bytes_copied=copied, failed_files=failed)
    landed = {o.transfer.entry.path: o.landed for o in outcomes if o.landed is not None}
    files = tuple(
        e.model_copy(update={"checksums": fingerprint(bucket, landed.get(e.path) or survey.listing[e.path])})
        for e in run.manifest.files
    )
    marker = Manifest(model=model, version=version, files=files)
    try:
        # Proof the lease is still this syncer's right before the marker and CURRENT, beyond the last
        # renewal: a syncer that took it over meanwhile may be rewriting these very files (LeaseLost).
        await held.renew()
        await bucket.write(manifest_key("", model, version), whole(marker.encode()))
        current = survey.current
        if current.names != version:
            await bucket.write(
                current_key("", model),
                whole(version.encode()),
                if_absent=current.info is None,
                if_match=None if current.info is None else current.info.version,
            )
    except PreconditionFailed as exc:
        # Lost to another syncer: fine if it promoted this same version (this run's marker verifies it).
        try:
            names = await current_version(bucket, model)
        except BucketError:
            names = None
        if names != version:
            return DestinationResult(
                plan, (f"CURRENT changed while syncing, not promoted: {exc}",), bytes_copied=copied
            )
    except BucketError as exc:
        return DestinationResult(plan, (str(exc),), bytes_copied=copied)
    retention = await retain(bucket, model, version, run.keep, run.limit)
    return DestinationResult(plan, promoted=True, bytes_copied=copied, retention=retention)


async def sync_model(
    policy: Policy,
    model: Model,
    *,
    dry_run: bool = False,
    only_regions: Collection[str] | None = None,
    progress: SyncProgress = QUIET,
    lease: LeaseTerms = LEASE_TERMS,
) -> SyncReport:
    """Plan, and unless `dry_run` copy, verify and promote, `model.version` in every region serving it;
    `progress` hears of every destination's transfers as they go. Each destination is written only under
    its lease (lease.py), on `lease`'s terms."""
    limit = asyncio.Semaphore(policy.sync.concurrency)
    regions = [r for r in policy.model_regions(model) if only_regions is None or r.name in only_regions]
    try:
        source = open_bucket(model.source)
        manifest, computed = await source_manifest(source, model.name, model.version, limit, dry_run=dry_run)
    except (BucketError, ManifestError) as exc:
        return SyncReport(model.name, model.version, dry_run, error=str(exc))
    surveys: list[_Survey] = []
    unreadable: list[DestinationResult] = []
    for region in regions:
        try:
            surveys.append(await _survey(region, model))
        except (BucketError, ManifestError) as exc:
            # One unreachable region must not keep the others from their weights.
            empty = DestinationPlan(region.name, region.jurisdiction, region.bucket or "")
            unreadable.append(DestinationResult(empty, (str(exc),), surveyed=False))
    plan = plan_model(manifest, [s.destination for s in surveys], model.jurisdictions)
    by_region = {s.region.name: s for s in surveys}
    if dry_run:
        results = [DestinationResult(p) for p in plan.destinations]
    else:
        me = await asyncio.to_thread(Syncer.here)
        run = _Run(source, manifest, model, limit, progress, policy.sync.keep_versions, me, lease)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_apply(run, by_region[p.region], p)) for p in plan.destinations]
        results = [t.result() for t in tasks]
    ordered = tuple(sorted([*results, *unreadable], key=lambda r: r.plan.region))
    return SyncReport(model.name, model.version, dry_run, ordered, computed)


async def attempt_sync(
    policy: Policy, model: Model, *, dry_run: bool, only_regions: Collection[str] | None = None
) -> SyncReport:
    """`sync_model` for a caller that must go on whatever happens (the daemon, a one-shot plan): every
    failure becomes the report's error, and a survey (dry run) is bounded by SURVEY_TIMEOUT."""
    try:
        # A real sync moves gigabytes: its bucket calls have their own timeouts, the whole has none.
        async with asyncio.timeout(SURVEY_TIMEOUT if dry_run else None):
            return await sync_model(policy, model, dry_run=dry_run, only_regions=only_regions)
    except TimeoutError:
        error = f"survey took longer than {SURVEY_TIMEOUT:g}s"
    except Exception as exc:
        # One model's sync failing must not stop the others' (nor the next attempt): it is a report.
        log.exception("syncing model %s failed", model.name)
        error = f"{type(exc).__name__}: {exc}"[:500]
    return SyncReport(model.name, model.version, dry_run, error=error)
