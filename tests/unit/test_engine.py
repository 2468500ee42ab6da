from __future__ import annotations

import pytest

from controlplane.engine import decide, largest_remainder
from controlplane.overrides import Override, OverrideAction
from controlplane.plan import GroupMode, RoutingPlan
from controlplane.policy import Policy
from probes.health import State
from tests.unit.builders import REGIONS, all_healthy, policy, view

H, U, K = State.HEALTHY, State.UNHEALTHY, State.UNKNOWN
NOW = 1000.0


def weights(plan, group="global"):
    g = plan.group("chat", group)
    assert g is not None
    return g.as_dict()


@pytest.mark.parametrize(
    ("states", "expected_global", "expected_eu"),
    [
        (
            (H, H, H, H),
            {"us-east": 25, "us-west": 25, "eu-west": 25, "eu-central": 25},
            {"eu-west": 50, "eu-central": 50},
        ),
        (
            (U, H, H, H),
            {"us-east": 0, "us-west": 33, "eu-west": 33, "eu-central": 34},
            {"eu-west": 50, "eu-central": 50},
        ),
        (
            (H, H, U, K),
            {"us-east": 50, "us-west": 50, "eu-west": 0, "eu-central": 0},
            {"eu-west": 0, "eu-central": 0},
        ),
        (
            (H, H, H, U),
            {"us-east": 33, "us-west": 33, "eu-west": 34, "eu-central": 0},
            {"eu-west": 100, "eu-central": 0},
        ),
    ],
)
def test_active_active_table(states, expected_global, expected_eu):
    plan = decide(policy(), view(dict(zip(REGIONS, states, strict=True))), None, NOW)
    assert weights(plan) == expected_global
    assert weights(plan, "eu") == expected_eu


def test_eu_fails_closed_rather_than_leave_eu_when_both_eu_regions_die():
    plan = decide(
        policy(when_all_down="fail-open"),
        view({"us-east": H, "us-west": H, "eu-west": U, "eu-central": U}),
        None,
        NOW,
    )
    eu = plan.group("chat", "eu")
    assert eu is not None and eu.mode is GroupMode.FAIL_OPEN
    assert set(eu.as_dict()) == {"eu-west", "eu-central"}, "fail-open stays inside the jurisdiction"
    closed = decide(policy(), view({"us-east": H, "us-west": H, "eu-west": U, "eu-central": U}), None, NOW)
    eu = closed.group("chat", "eu")
    assert eu is not None and eu.mode is GroupMode.FAIL_CLOSED and sum(eu.as_dict().values()) == 0


def test_capacity_and_score_weight_active_active():
    p = policy()
    plan = decide(
        p, view({"us-east": (H, 1.0), "us-west": (H, 0.5), "eu-west": U, "eu-central": U}), None, NOW
    )
    assert weights(plan) == {"us-east": 67, "us-west": 33, "eu-west": 0, "eu-central": 0}


def test_damping_bounds_a_live_shift_but_a_dead_region_leaves_at_once():
    p = policy(max_shift=10)
    first = decide(
        p, view({"us-east": (H, 1.0), "us-west": (H, 1.0), "eu-west": U, "eu-central": U}), None, NOW
    )
    assert weights(first)["us-east"] == 50
    slow = decide(
        p, view({"us-east": (H, 0.1), "us-west": (H, 1.0), "eu-west": U, "eu-central": U}), first, NOW + 1
    )
    assert weights(slow)["us-east"] == 40 and weights(slow)["us-west"] == 60
    assert "damped" in next(w.reason for w in slow.group("chat", "global").weights if w.region == "us-east")
    dead = decide(p, view({"us-east": U, "us-west": (H, 1.0), "eu-west": U, "eu-central": U}), slow, NOW + 2)
    assert weights(dead) == {"us-east": 0, "us-west": 100, "eu-west": 0, "eu-central": 0}


def test_slow_start_ramps_a_recovered_region():
    p = policy(slow_start=10, max_shift=100)
    states = {"us-east": H, "us-west": H, "eu-west": U, "eu-central": U}
    recovered = view(states, since=NOW - 1)  # both recovered 1 s ago: equal ramps cancel out
    assert weights(decide(p, recovered, None, NOW))["us-east"] == 50
    mixed = view(states)
    mixed = type(mixed)(
        mixed.at,
        {**mixed.regions, "us-east": mixed.regions["us-east"].__class__("us-east", H, 1.0, NOW - 2.5, ())},
    )
    w = weights(decide(p, mixed, None, NOW))
    assert w["us-east"] == 20 and w["us-west"] == 80  # 25 % ramp: 25 / (25 + 100)


