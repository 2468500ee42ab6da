"""decide(): the pure routing decision from policy, health, overrides, model weights and the previous plan.

A service with a model routes only to regions holding that model's version verified (`ArtifactView`), and
never to a region the model may not be stored in. Lacking weights is a fact, not a probe's doubt: such a
region gets nothing in every mode, fail-open and freeze included (a frozen plan keeps only the regions that
hold the weights; when none does, the group fails closed), and its weight leaves at once, undamped, like
that of a region gone unhealthy.

A service with a cost_weight leans its active-active weights toward the live regions that cost less per 1M
output tokens (`costs`), among those within the TTFT target (`_leaned`). Cost only rescales the shares of
regions that already get traffic: residency, health, drains, the weights gate, active-passive order, damping
and the all-down modes never see it, and an operator's pinned weight is the operator's word, not leaned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import compress
from operator import attrgetter, not_, sub

from controlplane.overrides import Override, OverrideAction
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import AllDown, ClientGroup, Mode, Model, Policy, Region, Service
from controlplane.weights.artifacts import ArtifactView, forbidden
from probes.health import HealthView, RegionHealth, State

TOTAL = 100
DRAIN_REFUSED = "; drain refused: last healthy region"


@dataclass(frozen=True, slots=True)
class _Candidate:
    name: str
    region: Region
    health: RegionHealth
    healthy: bool
    drained: Override | None
    pinned: Override | None
    idle_reason: str  # why it gets nothing when it is not among the live regions
    weight: float  # active-active: (pinned weight or capacity) x score, before slow start and normalising
    weight_reason: str
    lacking: str | None = None  # why it may not serve the service's model: then it never gets weight


@dataclass(frozen=True, slots=True)
class _Candidates:
    """One (service, group)'s allowed regions and what follows from them alone. Everything per region in a
    group is a list in this order, which is also the order of the group's weights; all are as long as
    `members` by construction, so the hot loops zip them without strict's check."""

    members: tuple[_Candidate, ...]
    names: tuple[str, ...]
    alphabetical: tuple[int, ...]  # positions by name: rounding's tie-break
    healthy: tuple[bool, ...]
    unhealthy: tuple[int, ...]  # positions
    live: tuple[int, ...]  # positions of the regions that may get traffic
    drain_refused: bool
    lacking: bool  # some member lacks the model's weights


# Per region, in the order of _Candidates.members: exact (unrounded) target shares, and why.
_Targets = tuple[list[float], list[str]]
Weighing = tuple[GroupMode, tuple[RouteWeight, ...], float]
# A service's (cost_weight, cost_floor), when its weights lean toward cheaper regions.
_Lean = tuple[float, float]
_NAME, _HEALTHY, _IDLE_REASON = attrgetter("name"), attrgetter("healthy"), attrgetter("idle_reason")
_REGION, _WEIGHT = attrgetter("region"), attrgetter("weight")
_EPSILON_MORE = (1e-9).__add__


def _intern(
    interned: dict[tuple[str, int, str], RouteWeight], region: str, weight: int, reason: str
) -> RouteWeight:
    """A new RouteWeight, kept for the groups after this one."""
    made = interned[(region, weight, reason)] = RouteWeight(region, weight, reason)
    return made


def _newest(current: Override | None, candidate: Override) -> Override:
    # The operator's last word counts: of two overrides alike, the later created wins, then the later listed.
    return candidate if current is None or candidate.created_at >= current.created_at else current


