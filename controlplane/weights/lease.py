"""One syncer per destination at a time: a lease object beside the version folders, `<model>/LEASE`.

Two syncers writing one version into one bucket at once do no harm to what is served (CURRENT moves only
by a conditional write, never to a partial version) but they waste: each can be refused a file the other
is writing, abort the other's multipart uploads, or rewrite files whose fingerprints the other's marker
recorded. So a syncer writes into a destination only while it holds that destination's lease.

The lease is a small JSON object (who holds it, for which version, until when, wall time) moved only by
conditional writes, the same on S3, GCS and a folder: created if absent, taken over (expired), renewed and
released under a match on the version read or last written. Hosts' clocks differ, so a lease is taken over
only once it expired more than a margin ago; a lease whose holder is a dead process of this very machine
(a sync killed and run again) is taken over at once. Release writes an expired lease, so no delete is
needed. A renewal that finds the lease moved means another syncer took it (this one was presumed dead):
the work under it stops at once, and never promotes.

The decisions are pure functions; `acquire`, `HeldLease` and `run_leased` do the thin I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from controlplane.errors import ControlPlaneError
from controlplane.weights.buckets import Bucket, BucketError, PreconditionFailed, whole
from controlplane.weights.manifest import version_prefix

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_NAME = "LEASE"  # policy.RESERVED_VERSIONS keeps a version from being named so
MAX_LEASE_BYTES = 4096
ATTEMPTS = 3  # each lost race for the lease means someone else just took it: a few looks are plenty

Clock = Callable[[], float]  # wall time, seconds since the epoch


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    ttl: float = 120.0  # how long a lease lasts unless renewed
    margin: float = 30.0  # the clock skew allowed between syncers' hosts

    @property
    def renew_every(self) -> float:
        # Three renewals may fail (a slow or flaky bucket) before the lease runs out.
        return self.ttl / 4


LEASE_TERMS = LeaseTerms()


@dataclass(frozen=True, slots=True)
class Syncer:
    """Who takes a lease: one sync run (`owner`), on a host, in a process. `space` names the machine's boot
    and process namespace: a pid means something only to a syncer in the same one."""

    owner: str
    host: str
    pid: int
    space: str | None

    @classmethod
    def here(cls) -> Syncer:
        """This run, in this process (reads /proc: call it off the event loop)."""
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            space: str | None = f"{boot} {os.readlink('/proc/self/ns/pid')}"
        except OSError:
            space = None
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), space)


class Lease(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    owner: str
    host: str
    pid: int
    space: str | None = None
    version: str  # the model version the holder is syncing
    expires_at: float  # wall time

    def encode(self) -> bytes:
        return (self.model_dump_json() + "\n").encode()


def parse_lease(data: bytes) -> Lease | None:
    """The lease an object holds; None for one that is not a lease (hand-written, another format): such an
    object protects nothing and is taken over like an expired lease."""
    try:
        return Lease.model_validate_json(data)
    except ValidationError:
        return None


def granted(me: Syncer, version: str, now: float, terms: LeaseTerms) -> Lease:
    """The lease `me` writes to hold (or keep holding) a destination for syncing `version`."""
    return Lease(
        owner=me.owner, host=me.host, pid=me.pid, space=me.space, version=version, expires_at=now + terms.ttl
    )


def released(lease: Lease) -> Lease:
    """The lease as its holder leaves it: expired long ago for any clock, still saying who held it last."""
    return lease.model_copy(update={"expires_at": 0.0})


def takeable(
    found: Lease | None, me: Syncer, now: float, margin: float, alive: Callable[[int], bool]
) -> bool:
    """Whether `me` may take over the lease `found` (None: absent or not a lease): it expired more than
    `margin` ago, or its holder is a process of this machine that is gone."""
    if found is None or now > found.expires_at + margin:
        return True
    return (
        found.space is not None and found.space == me.space and found.pid != me.pid and not alive(found.pid)
    )


def busy_message(lease: Lease) -> str:
    until = datetime.fromtimestamp(lease.expires_at, UTC).isoformat(timespec="seconds")
    return f"busy: another syncer ({lease.host}, pid {lease.pid}, version {lease.version}) holds the lease until {until}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def lease_key(model: str) -> str:
    return version_prefix("", model, LEASE_NAME)


class LeaseBusy(ControlPlaneError):
    """Another live syncer holds the lease; the message says who and until when."""


class LeaseLost(ControlPlaneError):
    """The lease is no longer this syncer's: taken over, or not renewed before it ran out."""


