"""Leader election on an etcd lease, and writes fenced by the leader's epoch.

`<prefix>/leader` holds the leader's replica name, on the leader's lease. A candidate grants itself a fresh
lease and creates the key in one txn (CREATE == 0, i.e. absent); losing, it revokes that lease and waits by
watch for the key's deletion (the leader resigned, or its lease ran out), then tries again. A leadership's
**epoch** is the leader key's create_revision: etcd's revision only grows, so each new leader's epoch is
greater than every earlier one's, and no two leaderships share one.

The leader renews its lease every ttl/3 and holds a local deadline: the time the last acknowledged
keepalive (or the grant) was SENT + ttl - ttl/6. etcd restarts the lease's TTL when it receives the
request, after it was sent, so the lease outlives the deadline by at least the margin, which absorbs
clock-rate differences. Past the deadline the leader is deposed for good without asking etcd: a leader
SIGSTOPped past its lease finds its deadline passed on waking, before it writes anything. A keepalive etcd
does not answer (EtcdUnavailable) ends nothing by itself; it is retried, through the client's next member,
until the deadline. A deposed leader revokes its lease (best effort) so the next one need not wait it out.

Every write a leader makes to etcd goes through `fenced`: one txn comparing CREATE(<prefix>/leader) ==
epoch, so a leader deposed without knowing it yet has its write refused by etcd itself.

A keepalive has ttl/2 to land (deadline - next send) and a stalled member costs it one client timeout:
for the leader to survive a member's loss, give its client a timeout of about ttl/6 (0.5 s at ttl 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controlplane.coord.etcd import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdRequestError,
    EtcdUnavailable,
    Get,
    KeyValue,
    Put,
    TxnResult,
)
from controlplane.errors import Unavailable

log = logging.getLogger(__name__)

Clock = Callable[[], float]  # monotonic seconds

# After an etcd call that failed, the pause before the next, as a fraction of the TTL: enough not to spin
# on refused connections, short enough for a keepalive retried through another member to land in time.
RETRY_FRACTION = 1 / 30


def leader_key(prefix: str) -> bytes:
    return f"{prefix.rstrip('/')}/leader".encode()


def keepalive_every(ttl: float) -> float:
    return ttl / 3


def safety_margin(ttl: float) -> float:
    return ttl / 6


def deadline_after(sent_at: float, ttl: float) -> float:
    """The local deadline a lease grant or keepalive sent at `sent_at` (and acknowledged) gives."""
    return sent_at + ttl - safety_margin(ttl)


def retry_pause(ttl: float) -> float:
    return ttl * RETRY_FRACTION


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    name: str
    epoch: int


def leader_of(kv: KeyValue) -> LeaderInfo:
    """The leadership a leader key stands for: its epoch is when the key was created, not last written."""
    return LeaderInfo(name=kv.value.decode("utf-8", "replace"), epoch=kv.create_revision)


class Deposed(Unavailable):
    """This replica is not the leader (any more): the write was not made."""


class Leadership:
    """This replica's leadership, from a won campaign until `lost` is set (for good)."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        name: str,
        epoch: int,
        lease: int,
        ttl: int,
        granted_at: float,
        now: Clock = time.monotonic,
    ) -> None:
        self.client = client
        self.key = leader_key(prefix)
        self.name = name
        self.epoch = epoch
        self.lease = lease
        self.ttl = ttl
        self.lost = asyncio.Event()
        self.reason: str | None = None  # why it was lost
        self._now = now
        self._deadline = deadline_after(granted_at, ttl)
        self._keeper: asyncio.Task[None] | None = None

    @property
    def deadline(self) -> float:
        return self._deadline

    def is_valid(self, now: float | None = None) -> bool:
        return not self.lost.is_set() and (self._now() if now is None else now) < self._deadline

    def acknowledged(self, sent_at: float) -> None:
        """etcd acknowledged a keepalive sent at `sent_at` (a lost leadership stays lost all the same)."""
        self._deadline = max(self._deadline, deadline_after(sent_at, self.ttl))

    def depose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
            log.warning("%s: leadership of epoch %d lost: %s", self.name, self.epoch, reason)

    def start(self) -> None:
        """Start renewing the lease (campaign does it for the Leadership it returns)."""
        self._keeper = asyncio.create_task(self._keep(), name=f"leader keepalive {self.name}")

    async def resign(self) -> None:
        """Stop leading and revoke the lease, so another candidate wins at once. Never raises an EtcdError: an
        unrevoked lease runs out within the TTL by itself."""
        self.depose("resigned")
        if self._keeper is not None:
            await asyncio.wait([self._keeper])  # it revokes once it sees `lost` (a cancelled one cannot)
        else:
            await _revoke_quietly(self.client, self.lease)

    async def _keep(self) -> None:
        try:
            await self._renew_until_lost()
        finally:
            self.depose("lease keepalive stopped")  # a crash or a cancel ends the leadership too
        await _revoke_quietly(self.client, self.lease)

    async def _renew_until_lost(self) -> None:
        due = self._now() + keepalive_every(self.ttl)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(due, self._deadline) - self._now())):
                    await self.lost.wait()
            sent = self._now()
            if self.lost.is_set():
                return
            if sent >= self._deadline:
                self.depose("lease not renewed before the local deadline")
                return
            try:
                # An answer after the deadline would come too late to matter: give up on it at the deadline.
                async with asyncio.timeout(self._deadline - sent):
                    remaining = await self.client.keepalive(self.lease)
            except TimeoutError:
                continue
            except EtcdUnavailable as exc:
                log.warning("%s: lease keepalive failed, retrying: %s", self.name, exc)
                due = sent + retry_pause(self.ttl)
                continue
            except EtcdRequestError as exc:
                self.depose(f"etcd refused the lease keepalive: {exc}")
                return
            if remaining <= 0:
                self.depose("etcd says the lease expired")
                return
            self.acknowledged(sent)
            due = sent + keepalive_every(self.ttl)


