"""Cost-aware routing: a service's cost_weight leans active-active weights toward the live regions that cost
less per 1M output tokens, within the TTFT target, never below cost_floor and never across any other rule."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.engine import decide
from controlplane.overrides import Override, OverrideAction
from controlplane.plan import GroupMode, RoutingPlan
from controlplane.policy import Policy
from probes.health import HealthView, State
from tests.builders import MODEL, REGIONS, all_healthy, artifacts, model_policy, policy, view

NOW = 1000.0
# policies' default health.ttft_target is 1 s: these are within it and over it.
FAST, SLOW = 0.4, 2.5


def weights(plan: RoutingPlan, group: str = "global", service: str = "chat") -> dict[str, int]:
    g = plan.group(service, group)
    assert g is not None
    return g.as_dict()


def reasons(plan: RoutingPlan, group: str = "global") -> dict[str, str]:
    g = plan.group("chat", group)
    assert g is not None
    return {w.region: w.reason for w in g.weights}


def with_ttft(health: HealthView, ttft: Mapping[str, float | None]) -> HealthView:
    """`health` with each region's time to first token as given (left-out regions keep theirs)."""
    regions = {r: dataclasses.replace(h, ttft_s=ttft.get(r, h.ttft_s)) for r, h in health.regions.items()}
    return HealthView(health.at, MappingProxyType(regions))


def test_half_weight_over_costs_1_and_2_splits_4_to_3():
    # m(eu-central) = (1 - 0.5) + 0.5 x 1/2 = 0.75, so the shares are 1 : 0.75 = 57.14 : 42.86.
    plan = decide(
        policy(cost_weight=0.5), all_healthy(), None, NOW, costs={"eu-west": 1.0, "eu-central": 2.0}
    )
    assert weights(plan, "eu") == {"eu-west": 57, "eu-central": 43}
    assert reasons(plan, "eu") == {
        "eu-west": "healthy: capacity 100 x score 1.00",
        "eu-central": "healthy: capacity 100 x score 1.00 x cost 0.75 ($2.00 vs cheapest $1.00 per 1M tokens)",
    }


def test_four_regions_lean_each_by_its_own_price():
    # w = 0.8, cheapest 1.30: m = 0.2 + 0.8 x 1.30 / c, i.e. 1, 0.2 + 0.8 x 1.3/2.6 = 0.6, 0.2 + 0.8 x 1.3/5.2
    # = 0.4 and that of 1.3/1.3 again: shares 1 : 0.6 : 0.4 : 1 of 3.0 = 33.3, 20, 13.3, 33.3.
    costs = {"us-east": 1.30, "us-west": 2.60, "eu-west": 5.20, "eu-central": 1.30}
    plan = decide(policy(cost_weight=0.8), all_healthy(), None, NOW, costs=costs)
    assert weights(plan) == {"us-east": 33, "us-west": 20, "eu-west": 13, "eu-central": 34}
    assert reasons(plan)["eu-west"].endswith("x cost 0.40 ($5.20 vs cheapest $1.30 per 1M tokens)")


def test_the_floor_holds_whatever_the_price_gap():
    # w = 1 would give the dearer region 1/100 of its weight; the floor keeps a quarter: 1 : 0.25 = 80 : 20.
    costs = {"eu-west": 1.0, "eu-central": 100.0}
    plan = decide(policy(cost_weight=1.0, cost_floor=0.25), all_healthy(), None, NOW, costs=costs)
    assert weights(plan, "eu") == {"eu-west": 80, "eu-central": 20}
    assert reasons(plan, "eu")["eu-central"].endswith(
        "x cost 0.25 ($100.00 vs cheapest $1.00 per 1M tokens; floor 0.25)"
    )


def test_a_cheap_region_over_the_ttft_target_draws_no_traffic_for_its_price():
    health = with_ttft(all_healthy(), {"eu-west": SLOW, "eu-central": FAST})
    plan = decide(policy(cost_weight=1.0), health, None, NOW, costs={"eu-west": 1.0, "eu-central": 2.0})
    # eu-west is weighed at the dearest live figure (2.00), the same as eu-central: no lean either way.
    assert weights(plan, "eu") == {"eu-west": 50, "eu-central": 50}


