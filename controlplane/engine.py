"""decide(): the pure routing decision from policy, health, overrides and the previous plan."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controlplane.overrides import Override, OverrideAction
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import AllDown, ClientGroup, Mode, Policy, Region, Service
from probes.health import HealthView, RegionHealth, State

TOTAL = 100


@dataclass(frozen=True, slots=True)
class _Candidate:
    name: str
    region: Region
    health: RegionHealth
    healthy: bool
    drained: Override | None
    pinned: Override | None
    idle_reason: str  # why it gets nothing when it is not among the live regions


class _Facts:
    """Per-call memo of what does not depend on the (service, group): with 1,000 services over the same
    regions, every region's health and overrides, and most target splits, are worked out once."""

    def __init__(self, health: HealthView, overrides: Sequence[Override], now: float) -> None:
        self.health = health
        self.overrides = overrides
        self.now = now
        self._scoped = any(o.service is not None for o in overrides)
        self._candidates: dict[tuple[str, str], _Candidate] = {}
        self._candidate_sets: dict[tuple[str, int], tuple[_Candidate, ...]] = {}
        self._targets: dict[tuple[object, ...], tuple[dict[str, float], dict[str, str]]] = {}
        self.weighings: dict[tuple[object, ...], Weighing] = {}
        self._weights: dict[tuple[str, int, str], RouteWeight] = {}

    def route_weight(self, region: str, weight: int, reason: str) -> RouteWeight:
        # Interned: building a frozen dataclass costs more than finding the equal one made for another service.
        key = (region, weight, reason)
        found = self._weights.get(key)
        if found is None:
            found = self._weights[key] = RouteWeight(region, weight, reason)
        return found

    def candidate(self, service: str, region: Region) -> _Candidate:
        key = (service if self._scoped else "", region.name)
        found = self._candidates.get(key)
        if found is None:
            h = self.health.get(region.name)
            drained = pinned = None
            for o in self.overrides:
                if o.applies(service, region.name, self.now):
                    if o.action is OverrideAction.DRAIN:
                        drained = drained or o
                    else:
                        pinned = pinned or o
            healthy = h.state is State.HEALTHY
            if not healthy:
                idle = f"{h.state}: " + ("; ".join(h.reasons) or "not healthy")
            elif drained is not None:
                idle = f"drained by override until {drained.until:.0f}" + (
                    f" ({drained.reason})" if drained.reason else ""
                )
            else:
                idle = "standby"
            found = _Candidate(region.name, region, h, healthy, drained, pinned, idle)
            self._candidates[key] = found
        return found

    def candidates(self, service: str, allowed: tuple[Region, ...]) -> tuple[_Candidate, ...]:
        # Keyed by identity: the policy hands out one tuple per (service, group), alive for the whole call.
        key = (service if self._scoped else "", id(allowed))
        found = self._candidate_sets.get(key)
        if found is None:
            found = self._candidate_sets[key] = tuple(self.candidate(service, r) for r in allowed)
        return found

    def targets(
        self, service: Service, live: Sequence[_Candidate]
    ) -> tuple[dict[str, float], dict[str, str]]:
        key = (service.mode, service.slow_start, service.trickle, *(id(c) for c in live))
        found = self._targets.get(key)
        if found is None:
            found = self._targets[key] = _targets(service, live, self.now)
        return found


def largest_remainder(shares: Mapping[str, float], total: int = TOTAL) -> dict[str, int]:
    """Integers summing to `total`, each the floor or ceiling of its exact share."""
    if not shares:
        return {}
    floor = math.floor
    whole = {k: floor(v + 1e-9) if v > 0 else 0 for k, v in shares.items()}
    left = total - sum(whole.values())
    if left > 0:
        remainders = sorted((whole[k] - v, k) for k, v in shares.items() if v > 0)
        for _, key in remainders[:left]:
            whole[key] += 1
    return whole


