"""One replica's part in a coordinated plane: its lease and published vote, its campaign for leadership,
and what it sees of its peers (votes, leader, the leader's plan, overrides) through one etcd watch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controlplane.coord.election import (
    Clock,
    Deposed,
    LeaderInfo,
    Leadership,
    campaign,
    fenced,
    keepalive_every,
    leader_key,
    leader_of,
    retry_pause,
)
from controlplane.coord.etcd import Compare, EtcdClient, EtcdError, KeyValue, Put
from controlplane.coord.quorum import QuorumView, Vote, blind, remember, tally
from controlplane.overrides import Override
from controlplane.plan import RoutingPlan
from controlplane.policy import Coordination
from controlplane.providers.base import Fenced
from controlplane.state import parse_state
from probes.health import State

log = logging.getLogger(__name__)

VOTE_EVERY = 1.0  # seconds between two publications of a replica's vote (each one refreshes it)
AUDIT_KEEP = 100  # the latest audit entries kept in etcd
AUDIT_ENTRY_BYTES = 4096  # a bigger entry is kept as its time and event only (the full one is in the file)
OVERRIDE_ATTEMPTS = 5  # compare-and-swap rounds before an override change gives up


class Role(StrEnum):
    STARTING = "starting"  # no verdict of its own counted yet
    LEADER = "leader"
    FOLLOWER = "follower"
    FROZEN = "frozen"


@dataclass(frozen=True, slots=True)
class SharedPlan:
    """The plan the leader of `epoch` decided, as every replica serves it."""

    epoch: int
    leader: str
    plan: RoutingPlan


class Keys:
    """Where each thing lives under the policy's prefix."""

    def __init__(self, prefix: str) -> None:
        self.root = f"{prefix}/".encode()
        self.leader = leader_key(prefix)
        self.votes = f"{prefix}/votes/".encode()
        self.plan = f"{prefix}/plan".encode()
        self.overrides = f"{prefix}/overrides".encode()
        self.audit = f"{prefix}/audit".encode()

    def vote(self, replica: str) -> bytes:
        return self.votes + replica.encode()


def encode_vote(replica: str, states: Mapping[str, State], at: float) -> bytes:
    return json.dumps(
        {"replica": replica, "at": round(at, 3), "states": {r: s.value for r, s in sorted(states.items())}}
    ).encode()