def test_a_slow_region_is_weighed_as_the_dearest_and_cannot_be_the_cheapest():
    # us-east is the cheapest but slow: cheapest within the target is us-west (2), dearest live is 4.
    # w = 0.5: m = 0.5 + 0.5 x 2/c: us-east (as 4) 0.75, us-west 1, eu-west (3) 0.833, eu-central (4) 0.75.
    health = with_ttft(all_healthy(), {"us-east": SLOW, "us-west": FAST, "eu-west": None})
    costs = {"us-east": 1.0, "us-west": 2.0, "eu-west": 3.0, "eu-central": 4.0}
    plan = decide(policy(cost_weight=0.5), health, None, NOW, costs=costs)
    assert weights(plan) == {"us-east": 22, "us-west": 30, "eu-west": 25, "eu-central": 23}
    assert reasons(plan)["us-east"].endswith(
        "x cost 0.75 (over TTFT target, weighed as the dearest: $4.00 vs cheapest $2.00 per 1M tokens)"
    )


def test_a_region_without_a_cost_figure_keeps_its_weight():
    # Only the US regions are priced: us-west leans to 0.75, the EU regions keep m = 1.
    plan = decide(policy(cost_weight=0.5), all_healthy(), None, NOW, costs={"us-east": 1.0, "us-west": 2.0})
    assert weights(plan) == {"us-east": 26, "us-west": 20, "eu-west": 27, "eu-central": 27}
    assert reasons(plan)["eu-west"] == "healthy: capacity 100 x score 1.00"


def test_no_lean_when_no_region_within_the_ttft_target_has_a_price():
    health = with_ttft(all_healthy(), {"eu-west": SLOW})
    costs = {"eu-west": 1.0}  # eu-central, the only fast one, has no figure: there is no cheapest
    assert decide(policy(cost_weight=1.0), health, None, NOW, costs=costs) == decide(
        policy(), health, None, NOW
    )


def test_a_pinned_weight_is_the_operators_word_and_is_not_leaned():
    pin = Override("eu-west", OverrideAction.WEIGHT, until=NOW + 60, weight=100)
    costs = {"eu-west": 2.0, "eu-central": 1.0}
    plan = decide(policy(cost_weight=0.5), all_healthy(), None, NOW, [pin], costs=costs)
    assert weights(plan, "eu") == {"eu-west": 50, "eu-central": 50}
    assert reasons(plan, "eu")["eu-west"] == "healthy: pinned weight 100 x score 1.00"


def test_cost_and_slow_start_both_scale_a_recovering_region():
    # eu-central recovered 15 s ago of a 30 s slow start: 0.75 x 50% = 0.375 against eu-west's 1: 72.7 : 27.3.
    health = view(dict.fromkeys(REGIONS, State.HEALTHY), at=NOW)
    regions = dict(health.regions)
    regions["eu-central"] = dataclasses.replace(regions["eu-central"], since=NOW - 15)
    health = HealthView(NOW, MappingProxyType(regions))
    plan = decide(policy(cost_weight=0.5), health, None, NOW, costs={"eu-west": 1.0, "eu-central": 2.0})
    assert weights(plan, "eu") == {"eu-west": 73, "eu-central": 27}
    assert reasons(plan, "eu")["eu-central"].endswith(
        "x cost 0.75 ($2.00 vs cheapest $1.00 per 1M tokens) x slow start 50%"
    )


def test_active_passive_keeps_its_priority_order_whatever_the_prices():
    # us-east is primary by priority and the dearest: it stays primary, the trickle stays where it was.
    p = policy(mode="active-passive", trickle=10, cost_weight=1.0)
    costs = {"us-east": 9.0, "us-west": 5.0, "eu-west": 1.0, "eu-central": 1.0}
    plan = decide(p, all_healthy(), None, NOW, costs=costs)
    assert plan == decide(p, all_healthy(), None, NOW)
    assert weights(plan) == {"us-east": 90, "us-west": 10, "eu-west": 0, "eu-central": 0}


def two_services(**second: Any) -> Policy:
    """policy(cost_weight=0.5) plus a service "batch" over the same regions with the fields `second`."""
    data = policy(cost_weight=0.5).model_dump(mode="json", exclude_none=True)
    data["services"].append(
        {**data["services"][0], "name": "batch", "dns_name": "batch.llm.internal", **second}
    )
    return Policy.model_validate(data)


def test_services_that_differ_only_in_their_cost_settings_are_weighed_apart():
    # The per-call memo shares one weighing between services alike: the cost settings must tell them apart.
    costs = {"eu-west": 1.0, "eu-central": 2.0}
    for second, expected in (
        ({"cost_weight": 0.0}, {"eu-west": 50, "eu-central": 50}),
        ({"cost_weight": 1.0, "cost_floor": 0.9}, {"eu-west": 53, "eu-central": 47}),
    ):
        plan = decide(two_services(**second), all_healthy(), None, NOW, costs=costs)
        assert weights(plan, "eu") == {"eu-west": 57, "eu-central": 43}
        assert weights(plan, "eu", "batch") == expected


