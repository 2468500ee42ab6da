"""Vantage quorum: the replicas' per-region verdicts counted into one health view. Pure: no I/O, no clock.

Every replica probes every region from where it stands and publishes a `Vote` (its per-region `State`).
`tally()` counts the live votes per region; `combine()` lays the count over the leader's own HealthView,
which is what decide() sees. The rules, and why:

- **Live.** One vote per replica: the newest (`at`); two of the same replica with the same `at` are ordered
  by their content, only so the result never depends on the order votes arrive in. A vote is live while
  `now - at <= stale_after` (stale past it, as a probe result is in probes.health). `at` must be on the
  clock `now` is read from: the daemon stamps a vote when it receives it and each replica republishes every
  probe round, so a replica whose lease is kept alive but whose probing stalled goes stale.
- **Counting.** needed = len(live) // 2 + 1. Per region: UNHEALTHY when at least `needed` live replicas see
  it down, HEALTHY when at least `needed` see it up. Neither (a split, or too many replicas blind): HEALTHY
  if `me`'s own vote says so (then fewer than `needed` see it down: a path problem from those), else
  UNKNOWN. UNHEALTHY thus always takes a majority of the live replicas, and a minority seeing a region down
  is reported in the note, never failed over.
- **Exactly half** (2 of 4 down) is no majority: never UNHEALTHY. `me`'s own view breaks the tie: HEALTHY
  if it sees the region up; otherwise UNKNOWN, which decide() routes nothing to, as it does today when the
  single plane cannot tell. A leader that itself cannot reach a region half the plane sees down does not
  send traffic there on the other half's word.
- **UNKNOWN votes** (a replica that cannot see a region, or whose vote does not name it: starting up, its
  probes of that region stale, a policy reload in flight) count toward neither side but keep their seat in
  `needed`. Taking the seat away would let a single vantage point's path problem fail a region over while
  the others are merely starting: exactly the false failover the quorum exists to prevent. So a blind
  replica never makes UNHEALTHY easier; it can make it harder (3 live, 1 blind: both others must see the
  region down), but not the loss of traffic: when no majority either way and `me` does not see the region
  up, the verdict is UNKNOWN and decide() routes nothing there all the same.
- **Notes.** Empty when every live replica agrees (one replica alone always does, so without coordination
  combine(view, tally([own vote])) is the view itself); otherwise the count, naming the replicas that saw
  the region down.
- **Frozen** (a reason; the daemon must then apply nothing, whatever the states say):
  `me` is not live (its own vote is stale or missing: it cannot know); or fewer than a majority of
  `expected` are live (cut off from its peers); or `me` sees no region up and some down while a majority
  of the other live replicas each see some region up (its own network is the problem).
- **expected** is the replica count last seen by a view that was not frozen: `remember()` gives the value
  for the next tally. It rises as replicas join and falls only while the plane is not frozen, so replicas
  may leave a few at a time (3 -> 2 stays unfrozen) but losing half or more at once freezes, and stays frozen
  until a majority of the count seen before is back. A plane of two that loses one freezes: one replica
  alone never acts on its own view unless it started alone (expected None, no coordination).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from probes.health import HealthView, RegionHealth, State


@dataclass(frozen=True, slots=True)
class Vote:
    replica: str
    at: float
    states: Mapping[str, State]  # the replica's per-region verdict


@dataclass(frozen=True, slots=True)
class RegionQuorum:
    region: str
    state: State
    down: tuple[str, ...]  # live replicas that see it unhealthy, by name
    up: tuple[str, ...]
    unknown: tuple[str, ...]  # live replicas with no verdict on it
    note: str  # empty when every live replica agrees


@dataclass(frozen=True, slots=True)
class QuorumView:
    live: tuple[str, ...]
    needed: int
    regions: Mapping[str, RegionQuorum]
    frozen: str | None  # why this replica must not act; None when it may


def _order(vote: Vote) -> tuple[float, tuple[tuple[str, str], ...]]:
    return vote.at, tuple(sorted((region, str(state)) for region, state in vote.states.items()))


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


def _region(region: str, live: Sequence[Vote], needed: int, mine: State | None) -> RegionQuorum:
    sides: dict[State, list[str]] = {State.UNHEALTHY: [], State.HEALTHY: [], State.UNKNOWN: []}
    for vote in live:
        sides[vote.states.get(region, State.UNKNOWN)].append(vote.replica)
    down, up, unknown = (tuple(sides[s]) for s in (State.UNHEALTHY, State.HEALTHY, State.UNKNOWN))
    count = f"{len(up)} up, {len(down)} down, {len(unknown)} unknown of {len(live)}"
    if len(down) >= needed:
        state, note = State.UNHEALTHY, f"down from {len(down)} of {len(live)} replicas ({_names(down)})"
    elif len(up) >= needed or mine is State.HEALTHY:
        state = State.HEALTHY
        note = "" if len(up) >= needed else f"no majority ({count}): healthy from here"
        if down:
            path = f"seen down from a minority ({_names(down)}): a path problem, not failed over"
            note = f"{note}; {path}" if note else path
    else:
        state = State.UNKNOWN
        note = f"no majority ({count})" + (f"; seen down from {_names(down)}" if down else "")
    if unknown and state is not State.UNKNOWN:
        # A blind replica votes no verdict (see replica.vote_for): which one is worth saying.
        silent = f"no verdict from {_names(unknown)}"
        note = f"{note}; {silent}" if note else silent
    if max(len(down), len(up), len(unknown)) == len(live):
        note = ""  # unanimous: the replica's own reasons say it all
    return RegionQuorum(region, state, down, up, unknown, note)


def blind(states: Mapping[str, State], others: Sequence[Vote]) -> bool:
    """`states` (a replica's own view) has no region up and some down while a majority of the other replicas
    see one up: what it sees is its own network, not the regions."""
    seen = set(states.values())
    if not others or State.UNHEALTHY not in seen or State.HEALTHY in seen:
        return False
    return sum(State.HEALTHY in v.states.values() for v in others) >= len(others) // 2 + 1


def tally(
    votes: Sequence[Vote],
    now: float,
    *,
    stale_after: float,
    me: str,
    expected: int | None = None,
    own_view: Mapping[str, State] | None = None,
) -> QuorumView:
    """The live replicas' votes counted per region; frozen (with the reason) when `me` may not act on them.
    `own_view`: `me`'s own view, when its published vote is not it (a blind replica publishes no verdict)."""
    newest: dict[str, Vote] = {}
    for vote in votes:
        kept = newest.get(vote.replica)
        if kept is None or _order(vote) > _order(kept):
            newest[vote.replica] = vote
    live = [newest[name] for name in sorted(newest) if now - newest[name].at <= stale_after]
    needed = len(live) // 2 + 1
    own = next((v for v in live if v.replica == me), None)
    regions = sorted({region for vote in live for region in vote.states})
    mine = own.states if own is not None else {}
    counted = {r: _region(r, live, needed, mine.get(r)) for r in regions}

    reasons: list[str] = []
    if own is None:
        reasons.append(f"{me}'s own vote is stale or missing: it cannot know")
    if expected is not None and len(live) < expected // 2 + 1:
        reasons.append(f"only {len(live)} of {expected} replicas live: cut off from its peers")
    others = [v for v in live if v.replica != me]
    if blind(mine if own_view is None else own_view, others):
        seeing = sum(State.HEALTHY in v.states.values() for v in others)
        reasons.append(
            f"{me} sees no region up while {seeing} of {len(others)} other replicas do: "
            "its own network is the problem"
        )
    return QuorumView(
        tuple(v.replica for v in live),
        needed,
        MappingProxyType(counted),
        "; ".join(reasons) or None,
    )


def remember(expected: int | None, quorum: QuorumView) -> int:
    """The `expected` for the next tally: the live count of a view that was not frozen. A frozen view only
    raises it, so a plane cut in half cannot lower the bar it is measured against."""
    if quorum.frozen is None:
        return len(quorum.live)
    return max(expected or 0, len(quorum.live))


def combine(view: HealthView, quorum: QuorumView) -> HealthView:
    """The leader's HealthView with each region's state from the quorum and its note among the reasons.

    A region the quorum calls healthy but this replica does not gets score 1.0: its figures (TTFT, queue)
    were measured from a vantage point that cannot reach it, and score() counts a missing figure as full
    headroom too. A frozen quorum keeps the counted states and adds the reason to every region: decide()
    has no per-region "hold", so turning them UNKNOWN would trigger the policy's when_all_down instead of
    freezing; the daemon checks `quorum.frozen` and applies nothing.
    """
    regions: dict[str, RegionHealth] = {}
    for name, health in view.regions.items():
        counted = quorum.regions.get(name)
        state = counted.state if counted is not None else State.UNKNOWN
        added = [counted.note if counted is not None else "quorum: no live replica has a verdict"]
        if quorum.frozen is not None:
            added.append(f"frozen: {quorum.frozen}")
        notes = tuple(n for n in added if n)
        if state is health.state and not notes:
            regions[name] = health
            continue
        score = health.score if health.state is state else 1.0 if state is State.HEALTHY else 0.0
        regions[name] = replace(health, state=state, score=score, reasons=health.reasons + notes)
    return HealthView(view.at, MappingProxyType(regions))
