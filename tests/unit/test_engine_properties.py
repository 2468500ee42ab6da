"""Invariants of decide() over random policies, health sequences and overrides."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.engine import decide
from controlplane.overrides import Override, OverrideAction
from controlplane.plan import GroupMode, RoutingPlan
from probes.health import State
from tests.unit.builders import REGIONS, policy, view

NOW = 10_000.0
region_state = st.tuples(st.sampled_from(list(State)), st.floats(0.05, 1.0), st.floats(0, 40))
step = st.fixed_dictionaries({r: region_state for r in REGIONS})
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
@given(services, st.lists(step, min_size=1, max_size=8), drains)
def test_plan_invariants_hold_over_any_history(service, history, drain_steps):
    p = policy(**service)
    previous: RoutingPlan | None = None
    for i, states in enumerate(history):
        t = NOW + i
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
            if prev is not None and prev.mode is GroupMode.NORMAL and g.mode is GroupMode.NORMAL:
                before = prev.as_dict()
                someone_died = any(before.get(r, 0) and states[r][0] is not State.HEALTHY for r in before)
                if not someone_died:
                    for w in g.weights:
                        assert abs(w.weight - before.get(w.region, 0)) <= service["max_shift"], (before, g)
        assert decide(p, _view(states, t), previous, t, overrides) == plan, "pure: same inputs, same plan"
        previous = plan