async def _revoke_quietly(client: EtcdClient, lease: int) -> None:
    try:
        await client.revoke(lease)
    except EtcdError as exc:
        log.info("lease %x not revoked (it runs out by itself): %s", lease, exc)


async def fenced(leadership: Leadership, ops: Sequence[Put | Delete | Get]) -> TxnResult:
    """Run `ops` in one txn only while `leadership` holds; Deposed (and nothing written) otherwise.

    EtcdUnavailable passes through: the write may or may not have been made, as with any etcd call."""
    if not leadership.is_valid():
        raise _deposed(leadership, "local deadline passed")
    result = await leadership.client.txn([Compare(leadership.key, "CREATE", "EQUAL", leadership.epoch)], ops)
    if not result.succeeded:
        raise _deposed(leadership, "etcd refused a fenced write: the leader key is not this leadership's")
    return result


def _deposed(leadership: Leadership, reason: str) -> Deposed:
    leadership.depose(reason)  # the first reason stays: a resigned leadership is not "past its deadline"
    return Deposed(
        f"{leadership.name} is not the leader (epoch {leadership.epoch} lost: {leadership.reason})"
    )


async def observe(client: EtcdClient, prefix: str) -> LeaderInfo | None:
    """The current leader, as etcd has it; None while there is none."""
    kv = await client.get(leader_key(prefix))
    return None if kv is None else leader_of(kv)


async def campaign(
    client: EtcdClient, prefix: str, name: str, ttl: int, *, now: Clock = time.monotonic
) -> Leadership:
    """Wait until this replica leads, however long that takes; etcd being unreachable meanwhile only delays."""
    while True:
        try:
            outcome = await _try_once(client, prefix, name, ttl, now)
            if isinstance(outcome, Leadership):
                outcome.start()
                log.info("%s leads, epoch %d", name, outcome.epoch)
                return outcome
            await _vacancy(client, leader_key(prefix), outcome)
        except EtcdUnavailable as exc:
            log.warning("%s: campaign: etcd unavailable, retrying: %s", name, exc)
            await asyncio.sleep(retry_pause(ttl))


async def _try_once(client: EtcdClient, prefix: str, name: str, ttl: int, now: Clock) -> Leadership | int:
    """A Leadership, or the revision at which another leader's key was found."""
    key = leader_key(prefix)
    sent = now()
    lease = await client.grant(ttl)
    won = False
    try:
        result = await client.txn(
            [Compare(key, "CREATE", "EQUAL", 0)], [Put(key, name.encode(), lease), Get(key)], [Get(key)]
        )
        won = result.succeeded
    finally:
        if not won:  # a txn whose outcome is unknown too: revoking undoes a put that landed
            await _revoke_quietly(client, lease)
    if won:
        (created,) = result.responses[1]
        return Leadership(client, prefix, name, created.create_revision, lease, ttl, sent, now)
    (holder,) = result.responses[0]
    log.info("%s: waiting, %s leads", name, leader_of(holder))
    return result.revision


async def _vacancy(client: EtcdClient, key: bytes, revision: int) -> None:
    """Return once the leader key is deleted after `revision` (its leader resigned or its lease ran out)."""
    try:
        async with contextlib.aclosing(client.watch(key, revision + 1)) as events:
            async for kind, kv in events:
                if kind == "DELETE" and kv.key == key:
                    return
    except EtcdRequestError as exc:  # the revision compacted away: the campaign reads the key afresh
        log.info("leader watch cancelled: %s", exc)
