"""`controlplane apply`: one probe round, a decision, the diff against the live providers, then apply --
only when confirmed, and never past the safety gate unless forced."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.simregion import SimFleet
from controlplane.changes import Action
from controlplane.oneshot import OneShot, apply_once, plan_once
from controlplane.policy import load_policy
from controlplane.weights.sync import sync_model
from tests.integration.daemon_helpers import FULL, policy_data, write_policy
from tests.integration.test_cli import arun_cli
from tests.integration.test_daemon_weights import source_version, weights_policy


async def test_apply_with_yes_applies_and_leaves_the_plan_for_the_daemon(
    fleet: SimFleet, tmp_path: Path
) -> None:
    policy, state = tmp_path / "policy.yaml", tmp_path / "state"
    write_policy(policy, policy_data(fleet, dns_port=5999))
    result = await arun_cli("apply", "--policy", str(policy), "--state-dir", str(state), "--yes", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["applied"] == [{"provider": "memory", "applied": True, "error": None}]
    assert data["left_to_the_daemon"] == ["localdns"]  # its records live in the daemon's own server
    saved = json.loads((state / "state.json").read_text())
    assert {w["region"]: w["weight"] for w in saved["plan"]["groups"][0]["weights"]} == FULL["eu"]


async def test_apply_without_a_terminal_or_yes_applies_nothing(fleet: SimFleet, tmp_path: Path) -> None:
    policy, state = tmp_path / "policy.yaml", tmp_path / "state"
    write_policy(policy, policy_data(fleet))
    result = await arun_cli("apply", "--policy", str(policy), "--state-dir", str(state))
    assert result.code == 1
    assert "pass --yes" in result.err
    assert "memory: 6 change(s)" in result.out
    assert not (state / "state.json").exists()


async def test_a_declined_apply_sends_nothing(fleet: SimFleet, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write_policy(path, policy_data(fleet))
    seen: list[OneShot] = []

    async def decline(survey: OneShot) -> bool:
        seen.append(survey)
        return False

    survey, applied = await apply_once(load_policy(path), tmp_path / "state", decline)
    assert applied is None and seen == [survey]
    [memory] = survey.outcomes
    assert {c.action for c in memory.changes.changes} == {Action.CREATE} and len(memory.changes) == 6


async def test_a_one_shot_plan_gives_no_weight_to_a_region_without_the_weights(
    fleet: SimFleet, tmp_path: Path
) -> None:
    buckets = tmp_path / "buckets"
    source_version(buckets, "v1")
    path = tmp_path / "policy.yaml"
    write_policy(path, weights_policy(fleet, buckets))
    policy = load_policy(path)
    # Every region but us-west holds v1, synced before; us-west's bucket is empty.
    await sync_model(policy, policy.models[0], only_regions={"us-east", "eu-west", "eu-central"})
    survey = await plan_once(policy, tmp_path / "state")
    group = survey.plan.group("chat", "global")
    assert group is not None
    assert group.weight("us-west") == 0 and group.weight("us-east") > 0
    why = next(w.reason for w in group.weights if w.region == "us-west")
    assert "no verified weights" in why and "version v1" in why