def _normalise(raw: Mapping[str, float]) -> dict[str, float]:
    total = sum(raw.values())
    if total <= 0:
        return {k: TOTAL / len(raw) for k in raw} if raw else {}
    return {k: TOTAL * v / total for k, v in raw.items()}


def _slow_start(service: Service, health: RegionHealth, now: float) -> float:
    if service.slow_start <= 0 or health.since <= 0:
        return 1.0
    # Start at a tenth rather than zero so a recovered region gets proof-of-life traffic at once.
    return min(1.0, max(0.1, (now - health.since) / service.slow_start))


def _targets(
    service: Service, live: Sequence[_Candidate], now: float
) -> tuple[dict[str, float], dict[str, str]]:
    """Exact (unrounded) target shares over live regions, and why."""
    reasons: dict[str, str] = {}
    if service.mode is Mode.ACTIVE_ACTIVE:
        raw: dict[str, float] = {}
        for c in live:
            base = float(c.pinned.weight if c.pinned and c.pinned.weight is not None else c.region.capacity)
            ramp = _slow_start(service, c.health, now)
            raw[c.name] = base * c.health.score * ramp
            what = f"pinned weight {base:g}" if c.pinned else f"capacity {base:g}"
            reasons[c.name] = f"healthy: {what} x score {c.health.score:.2f}" + (
                f" x slow start {ramp:.0%}" if ramp < 1 else ""
            )
        if sum(raw.values()) <= 0:
            raw = {c.name: 1.0 for c in live}
        return _normalise(raw), reasons
    ordered = sorted(live, key=lambda c: (c.region.priority, c.name))
    shares = {c.name: 0.0 for c in ordered}
    primary, backups = ordered[0], ordered[1:]
    primary_share = float(TOTAL - (service.trickle if backups else 0))
    ramp = _slow_start(service, primary.health, now) if backups else 1.0
    primary_share *= ramp
    shares[primary.name] = primary_share
    reasons[primary.name] = f"primary (priority {primary.region.priority})" + (
        f", slow start {ramp:.0%}" if ramp < 1 else ""
    )
    if backups:
        shares[backups[0].name] = TOTAL - primary_share
        reasons[backups[0].name] = f"first backup (priority {backups[0].region.priority})" + (
            f", trickle {service.trickle}%" if service.trickle else ""
        )
        for b in backups[1:]:
            reasons[b.name] = f"standby (priority {b.region.priority})"
    return shares, reasons


def _damp(
    previous: Mapping[str, int], target: dict[str, float], dead: set[str], max_shift: int
) -> tuple[dict[str, float], set[str]]:
    """Move from the previous weights toward the target by at most max_shift per region, except that dead
    regions drop to zero at once and their weight goes straight to the live ones."""
    gone = dead | {r for r in previous if r not in target}
    freed = sum(previous[r] for r in gone if r in previous)
    share = freed / TOTAL
    start = {r: (0.0 if r in gone else previous.get(r, 0)) + share * t for r, t in target.items()}
    delta = {r: t - start[r] for r, t in target.items()}
    biggest = max(max(delta.values(), default=0.0), -min(delta.values(), default=0.0))
    if biggest <= max_shift:
        return target, set()
    step = max_shift / biggest
    moved = {r: start[r] + step * delta[r] for r in target}
    return moved, {r for r in target if abs(moved[r] - target[r]) > 1e-9}


Weighing = tuple[GroupMode, tuple[RouteWeight, ...]]


