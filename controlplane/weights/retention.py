"""What a region's bucket remembers of its promotions, and the deletion of versions no longer needed.

`<model>/HISTORY` lists, oldest first, one per line, the versions CURRENT has named in that bucket and
whose folders have not been deleted since, each once, at the place it last became current (a rollback moves
the older version to the end). It is appended after CURRENT moves, under a precondition like CURRENT
itself, and only while CURRENT still names the version, so two syncers record promotions in the order
CURRENT took them. A deleted version leaves it: should its folder be copied again, it is a version never
current there until it is promoted again.

A version folder is garbage when it was current once, more than `keep` other versions have been current
after it, and it is neither what CURRENT names nor the policy's version. A folder never current in this
bucket is never touched: it may be a newer version another syncer is copying right now. Nothing is
collected unless CURRENT names the newest version of the history: otherwise a promotion is being recorded
by someone else, and the count of newer versions could be wrong.

Deleting removes the marker (manifest.json) first, so a half-deleted version never looks verified, then
the files. What cannot be deleted is reported, never raised: the weights the region serves are unaffected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from controlplane.weights.buckets import Bucket, BucketError, PreconditionFailed, whole
from controlplane.weights.manifest import (
    MAX_CURRENT_BYTES,
    ManifestError,
    current_key,
    manifest_key,
    parse_current,
    version_prefix,
)

HISTORY_NAME = "HISTORY"
# Well above the most versions a policy may keep (policy.MAX_KEEP_VERSIONS): a version falls off the end
# only long after it became collectable, so a folder is forgotten only if its deletion failed for that many
# promotions.
MAX_HISTORY = 64
MAX_HISTORY_BYTES = MAX_HISTORY * (MAX_CURRENT_BYTES + 1)
HISTORY_ATTEMPTS = 5  # each lost race means another promotion landed meanwhile: a few is plenty


def history_key(model: str) -> str:
    return version_prefix("", model, HISTORY_NAME)


def parse_history(data: bytes) -> tuple[str, ...]:
    """The versions a HISTORY object lists, oldest first; ManifestError for anything else."""
    if len(data) > MAX_HISTORY_BYTES:
        raise ManifestError(f"HISTORY: {len(data)} bytes, more than the {MAX_HISTORY_BYTES} allowed")
    return tuple(parse_current(line) for line in data.splitlines() if line)


def encode_history(history: Sequence[str]) -> bytes:
    return "".join(f"{version}\n" for version in history).encode()


def after_promotion(history: Sequence[str], version: str) -> tuple[str, ...]:
    """The history once `version` became current: it is the newest entry, each version appears once, and
    only the newest MAX_HISTORY are remembered."""
    if history and history[-1] == version:
        return tuple(history)
    return (*(v for v in history if v != version), version)[-MAX_HISTORY:]


def garbage(history: Sequence[str], *, current: str | None, target: str, keep: int) -> tuple[str, ...]:
    """The versions to delete, oldest first: those of the history with more than `keep` others current
    after them, other than `current` and `target`. Nothing while CURRENT is unknown or is not the newest
    entry (a promotion not yet recorded)."""
    if current is None or not history or history[-1] != current:
        return ()
    newest_first = list(dict.fromkeys(reversed(history)))
    expired = reversed(newest_first[keep + 1 :])
    return tuple(v for v in expired if v not in (current, target))


@dataclass(frozen=True, slots=True)
class Retention:
    """What `retain` did in one bucket: the history as it left it, the version folders it deleted, and what
    it could not do (a failed delete, a history it could not record)."""

    history: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()


async def current_version(bucket: Bucket, model: str) -> str | None:
    """The version CURRENT names; None when it is absent or names nothing valid."""
    data = await bucket.read_small(current_key("", model), MAX_CURRENT_BYTES)
    try:
        return parse_current(data) if data is not None else None
    except ManifestError:
        return None


async def _update_history(
    bucket: Bucket, model: str, change: Callable[[tuple[str, ...]], Awaitable[tuple[str, ...]]]
) -> tuple[str, ...]:
    """Rewrite the history as `change` makes it, under a precondition, re-reading after a lost race; the
    history as left. A HISTORY that does not parse counts as empty: the versions it named are then never
    collected, which keeps them rather than losing them."""
    key = history_key(model)
    for _ in range(HISTORY_ATTEMPTS):
        # The object's version before its content: a write landing in between then fails the precondition
        # instead of being overwritten with what was read before it.
        info = next((i for i in await bucket.list(key) if i.key == key), None)
        data = await bucket.read_small(key, MAX_HISTORY_BYTES) if info is not None else None
        try:
            history = parse_history(data) if data is not None else ()
        except ManifestError:
            history = ()
        updated = await change(history)
        if updated == history:
            return history
        try:
            await bucket.write(
                key,
                whole(encode_history(updated)),
                if_absent=info is None,
                if_match=None if info is None else info.version,
            )
        except PreconditionFailed:
            continue
        return updated
    raise PreconditionFailed(f"{bucket.url}: {key} changed {HISTORY_ATTEMPTS} times while being rewritten")


async def record_promotion(bucket: Bucket, model: str, version: str) -> tuple[str, ...]:
    """Make `version` the newest entry of the bucket's history of `model` if CURRENT names it; the history."""

    async def promoted(history: tuple[str, ...]) -> tuple[str, ...]:
        # CURRENT is read after the history: a newer promotion already recorded there is seen here as well,
        # so this one is never recorded after it.
        return (
            after_promotion(history, version) if await current_version(bucket, model) == version else history
        )

    return await _update_history(bucket, model, promoted)