def test_active_passive_priority_and_trickle():
    p = policy(mode="active-passive", trickle=5)
    plan = decide(p, all_healthy(), None, NOW)
    assert weights(plan) == {"us-east": 95, "us-west": 5, "eu-west": 0, "eu-central": 0}
    assert weights(plan, "eu") == {"eu-west": 95, "eu-central": 5}
    failed = decide(p, view({"us-east": U, "us-west": H, "eu-west": H, "eu-central": H}), plan, NOW + 1)
    assert weights(failed) == {"us-east": 0, "us-west": 95, "eu-west": 5, "eu-central": 0}


def test_drain_override_moves_traffic_away_and_expires():
    p = policy(max_shift=100)
    drain = Override("us-east", OverrideAction.DRAIN, until=NOW + 60, reason="maintenance")
    plan = decide(p, all_healthy(), None, NOW, [drain])
    assert weights(plan)["us-east"] == 0
    assert "maintenance" in next(
        w.reason for w in plan.group("chat", "global").weights if w.region == "us-east"
    )
    assert weights(decide(p, all_healthy(), None, NOW + 61, [drain]))["us-east"] == 25


def test_drain_of_the_last_healthy_region_is_refused():
    drains = [Override(r, OverrideAction.DRAIN, until=NOW + 60) for r in ("eu-west", "eu-central")]
    plan = decide(policy(), all_healthy(), None, NOW, drains)
    assert weights(plan, "eu") == {"eu-west": 50, "eu-central": 50}
    assert "drain refused" in plan.group("chat", "eu").weights[0].reason


def test_weight_override_replaces_capacity():
    pin = Override("us-east", OverrideAction.WEIGHT, until=NOW + 60, weight=300)
    w = weights(decide(policy(), all_healthy(), None, NOW, [pin]))
    assert w == {"us-east": 50, "us-west": 16, "eu-west": 17, "eu-central": 17}


def test_freeze_keeps_last_good_and_fail_closed_without_one():
    p = policy(when_all_down="freeze")
    good = decide(p, all_healthy(), None, NOW)
    down = view(dict.fromkeys(REGIONS, U))
    frozen = decide(p, down, good, NOW + 1)
    assert frozen.group("chat", "global").mode is GroupMode.FROZEN
    assert weights(frozen) == weights(good)
    cold = decide(p, down, None, NOW)
    assert cold.group("chat", "global").mode is GroupMode.FAIL_CLOSED


def test_decide_is_deterministic():
    p = policy()
    v = view({"us-east": (H, 0.3), "us-west": H, "eu-west": K, "eu-central": (H, 0.7)})
    assert decide(p, v, None, NOW) == decide(p, v, None, NOW)


@pytest.mark.parametrize(
    ("shares", "expected"),
    [
        ({"a": 33.3, "b": 33.3, "c": 33.4}, {"a": 33, "b": 33, "c": 34}),
        ({"a": 100.0}, {"a": 100}),
        ({"a": 50.5, "b": 49.5}, {"a": 51, "b": 49}),
    ],
)
def test_largest_remainder(shares, expected):
    # Ties go to the alphabetically first region, so a plan never flips between equal choices.
    assert largest_remainder(shares) == expected


def test_services_sharing_regions_are_weighed_alike_but_never_conflated():
    # decide() weighs identical (settings, regions, last weights) once per call; differing settings must not
    # share an answer.
    base = policy(max_shift=10)
    data = base.model_dump(mode="json")
    data["services"] = [
        {**data["services"][0], "name": "a", "dns_name": "a.llm.internal", "max_shift": 10},
        {**data["services"][0], "name": "b", "dns_name": "b.llm.internal", "max_shift": 10},
        {**data["services"][0], "name": "c", "dns_name": "c.llm.internal", "max_shift": 40},
        {
            **data["services"][0],
            "name": "d",
            "dns_name": "d.llm.internal",
            "max_shift": 10,
            "mode": "active-passive",
        },
    ]
    p = Policy.model_validate(data)
    first = decide(
        p, view({"us-east": (H, 1.0), "us-west": (H, 1.0), "eu-west": U, "eu-central": U}), None, NOW
    )
    step = decide(
        p, view({"us-east": (H, 0.1), "us-west": (H, 1.0), "eu-west": U, "eu-central": U}), first, NOW + 1
    )
    w = {s: step.group(s, "global").as_dict() for s in "abcd"}
    assert w["a"] == w["b"] == {"us-east": 40, "us-west": 60, "eu-west": 0, "eu-central": 0}
    assert w["c"]["us-east"] == 10, "a wider max_shift moves further"
    assert w["d"] == {"us-east": 100, "us-west": 0, "eu-west": 0, "eu-central": 0}, (
        "active-passive keeps the primary"
    )
    for s in "abcd":
        assert decide(
            Policy.model_validate(
                {**data, "services": [next(x for x in data["services"] if x["name"] == s)]}
            ),
            view({"us-east": (H, 0.1), "us-west": (H, 1.0), "eu-west": U, "eu-central": U}),
            first,
            NOW + 1,
        ).group(s, "global") == step.group(s, "global"), "same as deciding alone"


