"""The daemon's last line of defence: a plan the residency gate refuses reaches no provider.

The engine never sends a client group outside its jurisdictions, so the test makes it: the real decide()
runs and its plan then gets a share of the EU group sent to a US region, as an engine bug would.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chaos.simregion import SimFleet
from controlplane.engine import decide as real_decide
from controlplane.plan import RouteWeight, RoutingPlan
from tests.conftest import until
from tests.integration.daemon_helpers import FULL, policy_data, running_plane, write_policy

VIOLATION = "chat/eu: 10% to us-east: jurisdiction US not in ['EU']"
EU_WEST_DRAINED = {
    "global": {"us-east": 50, "us-west": 37, "eu-west": 0, "eu-central": 13},
    "eu": {"eu-west": 0, "eu-central": 100},
}


async def test_a_plan_the_residency_gate_refuses_changes_nothing(
    fleet: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buggy = threading.Event()  # decide() runs in a worker thread

    def decide(*args: Any) -> RoutingPlan:
        plan = real_decide(*args)
        if not buggy.is_set():
            return plan
        leak = RouteWeight("us-east", 10, "an engine bug")
        return replace(
            plan,
            groups=tuple(replace(g, weights=(*g.weights, leak)) if g.group == "eu" else g for g in plan),
        )

    monkeypatch.setattr("controlplane.daemon.decide", decide)
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled(FULL)
        last_plan = plane.daemon.plan
        buggy.set()
        # A drain the engine acts on: every plan from now on differs from the last one, and is refused.
        status, _ = await plane.request(
            "POST", "/overrides", headers=plane.auth(), json={"region": "eu-west", "duration": 60}
        )
        assert status == 201
        await until(lambda: len(plane.events("plan_refused")) >= 3, what="plans to be refused")

        assert plane.daemon.plan is last_plan, "the refused plan is not kept as the last plan"
        assert await plane.held("global") == FULL["global"]
        assert await plane.held("eu") == FULL["eu"]
        refused = plane.events("plan_refused")
        assert all(line["violations"] == [VIOLATION] for line in refused)
        assert not [
            line for line in plane.events("plan_changed") if line["after"]["chat"]["eu"] != FULL["eu"]
        ]
        metrics = await plane.metrics()
        # Counted before it is audited, so the count may run ahead of the lines read above, never behind.
        blocks = metrics[("controlplane_residency_blocks_total", frozenset())]
        assert len(refused) <= blocks <= plane.daemon.counters.residency_blocks

        # The gate refused this plan and nothing else: once the engine is right again, the drain lands.
        buggy.clear()
        await plane.settled(EU_WEST_DRAINED)