def decode_vote(replica: str, value: bytes, arrived: float) -> Vote | None:
    """A peer's vote stamped with this replica's clock when it arrived (peers' clocks are never trusted);
    None for one that does not parse (then the peer counts as not live)."""
    try:
        data = json.loads(value)
        states = {str(r): State(s) for r, s in data["states"].items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("vote of %s does not parse; not counted", replica)
        return None
    return Vote(replica, arrived, states)


def decode_plan(value: bytes) -> SharedPlan | None:
    """The leader's plan, validated as the state file is; None when it does not parse."""
    try:
        data = json.loads(value)
        epoch, leader = int(data["epoch"]), str(data["leader"])
    except (ValueError, TypeError, KeyError):
        log.warning("the shared plan does not parse; ignored")
        return None
    state = parse_state({"plan": data.get("plan")})
    for problem in state.problems:
        log.warning("shared plan of %s (epoch %d): %s", leader, epoch, problem)
    return None if state.plan is None else SharedPlan(epoch, leader, state.plan)


def decode_overrides(value: bytes | None) -> tuple[Override, ...]:
    if not value:
        return ()
    try:
        raw = json.loads(value)
    except ValueError:
        log.warning("the shared overrides do not parse; none applied")
        return ()
    state = parse_state({"overrides": raw})
    for problem in state.problems:
        log.warning("shared overrides: %s", problem)
    return state.overrides


def encode_overrides(overrides: tuple[Override, ...]) -> bytes:
    return json.dumps([o.to_json() for o in overrides], sort_keys=True).encode()


def compact_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An audit entry small enough for etcd: its plain fields and its small nested ones (never a plan's every
    group: that is in the audit file), or only its time and event when still too big. Sizes are judged before
    anything is encoded, so a decision over thousands of services costs the loop nothing here."""
    kept = {
        k: v
        for k, v in entry.items()
        if v is None
        or isinstance(v, str | int | float | bool)
        or (isinstance(v, list | dict) and len(v) <= 16)
    }
    line = json.dumps(kept, sort_keys=True, default=str)
    if len(line) <= AUDIT_ENTRY_BYTES:
        return dict(json.loads(line))
    return {"ts": entry.get("ts"), "event": entry.get("event"), "cut": True}


class Coordinator:
    """This replica's view of the plane; the daemon asks it, each step, what it may do."""

    def __init__(
        self,
        settings: Coordination,
        replica: str,
        *,
        client: EtcdClient | None = None,
        now: Clock = time.monotonic,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.replica = replica
        self.keys = Keys(settings.prefix)
        ttl = settings.lease_ttl
        # A leader must hear back well within its lease: one member's silence costs a sixth of it.
        self.client = client or EtcdClient(settings.etcd, timeout=max(0.2, ttl / 6))
        self.stale_after = ttl + VOTE_EVERY
        self._now = now
        self._on_change = on_change  # wakes the daemon: a vote flipped, a leader came or went, a plan arrived
        self.leadership: Leadership | None = None
        self.leader: LeaderInfo | None = None
        self.shared_plan: SharedPlan | None = None
        self.overrides: tuple[Override, ...] = ()
        self.votes: dict[str, Vote] = {}
        self.expected: int | None = None
        self.quorum: QuorumView | None = None
        self.own_view: Mapping[str, State] = {}  # this replica's own verdicts, as last published
        self.etcd_error: str | None = None
        self.applied_at: float | None = None
        self.fenced_writes = 0
        self._ok_at = now()
        self._lease = 0
        self._may_campaign = asyncio.Event()
        self._watching = asyncio.Event()  # the first full read of the plane's keys is done
        self._resigning: asyncio.Task[None] | None = None
        self._audit: list[dict[str, Any]] = []
        self._audit_pending: list[dict[str, Any]] = []
        self._audit_loaded_for: int | None = None

    # ------------------------------------------------------------ what the daemon asks

    def judge(self) -> QuorumView:
        """Count the live votes, and decide whether this replica may lead: a frozen one does not campaign,
        and a frozen leader steps down so that a replica that can see leads instead."""
        now = self._now()
        quorum = tally(
            list(self.votes.values()),
            now,
            stale_after=self.stale_after,
            me=self.replica,
            expected=self.expected,
            own_view=self.own_view or None,
        )
        lost = self.etcd_lost(now)
        if lost is not None:
            quorum = QuorumView(
                quorum.live, quorum.needed, quorum.regions, "; ".join(filter(None, (lost, quorum.frozen)))
            )
        self.expected = remember(self.expected, quorum)
        self.quorum = quorum
        if quorum.frozen is None:
            self._may_campaign.set()
        else:
            self._may_campaign.clear()
            if self.leadership is not None and not self.leadership.lost.is_set():
                log.warning("%s is frozen while leading, stepping down: %s", self.replica, quorum.frozen)
                self._resigning = asyncio.get_running_loop().create_task(self.leadership.resign())
        return quorum

    def etcd_lost(self, now: float) -> str | None:
        silent = now - self._ok_at
        if silent <= self.settings.lease_ttl:
            return None
        return f"etcd unreachable for {silent:.1f}s: {self.etcd_error or 'no answer'}"

    def role(self) -> Role:
        quorum = self.quorum
        if quorum is None or (quorum.frozen is not None and self.replica not in self.votes):
            return Role.STARTING  # nothing of its own counted yet: not frozen, not yet looking
        if quorum.frozen is not None:
            return Role.FROZEN
        return Role.LEADER if self.leads() else Role.FOLLOWER

    def leads(self) -> bool:
        lead = self.leadership
        return lead is not None and lead.is_valid()

    def fence(self) -> int:
        """The epoch a provider writes under now; Fenced when this replica may not write (the providers'
        `fence`, asked immediately before each write)."""
        lead = self.leadership
        if lead is None or not lead.is_valid():
            raise Fenced(f"{self.replica} does not lead (any more): the write was not made")
        if self.quorum is not None and self.quorum.frozen is not None:
            raise Fenced(f"{self.replica} is frozen: {self.quorum.frozen}")
        return lead.epoch

    def vote_for(self, states: Mapping[str, State]) -> Mapping[str, State]:
        """What this replica tells its peers it sees: its own view, or no verdict at all while it sees no region
        up and most peers do. A replica cut off from the regions would otherwise vote every region down, and
        with one flaky peer make a majority: its own network would fail a region over."""
        now = self._now()
        others = [
            v for v in self.votes.values() if v.replica != self.replica and now - v.at <= self.stale_after
        ]
        if blind(states, others):
            return {region: State.UNKNOWN for region in states}
        return states

    async def publish(self, states: Mapping[str, State]) -> None:
        """Put this replica's vote (see vote_for), on its lease; a failure is remembered, never raised."""
        self.own_view = dict(states)
        if not self._lease:
            return
        vote = encode_vote(self.replica, self.vote_for(states), time.time())
        try:
            await self.client.put(self.keys.vote(self.replica), vote, self._lease)
        except EtcdError as exc:
            self._failed(exc)
        else:
            self._succeeded()

    async def share_plan(self, plan: RoutingPlan) -> bool:
        """Write the leader's plan (and the audit entries since the last write) fenced on the epoch; False,
        and leadership dropped, when etcd refuses because another replica leads now."""
        lead = self.leadership
        if lead is None:
            return False
        try:
            await self._load_audit(lead)
            shared = json.dumps(
                {"epoch": lead.epoch, "leader": self.replica, "plan": plan.to_json()}
            ).encode()
            audit = [*self._audit, *self._audit_pending][-AUDIT_KEEP:]
            await fenced(
                lead, [Put(self.keys.plan, shared), Put(self.keys.audit, json.dumps(audit).encode())]
            )
        except Deposed as exc:
            self.fenced_writes += 1
            lead.depose(str(exc))
            return False
        except EtcdError as exc:
            self._failed(exc)
            return False
        self._succeeded()
        self._audit, self._audit_pending = audit, []
        self.shared_plan = SharedPlan(lead.epoch, self.replica, plan)
        return True

    def note(self, entry: Mapping[str, Any]) -> None:
        """An audit entry of this replica, kept in etcd with the next plan it shares (as leader)."""
        if self.leadership is not None and not self.leadership.lost.is_set():
            self._audit_pending = [*self._audit_pending, compact_entry(entry)][-AUDIT_KEEP:]

    async def change_overrides(
        self, change: Callable[[tuple[Override, ...]], tuple[Override, ...]]
    ) -> tuple[Override, ...]:
        """Apply `change` to the plane's overrides, compare-and-swap, so that two replicas changing them at
        once both land. Raises EtcdError when etcd cannot be reached (the caller answers 503)."""
        for _ in range(OVERRIDE_ATTEMPTS):
            kv = await self.client.get(self.keys.overrides)
            current = await asyncio.to_thread(decode_overrides, kv.value if kv else None)
            wanted = change(current)
            unchanged = (
                Compare(self.keys.overrides, "MOD", "EQUAL", kv.mod_revision)
                if kv
                else Compare(self.keys.overrides, "VERSION", "EQUAL", 0)
            )
            result = await self.client.txn([unchanged], [Put(self.keys.overrides, encode_overrides(wanted))])
            if result.succeeded:
                self.overrides = wanted
                return wanted
        raise EtcdError(f"the overrides changed under every one of {OVERRIDE_ATTEMPTS} attempts; try again")

    def status(self) -> dict[str, Any]:
        quorum = self.quorum
        now = self._now()
        lead = self.leadership
        epoch = (
            lead.epoch if lead is not None and lead.is_valid() else self.leader.epoch if self.leader else None
        )
        return {
            "replica": self.replica,
            "role": self.role().value,
            "leader": self.replica if self.leads() else self.leader.name if self.leader else None,
            "epoch": epoch,
            "frozen": quorum.frozen if quorum else None,
            "etcd": self.etcd_error,
            "applied_at": self.applied_at,
            "fenced": self.fenced_writes,
            "quorum": None
            if quorum is None
            else {
                "live": list(quorum.live),
                "needed": quorum.needed,
                "expected": self.expected,
                "regions": {
                    name: {
                        "state": r.state.value,
                        "down": list(r.down),
                        "up": list(r.up),
                        "unknown": list(r.unknown),
                        "note": r.note,
                    }
                    for name, r in quorum.regions.items()
                },
            },
            "votes": {
                name: {
                    "age": round(now - v.at, 3),
                    "states": {r: s.value for r, s in sorted(v.states.items())},
                }
                for name, v in sorted(self.votes.items())
            },
        }

    # ------------------------------------------------------------ the tasks

    async def run(self) -> None:
        """Keep the lease, watch the plane and campaign, until cancelled; then hand leadership over at once."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._keep_lease(), name="coordination lease")
                tasks.create_task(self._watch(), name="coordination watch")
                tasks.create_task(self._campaign(), name="coordination campaign")
        finally:
            await self.close()

    async def close(self) -> None:
        lead, self.leadership = self.leadership, None
        with contextlib.suppress(Exception):
            if lead is not None:
                await lead.resign()
            if self._lease:
                async with asyncio.timeout(1.0):
                    await self.client.revoke(self._lease)
        self._lease = 0
        await self.client.close()

    async def _keep_lease(self) -> None:
        """This replica's own lease, which its vote lives on: a replica that dies is out of the count within
        the TTL; a lease that expired (a long pause) is granted afresh."""
        ttl = self.settings.lease_ttl
        while True:
            try:
                if not self._lease:
                    self._lease = await self.client.grant(ttl)
                elif await self.client.keepalive(self._lease) <= 0:
                    log.warning("%s: its lease expired; granting a new one", self.replica)
                    self._lease = 0
                    continue
                self._succeeded()
                await asyncio.sleep(keepalive_every(ttl))
            except EtcdError as exc:
                self._failed(exc)
                await asyncio.sleep(retry_pause(ttl))

    async def _watch(self) -> None:
        while True:
            try:
                revision, kvs = await self.client.range(self.keys.root)
                self._succeeded()
                await self._reset(kvs)
                self._watching.set()
                async for kind, kv in self.client.watch(self.keys.root, revision + 1):
                    self._succeeded()
                    await self._event(kind, kv)
            except EtcdError as exc:
                self._failed(exc)
            await asyncio.sleep(retry_pause(self.settings.lease_ttl))

    async def _reset(self, kvs: tuple[KeyValue, ...]) -> None:
        self.votes = {}
        self.leader = None
        for kv in kvs:
            await self._event("PUT", kv)

    async def _event(self, kind: str, kv: KeyValue) -> None:
        key = kv.key
        if key.startswith(self.keys.votes):
            replica = key[len(self.keys.votes) :].decode(errors="replace")
            vote = decode_vote(replica, kv.value, self._now()) if kind == "PUT" else None
            before = self.votes.pop(replica, None)
            if vote is not None:
                self.votes[replica] = vote
            if (before and before.states) != (vote and vote.states):
                self._on_change()
        elif key == self.keys.leader:
            self.leader = leader_of(kv) if kind == "PUT" else None
            self._on_change()
        elif key == self.keys.plan and kind == "PUT":
            shared = await asyncio.to_thread(decode_plan, kv.value)
            if shared is not None and (self.shared_plan is None or shared.epoch >= self.shared_plan.epoch):
                self.shared_plan = shared
                self._on_change()
        elif key == self.keys.overrides:
            self.overrides = await asyncio.to_thread(decode_overrides, kv.value if kind == "PUT" else None)

    async def _campaign(self) -> None:
        # A replica just started has not heard its peers yet: were it to lead at once, it would act on its
        # own view alone (one started cut off from the regions would fail every one of them over).
        await self._watching.wait()
        await asyncio.sleep(self.stale_after)
        while True:
            await self._may_campaign.wait()
            lead = await campaign(
                self.client, self.settings.prefix, self.replica, self.settings.lease_ttl, now=self._now
            )
            self.leadership = lead
            self._on_change()
            await lead.lost.wait()
            log.warning("%s no longer leads: %s", self.replica, lead.reason)
            if self.leadership is lead:
                self.leadership = None

    async def _load_audit(self, lead: Leadership) -> None:
        """Once per leadership: the entries earlier leaders kept, so the newest AUDIT_KEEP survive."""
        if self._audit_loaded_for == lead.epoch:
            return
        kv = await self.client.get(self.keys.audit)
        try:
            loaded = json.loads(kv.value) if kv else []
        except ValueError:
            loaded = []
        self._audit = (
            [e for e in loaded if isinstance(e, dict)][-AUDIT_KEEP:] if isinstance(loaded, list) else []
        )
        self._audit_loaded_for = lead.epoch

    def _succeeded(self) -> None:
        self._ok_at = self._now()
        self.etcd_error = None

    def _failed(self, exc: EtcdError) -> None:
        self.etcd_error = f"{type(exc).__name__}: {exc}"[:300]
