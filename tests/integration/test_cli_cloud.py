"""`controlplane plan` and `apply` against a live Route 53 zone (moto_server): apply writes it, and the next
plan diffs against what the zone really holds -- nothing to do until a region breaks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chaos.simregion import SimFleet
from tests.fakes.moto import route53_client
from tests.integration.daemon_helpers import fault, policy_data, write_policy
from tests.integration.test_cli import arun_cli

pytestmark = [pytest.mark.needs_binary("moto_server"), pytest.mark.usefixtures("aws_credentials")]
ZONE = "llm.test"
R53 = f"route53:{ZONE}"


def changes_of(result_out: str, provider: str) -> list[dict[str, Any]]:
    data = json.loads(result_out)
    [mine] = [c for c in data["changes"] if c["provider"] == provider]
    assert mine["error"] is None, mine["error"]
    return list(mine["changes"])


async def test_apply_writes_the_zone_and_plan_then_diffs_against_it(
    fleet: SimFleet, tmp_path: Path, moto: str, session: aiohttp.ClientSession
) -> None:
    route53_client(moto).create_hosted_zone(Name=ZONE, CallerReference="cli")
    data = policy_data(fleet)
    data["providers"]["route53"] = {"zone": ZONE, "endpoint_url": moto, "owner": "prod"}
    policy, state = tmp_path / "policy.yaml", tmp_path / "state"
    write_policy(policy, data)
    args = ("--policy", str(policy), "--state-dir", str(state), "--json")

    applied = await arun_cli("apply", *args, "--yes", within=60)
    assert applied.code == 0, applied.err
    assert {"provider": R53, "applied": True, "error": None} in json.loads(applied.out)["applied"]
    # Four global regions, two EU ones, and the service's layout (the geolocation tree it asks for).
    assert len(changes_of(applied.out, R53)) == 7

    steady = await arun_cli("plan", *args, within=60)
    assert steady.code == 0, steady.err
    assert changes_of(steady.out, R53) == []  # the live zone already holds the plan

    await fault(session, fleet["us-west"], mode="down")
    broken = await arun_cli("plan", *args, within=60)
    moved = {c["after"]["region"]: c["after"]["weight"] for c in changes_of(broken.out, R53)}
    assert moved["us-west"] == 0 and set(moved) <= {"us-east", "us-west", "eu-west", "eu-central"}
    # Weights moved, the layout did not: a failover never rewrites the geolocation tree.