async def collect(
    bucket: Bucket,
    model: str,
    history: Sequence[str],
    *,
    target: str,
    keep: int,
    limit: asyncio.Semaphore,
) -> Retention:
    """Delete the garbage version folders of `model` (see `garbage`), then drop them from the history, so
    that in the steady state there is nothing to list."""
    history = tuple(history)
    try:
        current = await current_version(bucket, model)
        candidates = garbage(history, current=current, target=target, keep=keep)
        if not candidates:
            return Retention(history)
        listing = await bucket.list(f"{model}/")
    except BucketError as exc:
        return Retention(history, failures=(f"old versions not collected: {exc}",))
    folders: dict[str, list[str]] = {}
    for info in listing:
        parts = info.key.split("/")
        if len(parts) > 2:
            folders.setdefault(parts[1], []).append(info.key)
    deleted: list[str] = []
    failures: list[str] = []
    gone = {v for v in candidates if v not in folders}  # deleted by hand, or by another syncer
    for version in (v for v in candidates if v in folders):
        marker = manifest_key("", model, version)
        try:
            # Someone may have rolled back to it since CURRENT was read above.
            if await current_version(bucket, model) == version:
                continue
            await bucket.delete(marker)
        except BucketError as exc:
            failures.append(f"version {version} not deleted: {exc}")
            continue
        errors = await _delete_each(bucket, [k for k in folders[version] if k != marker], limit)
        failures += (f"version {version}: {e}" for e in errors)
        if not errors:
            deleted.append(version)
            gone.add(version)
    if gone:

        async def forget(recorded: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(v for v in recorded if v not in gone)

        try:
            history = await _update_history(bucket, model, forget)
        except BucketError as exc:
            failures.append(f"deleted versions not dropped from the history (collected again later): {exc}")
    return Retention(history, tuple(deleted), tuple(failures))


async def _delete_each(bucket: Bucket, keys: Sequence[str], limit: asyncio.Semaphore) -> list[str]:
    """Delete every key, `limit` at a time; why each failed one was not deleted."""

    async def delete(key: str) -> str | None:
        async with limit:
            try:
                await bucket.delete(key)
            except BucketError as exc:
                return str(exc)
            return None

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(delete(k)) for k in keys]
    return [e for t in tasks if (e := t.result()) is not None]


async def retain(bucket: Bucket, model: str, version: str, keep: int, limit: asyncio.Semaphore) -> Retention:
    """After `version` of `model` is current in `bucket` (promoted by this run or found so): record it in the
    history and delete the versions no longer kept. Never raises a BucketError: it reports."""
    try:
        history = await record_promotion(bucket, model, version)
    except BucketError as exc:
        return Retention(failures=(f"promotion history not recorded, old versions kept: {exc}",))
    return await collect(bucket, model, history, target=version, keep=keep, limit=limit)