class _Facts:
    """Per-call memo of what does not depend on the (service, group): with 1,000 services over the same
    regions, every region's health and overrides, and most target splits, are worked out once."""

    def __init__(
        self,
        health: HealthView,
        overrides: Sequence[Override],
        now: float,
        models: Mapping[str, Model],
        artifacts: ArtifactView | None,
        costs: Mapping[str, float] | None,
        ttft_target: float,
    ) -> None:
        self.health = health
        self.costs = costs or None  # None: no region has a figure, so nothing leans
        self.ttft_target = ttft_target
        self.models = models
        self._lacks = forbidden if artifacts is None else artifacts.lacks
        self.overrides = overrides
        self.now = now
        self._scoped = any(o.service is not None for o in overrides)
        self._drains = any(o.action is OverrideAction.DRAIN for o in overrides)
        # By scope (service or ""), then model (or None), then region.
        self._candidates: dict[tuple[str, str | None], dict[str, _Candidate]] = {}
        self._candidate_sets: dict[tuple[str, str | None, int], _Candidates] = {}
        self._targets: dict[tuple[object, ...], _Targets] = {}
        self.weighings: dict[tuple[object, ...], _Weighing] = {}
        self.damped: dict[tuple[object, ...], Weighing] = {}
        # Interned: building a frozen dataclass costs more than finding the equal one made for another service.
        self.interned: dict[tuple[str, int, str], RouteWeight] = {}

    def _candidate(self, service: str, region: Region, model: Model | None) -> _Candidate:
        h = self.health.get(region.name)
        drained = pinned = None
        for o in self.overrides:
            if o.applies(service, region.name, self.now):
                if o.action is OverrideAction.DRAIN:
                    drained = _newest(drained, o)
                else:
                    pinned = _newest(pinned, o)
        lacking = None if model is None else self._lacks(region, model)
        healthy = h.state is State.HEALTHY and lacking is None
        if lacking is not None:
            idle = lacking
        elif not healthy:
            idle = f"{h.state}: " + ("; ".join(h.reasons) or "not healthy")
        elif drained is not None:
            # A drain outranks a weight override on the same region whatever their ages: draining is the
            # operator saying "no traffic here", and only ending the drain says otherwise.
            idle = (
                f"drained by override until {drained.until:.0f}"
                + (f" ({drained.reason})" if drained.reason else "")
                + (f"; weight override {pinned.weight} waits for the drain to end" if pinned else "")
            )
        else:
            idle = "standby"
        pin = pinned.weight if pinned is not None else None
        base = float(pin if pin is not None else region.capacity)
        what = f"pinned weight {base:g}" if pinned else f"capacity {base:g}"
        return _Candidate(
            region.name,
            region,
            h,
            healthy,
            drained,
            pinned,
            idle,
            base * h.score,
            f"healthy: {what} x score {h.score:.2f}",
            lacking,
        )

    def candidates(self, service: Service, allowed: tuple[Region, ...]) -> _Candidates:
        # Keyed by identity: the policy hands out one tuple per (service, group), alive for the whole call.
        scope = service.name if self._scoped else ""
        key = (scope, service.model, id(allowed))
        found = self._candidate_sets.get(key)
        if found is None:
            known = self._candidates.setdefault(key[:2], {})
            model = None if service.model is None else self.models[service.model]
            members = tuple(
                [
                    known.get(r.name) or known.setdefault(r.name, self._candidate(service.name, r, model))
                    for r in allowed
                ]
            )
            names = tuple(map(_NAME, members))
            flags = tuple(map(_HEALTHY, members))
            positions = range(len(members))
            healthy = list(compress(positions, flags))
            live = [i for i in healthy if members[i].drained is None] if self._drains else healthy
            found = self._candidate_sets[key] = _Candidates(
                members,
                names,
                _alphabetical(names),
                flags,
                tuple(compress(positions, map(not_, flags))),
                # Draining every healthy region would route nowhere; a drain is a wish, not an outage.
                tuple(live or healthy),
                bool(healthy) and not live,
                model is not None and any(c.lacking is not None for c in members),
            )
        return found

    def targets(self, service: Service, candidates: _Candidates, lean: _Lean | None) -> _Targets:
        key = (service.mode, service.slow_start, service.trickle, id(candidates), lean)
        found = self._targets.get(key)
        if found is None:
            leaned = None
            if lean is not None and self.costs is not None and service.mode is Mode.ACTIVE_ACTIVE:
                leaned = _leaned(candidates, lean, self.costs, self.ttft_target)
            found = self._targets[key] = _targets(service, candidates, self.now, leaned)
        return found