class HeldLease:
    """A lease this syncer holds: renewed (and released) only under a match on what it last wrote."""

    def __init__(
        self, bucket: Bucket, key: str, lease: Lease, tag: str, me: Syncer, terms: LeaseTerms, clock: Clock
    ) -> None:
        self.bucket = bucket
        self._key = key
        self.lease = lease
        self._tag = tag  # the object version this syncer last wrote
        self._me = me
        self._terms = terms
        self._clock = clock
        self._writing = asyncio.Lock()  # renewals from the keeper and the caller must not race each other

    async def renew(self) -> None:
        """Extend the lease; LeaseLost when someone else holds it now."""
        async with self._writing:
            lease = granted(self._me, self.lease.version, self._clock(), self._terms)
            try:
                info = await self.bucket.write(self._key, whole(lease.encode()), if_match=self._tag)
            except PreconditionFailed as exc:
                raise LeaseLost(await self._taken()) from exc
            self.lease, self._tag = lease, info.version

    async def _taken(self) -> str:
        message = "lease lost: another syncer took it over (this one was presumed dead)"
        with contextlib.suppress(BucketError):
            data = await self.bucket.read_small(self._key, MAX_LEASE_BYTES)
            theirs = parse_lease(data) if data is not None else None
            if theirs is not None:
                message = (
                    f"lease lost: {theirs.host}, pid {theirs.pid}, version {theirs.version} took it over"
                )
        return f"{message}; stopped, not promoted"

    async def keep(self) -> None:
        """Renew every `renew_every` until cancelled; raises LeaseLost when the lease is lost, or could not
        be renewed before it ran out (others may take it from then on)."""
        while True:
            await asyncio.sleep(self._terms.renew_every)
            try:
                await self.renew()
            except BucketError as exc:  # not LeaseLost: a write that failed says nothing of who holds it
                if self._clock() >= self.lease.expires_at:
                    raise LeaseLost(
                        f"lease not renewed before it ran out: {exc}; stopped, not promoted"
                    ) from exc
                log.warning("%s: lease not renewed, trying again: %s", self.bucket.url, exc)

    async def release(self) -> None:
        """Leave the lease expired, unless someone else holds it by now. Never raises a BucketError: an
        unreleased lease merely runs out."""
        async with self._writing:
            try:
                await self.bucket.write(self._key, whole(released(self.lease).encode()), if_match=self._tag)
            except PreconditionFailed:
                pass  # taken over: theirs now
            except BucketError as exc:
                log.warning("%s: lease not released (it runs out by itself): %s", self.bucket.url, exc)


async def acquire(
    bucket: Bucket,
    model: str,
    version: str,
    me: Syncer,
    terms: LeaseTerms,
    clock: Clock = time.time,
    alive: Callable[[int], bool] = process_alive,
) -> HeldLease:
    """Take `model`'s lease in `bucket` for syncing `version`; LeaseBusy while another live syncer holds it."""
    key = lease_key(model)
    for _ in range(ATTEMPTS):
        # The object's version before its content: a write landing in between fails the precondition below
        # rather than being overwritten on the strength of what was read before it.
        info = next((i for i in await bucket.list(key) if i.key == key), None)
        data = await bucket.read_small(key, MAX_LEASE_BYTES) if info is not None else None
        found = parse_lease(data) if data is not None else None
        now = clock()
        if found is not None and not takeable(found, me, now, terms.margin, alive):
            raise LeaseBusy(busy_message(found))
        lease = granted(me, version, now, terms)
        try:
            landed = await bucket.write(
                key,
                whole(lease.encode()),
                if_absent=info is None,
                if_match=None if info is None else info.version,
            )
        except PreconditionFailed:
            continue
        return HeldLease(bucket, key, lease, landed.version, me, terms, clock)
    raise LeaseBusy(f"busy: the lease changed hands {ATTEMPTS} times while this syncer tried to take it")


async def run_leased(held: HeldLease, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`work`'s result, the lease renewed meanwhile; LeaseLost (the work cancelled) when the lease is lost."""
    keeper = asyncio.create_task(held.keep())
    job = asyncio.create_task(work())
    try:
        await asyncio.wait((keeper, job), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Whichever ended first (or this call's own cancellation) ends the other.
        for task in (keeper, job):
            task.cancel()
        await asyncio.wait((keeper, job))
    if not job.cancelled():
        return job.result()
    error = keeper.exception()
    assert error is not None  # the keeper never returns: it ended the job by raising
    raise error