def _all_down(service: Service, candidates: Sequence[_Candidate], previous: GroupPlan | None) -> Weighing:
    down = "; ".join(f"{c.name}: {c.health.state}" for c in candidates)
    choice = service.when_all_down
    if choice is AllDown.FREEZE and previous is not None:
        names = {c.name for c in candidates}
        kept = {w.region: float(w.weight) for w in previous.weights if w.region in names and w.weight}
        if kept:
            weights = largest_remainder(_normalise(kept))
            why = f"frozen at last good plan; all down ({down})"
            return GroupMode.FROZEN, tuple(
                RouteWeight(c.name, weights.get(c.name, 0), why) for c in candidates
            )
    if choice is AllDown.FAIL_OPEN:
        weights = largest_remainder(_normalise({c.name: float(c.region.capacity) for c in candidates}))
        why = f"fail-open: all down ({down})"
        return GroupMode.FAIL_OPEN, tuple(RouteWeight(c.name, weights[c.name], why) for c in candidates)
    why = "fail-closed" if choice is AllDown.FAIL_CLOSED else "freeze with no last good plan: fail-closed"
    return GroupMode.FAIL_CLOSED, tuple(
        RouteWeight(c.name, 0, f"{why}: all down ({down})") for c in candidates
    )


def _weigh(
    service: Service, candidates: Sequence[_Candidate], previous: GroupPlan | None, facts: _Facts
) -> Weighing:
    healthy = [c for c in candidates if c.healthy]
    if not healthy:
        return _all_down(service, candidates, previous)
    live = [c for c in healthy if c.drained is None]
    drain_refused = not live
    if drain_refused:
        # Draining every healthy region would route nowhere; a drain is a wish, not an outage.
        live = healthy
    shares, live_reasons = facts.targets(service, live)  # shared by every group with these regions: read only
    target = {c.name: shares.get(c.name, 0.0) for c in candidates}
    damped: set[str] = set()
    if previous is not None and previous.mode is GroupMode.NORMAL:
        before = previous.as_dict()
        dead = {c.name for c in candidates if not c.healthy and before.get(c.name, 0) > 0}
        moved, damped = _damp(before, target, dead, service.max_shift)
    else:
        moved = target
    weights = largest_remainder(moved)

    def reason(c: _Candidate) -> str:
        why = live_reasons.get(c.name) or c.idle_reason
        if drain_refused:
            why += "; drain refused: last healthy region"
        if c.name in damped:
            why += f"; damped toward {target[c.name]:.0f} (max shift {service.max_shift})"
        return why

    return GroupMode.NORMAL, tuple(facts.route_weight(c.name, weights[c.name], reason(c)) for c in candidates)


def _decide_group(
    policy: Policy, service: Service, group: ClientGroup, facts: _Facts, previous: GroupPlan | None
) -> GroupPlan:
    allowed = policy.allowed_regions(service, group)
    if not allowed:
        return GroupPlan(service.name, group.name, GroupMode.FAIL_CLOSED, ())
    candidates = facts.candidates(service.name, allowed)
    # Services with the same settings, regions and last weights get the same answer: weigh once per call.
    key = (
        service.mode,
        service.max_shift,
        service.slow_start,
        service.trickle,
        service.when_all_down,
        id(candidates),
        previous.mode if previous else None,
        # Identity is enough: RouteWeights are interned per call, and `previous` outlives this call, so
        # equal last weights share objects; a miss only costs a recomputation.
        *(id(w) for w in (previous.weights if previous else ())),
    )
    weighing = facts.weighings.get(key)
    if weighing is None:
        weighing = facts.weighings[key] = _weigh(service, candidates, previous, facts)
    return GroupPlan(service.name, group.name, *weighing)


def decide(
    policy: Policy,
    health: HealthView,
    previous: RoutingPlan | None,
    now: float,
    overrides: Sequence[Override] = (),
) -> RoutingPlan:
    """Weights per (service, client group, region). Same inputs, same plan: no I/O, no clock."""
    before = {(g.service, g.group): g for g in previous or ()}
    facts = _Facts(health, tuple(o for o in overrides if now < o.until), now)
    groups = tuple(
        _decide_group(policy, service, group, facts, before.get((service.name, group.name)))
        for service in policy.services
        for group in policy.client_groups
    )
    return RoutingPlan(generated_at=now, groups=groups)