# Properties over any cost settings, prices, health and history.
states = st.sampled_from([State.HEALTHY, State.HEALTHY, State.HEALTHY, State.UNHEALTHY, State.UNKNOWN])
region_health = st.tuples(states, st.sampled_from([0.3, 1.0]), st.sampled_from([None, FAST, SLOW]))
healths = st.fixed_dictionaries({r: region_health for r in REGIONS})
prices = st.one_of(st.none(), st.floats(0, 50), st.sampled_from([0.0, 1.0, 2.0, 4.0]))
cost_maps = st.fixed_dictionaries({r: prices for r in REGIONS}).map(
    lambda c: {r: v for r, v in c.items() if v is not None}
)
lean = st.fixed_dictionaries(
    {
        "cost_weight": st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1)),
        "cost_floor": st.one_of(st.sampled_from([0.0, 0.25, 1.0]), st.floats(0, 1)),
        "mode": st.sampled_from(["active-active", "active-active", "active-passive"]),
        "when_all_down": st.sampled_from(["fail-open", "fail-closed", "freeze"]),
        "max_shift": st.integers(1, 100),
    }
)
verified = st.fixed_dictionaries({r: st.sampled_from(["v1", "v1", "v0", None]) for r in REGIONS})


def health_of(spec: Mapping[str, tuple[State, float, float | None]], at: float = NOW) -> HealthView:
    return with_ttft(
        view({r: (s, score) for r, (s, score, _) in spec.items()}, at=at),
        {r: ttft for r, (_, _, ttft) in spec.items()},
    )


@settings(max_examples=300, deadline=None)
@given(lean, cost_maps, st.lists(st.tuples(healths, verified), min_size=1, max_size=4))
def test_cost_never_bends_health_residency_or_the_weights_gate(service, costs, history):
    p = model_policy(jurisdictions=["EU", "US"], **service)
    previous: RoutingPlan | None = None
    for step, (spec, holds) in enumerate(history):
        t = NOW + step
        plan = decide(p, health_of(spec, t), previous, t, artifacts=artifacts(holds, t), costs=costs)
        for g in plan:
            group = p.client_group(g.group)
            total = sum(w.weight for w in g.weights)
            assert total == (0 if g.mode is GroupMode.FAIL_CLOSED else 100), g
            for w in g.weights:
                assert p.region(w.region).jurisdiction in group.allowed_jurisdictions, (
                    "residency is a hard rule"
                )
                if w.weight:
                    assert holds[w.region] == "v1", f"{w.region} lacks {MODEL} v1 yet got {w.weight}"
                    if g.mode is GroupMode.NORMAL:
                        assert spec[w.region][0] is State.HEALTHY, f"{w.region} is not healthy"
        previous = plan


@settings(max_examples=600, deadline=None)
@given(lean, cost_maps, healths)
def test_a_cheaper_region_never_gets_less_than_a_dearer_one_alike(service, costs, spec):
    p = policy(**{**service, "mode": "active-active"})
    plan = decide(p, health_of(spec), None, NOW, costs=costs)  # no previous plan: nothing damped

    def within(region: str) -> bool:
        ttft = spec[region][2]
        return ttft is None or ttft <= p.health.ttft_target

    for g in plan:
        got = g.as_dict()
        if g.mode is not GroupMode.NORMAL:
            continue
        for a, b in itertools.permutations([r for r in got if spec[r][0] is State.HEALTHY and r in costs], 2):
            # a is no dearer, no slower and scored the same as b.
            if costs[a] <= costs[b] and (within(a) or not within(b)) and spec[a][1] == spec[b][1]:
                # Equal exact shares round apart by a point at most, the alphabetically first taking it.
                assert got[a] >= got[b] - (1 if b < a else 0), (a, b, costs, spec, g)


@settings(max_examples=300, deadline=None)
@given(lean, cost_maps, st.lists(healths, min_size=1, max_size=4))
def test_weight_zero_or_no_costs_is_the_plan_without_the_feature(service, costs, history):
    leaning, blind = policy(**service), policy(**{**service, "cost_weight": 0.0})
    previous: RoutingPlan | None = None
    for step, spec in enumerate(history):
        t, health = NOW + step, health_of(spec, NOW + step)
        today = decide(blind, health, previous, t)
        assert decide(blind, health, previous, t, costs=costs) == today, "cost_weight 0 ignores prices"
        assert decide(leaning, health, previous, t, costs=None) == today, "no prices, no lean"
        previous = today