@lru_cache(maxsize=65_536)
def _alphabetical(names: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of `names` in name order: rounding's tie-break. A pure function of the region set, so
    remembered across calls: a fleet's region sets are few and sorting them was a tenth of a decision."""
    return tuple(sorted(range(len(names)), key=names.__getitem__))


def _round(values: Sequence[float], alphabetical: Sequence[int], total: int = TOTAL) -> list[int]:
    # Shares are never negative, so int() is floor; the epsilon keeps 33.99999999 from becoming 33.
    whole = list(map(int, map(_EPSILON_MORE, values)))
    left = total - sum(whole)
    if left > 0:
        # Largest fraction first; a stable sort over positions in name order gives ties to the
        # alphabetically first region, so a plan never flips between equal choices. Shares of zero never
        # get a point: `left` is the sum of the fractions, each below 1, so more regions than `left` have one.
        minus_fraction = list(map(sub, whole, values))
        for i in sorted(alphabetical, key=minus_fraction.__getitem__)[:left]:
            whole[i] += 1
    return whole


def largest_remainder(shares: Mapping[str, float], total: int = TOTAL) -> dict[str, int]:
    """Integers summing to `total`, each the floor or ceiling of its exact share."""
    names = sorted(shares)
    return dict(zip(names, _round([shares[n] for n in names], range(len(names)), total), strict=True))


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


def _money(amount: float) -> str:
    return f"${amount:.2f}" if amount >= 0.1 else f"${amount:.2g}"


def _leaned(
    candidates: _Candidates, lean: _Lean, costs: Mapping[str, float], ttft_target: float
) -> tuple[_Candidate, ...] | None:
    """The group's members with each live region's weight rescaled by its cost multiplier
    m = max(floor, (1 - w) + w * cheapest / cost): the cheapest region within the TTFT target keeps all of its
    weight, a dearer one less, never below the floor. None when nothing leans.

    Only a region within the TTFT target may be the cheapest; one over it is weighed as the dearest live
    region, so a cheap but slow region never draws traffic for its price. A region with no cost figure and a
    pinned weight keep m = 1."""
    members = candidates.members
    # Per live region: position, cost figure, within the TTFT target. A figure that is no price at all
    # (negative, NaN, infinite) must not poison the arithmetic: it counts as none.
    rows = []
    for i in candidates.live:
        figure = costs.get(members[i].name)
        priced = figure is not None and 0 <= figure < math.inf
        rows.append((i, figure if priced else None, _within(members[i].health, ttft_target)))
    fast = [figure for _, figure, within in rows if within and figure is not None]
    if not fast:
        return None
    cheapest = min(fast)
    dearest = max([figure for _, figure, _ in rows if figure is not None])
    weight, floor = lean
    out = list(members)
    for i, cost, within in rows:
        c = members[i]
        figure = cost if within else dearest
        if c.pinned is not None or figure is None or figure <= cheapest:
            continue
        m = max(floor, (1 - weight) + weight * cheapest / figure)
        if m >= 1:  # a floor of 1 keeps every region whole
            continue
        slow = "" if within else "over TTFT target, weighed as the dearest: "
        note = f"{slow}{_money(figure)} vs cheapest {_money(cheapest)} per 1M tokens"
        if m == floor:
            note += f"; floor {floor:g}"
        out[i] = replace(c, weight=c.weight * m, weight_reason=f"{c.weight_reason} x cost {m:.2f} ({note})")
    return tuple(out)


def _within(health: RegionHealth, ttft_target: float) -> bool:
    return health.ttft_s is None or health.ttft_s <= ttft_target


def _targets(
    service: Service, candidates: _Candidates, now: float, leaned: tuple[_Candidate, ...] | None
) -> _Targets:
    """`leaned`: the members with cost-rescaled weights (active-active only), or None to weigh them as they are."""
    members, live = candidates.members, candidates.live
    shares = [0.0] * len(members)
    reasons = list(map(_IDLE_REASON, members))
    if service.mode is Mode.ACTIVE_ACTIVE:
        ramps = service.slow_start > 0
        weighed = members if leaned is None else leaned
        for i in live:
            c = weighed[i]
            ramp = _slow_start(service, c.health, now) if ramps and c.health.since > 0 else 1.0
            if ramp < 1:
                shares[i] = c.weight * ramp
                reasons[i] = f"{c.weight_reason} x slow start {ramp:.0%}"
            else:
                shares[i] = c.weight
                reasons[i] = c.weight_reason
        total = sum(shares)
        for i in live:
            shares[i] = TOTAL * shares[i] / total if total > 0 else TOTAL / len(live)
    else:
        ordered = sorted(live, key=lambda i: (members[i].region.priority, members[i].name))
        primary, backups = members[ordered[0]], ordered[1:]
        ramp = _slow_start(service, primary.health, now) if backups else 1.0
        primary_share = float(TOTAL - (service.trickle if backups else 0)) * ramp
        shares[ordered[0]] = primary_share
        reasons[ordered[0]] = f"primary (priority {primary.region.priority})" + (
            f", slow start {ramp:.0%}" if ramp < 1 else ""
        )
        if backups:
            first = members[backups[0]]
            shares[backups[0]] = TOTAL - primary_share
            reasons[backups[0]] = f"first backup (priority {first.region.priority})" + (
                f", trickle {service.trickle}%" if service.trickle else ""
            )
            for b in backups[1:]:
                reasons[b] = f"standby (priority {members[b].region.priority})"
    if candidates.drain_refused:
        for i in live:
            if members[i].drained is not None:
                reasons[i] += DRAIN_REFUSED
    return shares, reasons


def _allowance(max_shift: int, elapsed: float) -> int:
    """Whole points a live region may move now: max_shift per second since the weights last changed, at most
    max_shift (a token bucket that a second fills). Whole points, because rounding can then never add one,
    and a step too soon to move a point leaves the weights, so their `since`, alone: the allowance grows."""
    if not 0 <= elapsed < 1:
        # A clock stepped back must not freeze routing until it catches up: one step may move max_shift.
        return max_shift
    return math.floor(max_shift * elapsed)


def _start(before: list[int], target: list[float], candidates: _Candidates, removed: int) -> Sequence[float]:
    """Where damping starts from: the previous weights, except that the weight of regions no longer healthy
    (or no longer allowed: `removed`) goes straight to the live ones, in proportion to their targets."""
    freed = removed + (sum([before[i] for i in candidates.unhealthy]) if candidates.unhealthy else 0)
    if not freed:
        return before
    share = freed / TOTAL
    return [
        (b if ok else 0) + share * t for b, ok, t in zip(before, candidates.healthy, target, strict=False)
    ]


def _before(previous: GroupPlan, names: tuple[str, ...]) -> tuple[list[int], int, bool]:
    """The previous weights in `names` order, the weight on regions no longer among them, and whether the
    previous weights were in exactly this order (then their RouteWeights can be reused by position)."""
    old = previous.weights
    if tuple(map(_REGION, old)) == names:
        return list(map(_WEIGHT, old)), 0, True
    held = previous.as_dict()
    before = [held.pop(n, 0) for n in names]
    return before, sum(held.values()), False


def _all_down(
    service: Service, candidates: _Candidates, before: Sequence[int] | None
) -> tuple[GroupMode, list[int], list[str]]:
    members, names = candidates.members, candidates.names
    # Only regions holding the weights may be frozen or opened to; the others keep their own reason.
    holding = [c for c in members if c.lacking is None] if candidates.lacking else members
    mode, weights, why = _all_down_weights(service, candidates, holding, before)
    if candidates.lacking:
        return mode, weights, [why if c.lacking is None else c.idle_reason for c in members]
    return mode, weights, [why] * len(names)


def _all_down_weights(
    service: Service, candidates: _Candidates, holding: Sequence[_Candidate], before: Sequence[int] | None
) -> tuple[GroupMode, list[int], str]:
    names = candidates.names
    if not holding:
        return GroupMode.FAIL_CLOSED, [0] * len(names), "fail-closed: no region holds the weights"
    down = "; ".join(f"{c.name}: {c.health.state}" for c in holding)
    choice = service.when_all_down
    if choice is AllDown.FREEZE and before is not None:
        held = {c.name for c in holding}
        kept = {n: float(b) for n, b in zip(names, before, strict=True) if b and n in held}
        if kept:
            frozen = largest_remainder(_normalise(kept))
            return (
                GroupMode.FROZEN,
                [frozen.get(n, 0) for n in names],
                f"frozen at last good plan; all down ({down})",
            )
    if choice is AllDown.FAIL_OPEN:
        shares = _normalise({c.name: float(c.region.capacity) for c in holding})
        return (
            GroupMode.FAIL_OPEN,
            _round([shares.get(n, 0.0) for n in names], candidates.alphabetical),
            f"fail-open: all down ({down})",
        )
    why = "fail-closed" if choice is AllDown.FAIL_CLOSED else "freeze with no last good plan: fail-closed"
    return GroupMode.FAIL_CLOSED, [0] * len(names), f"{why}: all down ({down})"


class _Weighing:
    """One group's decision up to damping, shared by every service that differs from it only in max_shift
    (max_shift matters only when damping bites): the undamped answer is built once, on first use."""

    __slots__ = (
        "_undamped",
        "before",
        "biggest",
        "candidates",
        "mode",
        "now",
        "previous",
        "reasons",
        "reusable",
        "start",
        "target",
        "weights",
    )

    def __init__(
        self,
        service: Service,
        candidates: _Candidates,
        previous: GroupPlan | None,
        facts: _Facts,
        lean: _Lean | None,
    ):
        # No reference to `facts`: it holds this weighing, and a cycle would leave every call's memo to the
        # garbage collector's slow passes.
        self.candidates, self.previous, self.now = candidates, previous, facts.now
        self.before: list[int] | None = None
        removed, self.reusable = 0, False
        if previous is not None:
            self.before, removed, self.reusable = _before(previous, candidates.names)
        self.biggest = 0.0  # the largest move toward the target; damping bites when it exceeds the allowance
        self._undamped: Weighing | None = None
        self.weights: list[int] | None = None  # rounded on first use, unless all regions are down
        if not candidates.live:
            self.mode, self.weights, self.reasons = _all_down(service, candidates, self.before)
            self.target: list[float] = []
            self.start: Sequence[float] = []
            return
        self.mode = GroupMode.NORMAL
        # Shared by other groups: read only.
        self.target, self.reasons = facts.targets(service, candidates, lean)
        self.start = self.target
        if previous is not None and self.before is not None and previous.mode is GroupMode.NORMAL:
            self.start = _start(self.before, self.target, candidates, removed)
            self.biggest = max(map(abs, map(sub, self.target, self.start)))

    def undamped(self, interned: dict[tuple[str, int, str], RouteWeight]) -> Weighing:
        if self._undamped is None:
            weights = self.weights
            if weights is None:
                weights = _round(self.target, self.candidates.alphabetical)
            self._undamped = self._finish(weights, self.reasons, interned)
        return self._undamped

    def damped(
        self, allowance: int, max_shift: int, interned: dict[tuple[str, int, str], RouteWeight]
    ) -> Weighing:
        """Every region moved from the start toward its target by the same fraction, so that none moves
        more than `allowance`."""
        step = allowance / self.biggest
        moved = [s + step * (t - s) for s, t in zip(self.start, self.target, strict=False)]
        # Thousands of these a call: concatenation with round() is a third of an f-string's float format.
        suffix = f" (max shift {max_shift} points/s)"
        reasons = [
            r + "; damped toward " + str(round(t)) + suffix if abs(m - t) > 1e-9 else r
            for r, m, t in zip(self.reasons, moved, self.target, strict=False)
        ]
        return self._finish(_round(moved, self.candidates.alphabetical), reasons, interned)

    def _finish(
        self, weights: list[int], reasons: list[str], interned: dict[tuple[str, int, str], RouteWeight]
    ) -> Weighing:
        names, previous, known = self.candidates.names, self.previous, interned.get
        if previous is not None and self.reusable:
            # Most weights equal last call's: reusing its RouteWeight skips building and interning one.
            out = tuple(
                [
                    o if o.weight == w and o.reason == r else known((n, w, r)) or _intern(interned, n, w, r)
                    for n, w, r, o in zip(names, weights, reasons, previous.weights, strict=False)
                ]
            )
        else:
            out = tuple(
                [
                    known((n, w, r)) or _intern(interned, n, w, r)
                    for n, w, r in zip(names, weights, reasons, strict=False)
                ]
            )
        since = previous.since if previous is not None and self.before == weights else self.now
        return self.mode, out, since


def _decide_group(
    policy: Policy, service: Service, group: ClientGroup, facts: _Facts, previous: GroupPlan | None
) -> GroupPlan:
    allowed = policy.allowed_regions(service, group)
    if not allowed:
        held = previous is not None and any(w.weight for w in previous.weights)
        since = previous.since if previous is not None and not held else facts.now
        return GroupPlan(service.name, group.name, GroupMode.FAIL_CLOSED, (), since)
    candidates = facts.candidates(service, allowed)
    # Tested on cost_weight first, so a service that does not lean pays one attribute read for the feature.
    lean = (
        (service.cost_weight, service.cost_floor) if service.cost_weight and facts.costs is not None else None
    )
    # Services with the same settings, regions and last weights get the same answer: weigh once per call.
    key = (
        service.mode,
        service.slow_start,
        service.trickle,
        service.when_all_down,
        id(candidates),
        lean,
        # Identity is enough for the weights: a weighing's tuple is shared by every group it answered, and
        # `previous` outlives this call, so equal last weights mostly share one; a miss only costs a
        # recomputation.
        *((previous.mode, id(previous.weights), previous.since) if previous else ()),
    )
    weighing = facts.weighings.get(key)
    if weighing is None:
        weighing = facts.weighings[key] = _Weighing(service, candidates, previous, facts, lean)
    allowance = _allowance(service.max_shift, facts.now - previous.since) if previous else 0
    if weighing.biggest <= allowance:
        return GroupPlan(service.name, group.name, *weighing.undamped(facts.interned))
    damped_key = (*key, service.max_shift)
    damped = facts.damped.get(damped_key)
    if damped is None:
        damped = facts.damped[damped_key] = weighing.damped(allowance, service.max_shift, facts.interned)
    return GroupPlan(service.name, group.name, *damped)


def decide(
    policy: Policy,
    health: HealthView,
    previous: RoutingPlan | None,
    now: float,
    overrides: Sequence[Override] = (),
    artifacts: ArtifactView | None = None,
    costs: Mapping[str, float] | None = None,
) -> RoutingPlan:
    """Weights per (service, client group, region). Same inputs, same plan: no I/O, no clock.

    `artifacts`: what each region's bucket holds. None means no bucket was looked at (a one-shot plan):
    then only residency gates a service's model, never a version.
    `costs`: region -> cost per 1M output tokens of serving more there, for services with a cost_weight.
    A region left out has no figure and is not leaned; None leaves every plan as without the feature."""
    before = {(g.service, g.group): g for g in previous or ()}
    models = {m.name: m for m in policy.models}
    facts = _Facts(
        health,
        tuple(o for o in overrides if now < o.until),
        now,
        models,
        artifacts,
        costs,
        policy.health.ttft_target,
    )
    groups = tuple(
        _decide_group(policy, service, group, facts, before.get((service.name, group.name)))
        for service in policy.services
        for group in policy.client_groups
    )
    return RoutingPlan(generated_at=now, groups=groups)
