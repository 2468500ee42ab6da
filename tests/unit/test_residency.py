from __future__ import annotations

from controlplane.engine import decide
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.residency import check_plan
from probes.health import State
from tests.builders import REGIONS, policy, view


def test_engine_plans_pass_the_gate_in_every_all_down_mode():
    for mode in ("fail-open", "fail-closed", "freeze"):
        p = policy(when_all_down=mode)
        for states in ({"eu-west": State.UNHEALTHY, "eu-central": State.UNHEALTHY}, {}):
            v = view({**dict.fromkeys(REGIONS, State.HEALTHY), **states})
            assert check_plan(p, decide(p, v, None, 1.0)) == ()


def test_gate_catches_a_plan_sending_eu_clients_to_the_us():
    bad = RoutingPlan(
        1.0,
        (
            GroupPlan(
                "chat",
                "eu",
                GroupMode.NORMAL,
                (RouteWeight("eu-west", 60, ""), RouteWeight("us-east", 40, "")),
            ),
        ),
    )
    (violation,) = check_plan(policy(), bad)
    assert violation.region == "us-east" and "jurisdiction US" in str(violation)


def test_gate_catches_unknown_regions_and_services():
    bad = RoutingPlan(1.0, (GroupPlan("chat", "global", GroupMode.NORMAL, (RouteWeight("mars", 100, ""),)),))
    assert "not in the policy" in str(check_plan(policy(), bad)[0])
    zero = RoutingPlan(1.0, (GroupPlan("chat", "eu", GroupMode.NORMAL, (RouteWeight("us-east", 0, ""),)),))
    assert check_plan(policy(), zero) == (), "a zero weight sends nobody anywhere"