def _pin(weight, created_at, service=None):
    return Override(
        "us-east",
        OverrideAction.WEIGHT,
        until=NOW + 60,
        weight=weight,
        created_at=created_at,
        service=service,
    )


def _drain(created_at, reason):
    return Override("us-east", OverrideAction.DRAIN, until=NOW + 60, created_at=created_at, reason=reason)


@pytest.mark.parametrize(
    ("overrides", "us_east", "reason_has"),
    [
        ([_pin(300, 1.0), _pin(100, 2.0)], 25, "pinned weight 100"),  # newer listed last
        ([_pin(100, 2.0), _pin(300, 1.0)], 25, "pinned weight 100"),  # newer listed first
        ([_pin(300, 1.0), _pin(100, 1.0)], 25, "pinned weight 100"),  # same age: the later listed
        ([_pin(100, 1.0, service="chat"), _pin(300, 2.0)], 50, "pinned weight 300"),  # age, not scope
        ([_drain(1.0, "old"), _drain(2.0, "new")], 0, "(new)"),
        # A drain outranks a weight override whatever their ages; the reason says the weight waits.
        ([_drain(1.0, "maintenance"), _pin(300, 2.0)], 0, "weight override 300 waits for the drain"),
        ([_pin(300, 2.0), _drain(1.0, "maintenance")], 0, "maintenance"),
    ],
)
def test_the_newest_override_wins(overrides, us_east, reason_has):
    plan = decide(policy(), all_healthy(), None, NOW, overrides)
    assert weights(plan)["us-east"] == us_east
    assert reason_has in next(w.reason for w in plan.group("chat", "global").weights if w.region == "us-east")


def _pinned(plan, weight, t):
    pin = Override("us-east", OverrideAction.WEIGHT, until=t + 60, weight=weight)
    return decide(policy(max_shift=25), all_healthy(), plan, t, [pin])


def test_damping_counts_seconds_not_steps():
    # Issue 5: two override POSTs 13 ms apart moved a region 31 -> 56 -> 81 % with max_shift 25.
    start = decide(policy(max_shift=25), all_healthy(), None, NOW)
    assert weights(start)["us-east"] == 25 and start.group("chat", "global").since == NOW
    first = _pinned(start, 1_000_000, NOW + 1)
    assert weights(first)["us-east"] == 50, "a step after a calm second moves max_shift"
    assert first.group("chat", "global").since == NOW + 1
    burst = _pinned(first, 1_000_000, NOW + 1.013)
    assert weights(burst)["us-east"] == 50, "13 ms later: 0.3 points, less than one, so nothing moves"
    assert burst.group("chat", "global").since == NOW + 1, "unchanged weights keep their since"
    half = _pinned(burst, 1_000_000, NOW + 1.5)
    assert weights(half)["us-east"] == 62, "half a second since the last change: half of max_shift"
    assert "max shift 25 points/s" in half.group("chat", "global").weights[0].reason
    down = view({"us-east": U, "us-west": H, "eu-west": H, "eu-central": H})
    dead = decide(policy(max_shift=25), down, half, NOW + 1.501)
    assert weights(dead)["us-east"] == 0, "a dead region leaves at once, however recent the last change"


def test_a_burst_of_steps_moves_no_faster_than_max_shift_per_second():
    plan = decide(policy(max_shift=25), all_healthy(), None, NOW)
    for i in range(1, 77):  # one second of steps 13 ms apart
        plan = _pinned(plan, 1_000_000, NOW + i * 0.013)
    assert 25 + 10 <= weights(plan)["us-east"] <= 25 + 25, "keeps moving, never faster than max_shift/s"


def test_a_clock_stepped_back_does_not_freeze_routing():
    start = decide(policy(max_shift=25), all_healthy(), None, NOW + 3600)
    back = _pinned(start, 1_000_000, NOW)
    assert weights(back)["us-east"] == 50, "one step of max_shift, not an hour without movement"
    assert back.group("chat", "global").since == NOW


def test_since_survives_json_and_an_old_file_without_it_counts_from_generated_at():
    plan = _pinned(decide(policy(), all_healthy(), None, NOW), 300, NOW + 1)
    assert RoutingPlan.from_json(plan.to_json()) == plan
    old_file = plan.to_json()
    for g in old_file["groups"]:
        del g["since"]
    old_file["generated_at"] = NOW + 5
    assert {g.since for g in RoutingPlan.from_json(old_file)} == {NOW + 5}


def test_a_group_left_without_regions_counts_its_change_once():
    before = decide(policy(), all_healthy(), None, NOW)
    us_only = policy(regions=["us-east", "us-west"])
    emptied = decide(us_only, all_healthy(), before, NOW + 1)
    eu = emptied.group("chat", "eu")
    assert eu is not None and eu.mode is GroupMode.FAIL_CLOSED and eu.since == NOW + 1, "traffic stopped"
    assert decide(us_only, all_healthy(), emptied, NOW + 2).group("chat", "eu").since == NOW + 1
