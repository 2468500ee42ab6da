"""Invariants of decide() over random policies, health sequences, step timings and overrides."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.engine import decide
from controlplane.overrides import Override, OverrideAction
from controlplane.plan import GroupMode, RoutingPlan
from probes.health import State
from tests.unit.builders import REGIONS, all_healthy, policy, view

NOW = 10_000.0
region_state = st.tuples(st.sampled_from(list(State)), st.floats(0.05, 1.0), st.floats(0, 40))
step = st.fixed_dictionaries({r: region_state for r in REGIONS})
# Seconds between decisions: the daemon steps on every verdict flip and override POST, so bursts of steps
# milliseconds apart are as real as the once-a-second tick.
gap = st.sampled_from([0.001, 0.013, 0.04, 0.2, 0.5, 0.99, 1.0, 3.0])
services = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["active-active", "active-passive"]),
        "max_shift": st.integers(1, 100),
        "trickle": st.integers(0, 50),
        "slow_start": st.sampled_from([0, 5, 30]),
        "when_all_down": st.sampled_from(["fail-open", "fail-closed", "freeze"]),
    }
)
drains = st.lists(st.tuples(st.integers(0, 5), st.sampled_from(list(REGIONS))), max_size=3)


def _view(states, t):
    v = view({r: (s, score) for r, (s, score, _) in states.items()}, at=t)
    # per-region recovery times, so slow start ramps differ between regions
    regions = {
        r: h.__class__(r, h.state, h.score, t - states[r][2] if states[r][2] else 0.0, ())
        for r, h in v.regions.items()
    }
    return type(v)(t, regions)


@settings(max_examples=300, deadline=None)
@given(services, st.lists(st.tuples(step, gap), min_size=1, max_size=8), drains)
def test_plan_invariants_hold_over_any_history(service, history, drain_steps):
    p = policy(**service)
    previous: RoutingPlan | None = None
    changed_at: dict[tuple[str, str], float] = {}  # when each group's weights last changed, seen from outside
    t = NOW
    for i, (states, dt) in enumerate(history):
        t += dt
        overrides = [Override(r, OverrideAction.DRAIN, until=t + 1) for (at, r) in drain_steps if at == i]
        plan = decide(p, _view(states, t), previous, t, overrides)
        for g in plan:
            group = p.client_group(g.group)
            total = sum(w.weight for w in g.weights)
            assert total in (0, 100), g
            assert (total == 0) == (g.mode is GroupMode.FAIL_CLOSED)
            assert all(0 <= w.weight <= 100 for w in g.weights)
            for w in g.weights:
                assert p.region(w.region).jurisdiction in group.allowed_jurisdictions, (
                    "residency is a hard rule"
                )
                if w.weight and g.mode is GroupMode.NORMAL:
                    assert states[w.region][0] is State.HEALTHY, "no weight on a region not known healthy"
            prev = previous.group(g.service, g.group) if previous else None
            key = (g.service, g.group)
            if prev is not None and prev.mode is GroupMode.NORMAL and g.mode is GroupMode.NORMAL:
                before = prev.as_dict()
                # max_shift points per second since the weights last changed, never more than max_shift
                allowed = math.floor(service["max_shift"] * min(1.0, t - changed_at[key]))
                # A dead region's weight goes to the live ones at once, on top of the allowance.
                freed = sum(before.get(r, 0) for r in before if states[r][0] is not State.HEALTHY)
                for w in g.weights:
                    moved = abs(w.weight - before.get(w.region, 0))
                    if states[w.region][0] is State.HEALTHY:
                        assert moved <= allowed + freed, (t, changed_at[key], before, g)
            if prev is None or prev.as_dict() != g.as_dict():
                changed_at[key] = t
            assert g.since == changed_at[key], "since is when the weights last changed"
        assert decide(p, _view(states, t), previous, t, overrides) == plan, "pure: same inputs, same plan"
        previous = plan


# Overrides on one region, in any order and with any ages: (action, created_at, weight or drain reason).
override_specs = st.lists(
    st.tuples(st.sampled_from(list(OverrideAction)), st.integers(0, 3), st.integers(0, 500)),
    min_size=1,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(override_specs, st.sampled_from([None, "chat"]))
def test_the_newest_override_of_each_action_decides(specs, scope):
    overrides = [
        Override(
            "us-east",
            action,
            until=NOW + 60,
            service=scope if i % 2 else None,
            weight=n if action is OverrideAction.WEIGHT else None,
            reason=f"#{i}",
            created_at=float(created),
        )
        for i, (action, created, n) in enumerate(specs)
    ]
    winners = []
    for action in OverrideAction:
        mine = [(o.created_at, i, o) for i, o in enumerate(overrides) if o.action is action]
        if mine:
            winners.append(max(mine, key=lambda x: (x[0], x[1]))[2])  # newest; equal ages: the later listed
    p = policy(max_shift=100)
    assert decide(p, all_healthy(), None, NOW, overrides) == decide(p, all_healthy(), None, NOW, winners)
