"""Drills against a plane that is already running (staging), all real on loopback: a started demo stack plays
the staging plane, and the drill reaches it only as its file says, through its admin API, its DNS and its
regions' control URLs. The plane outlives every drill run against it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from chaos.demotarget import DemoTarget
from chaos.drill import RegionFault, RegionMode, RemoteTarget, parse_drill
from chaos.journal import FaultStarted, Journal, OverrideSample
from chaos.loopback import free_port
from chaos.remotetarget import StagingTarget
from chaos.runner import DrillRefused, run_drill, target_for
from chaos.simregion import FaultMode
from chaos.target import TargetError
from controlplane.policy import load_policy

pytestmark = pytest.mark.asyncio(loop_scope="module")
DRILL_BOUND = 240.0  # seconds: the drill takes well under a minute; this only turns a hang into a failure
TOKEN_ENV = "DRILL_STAGING_TOKEN"
REGIONS = ("us-east", "us-west", "eu-west", "eu-central")
OUTAGE = """\
name: staging-outage
target: {target}
steady_state:
  - dns_serves: {{group: global, regions: [us-east, us-west, eu-west, eu-central]}}
  - max_client_error_rate: 0.01
method:
{method}
expect:
  - leaves_dns: {{region: us-east, within: 5s}}
  - returns_to_dns: {{region: us-east, within: 20s}}
  - max_client_failures: 100
  - residency_violations: 0
"""
DOWN = "  - fault: {kind: region, region: us-east, mode: down, at: 0s, duration: 4s}"
DRAIN = "  - override: {region: us-west, action: drain, at: 0s, duration: 4s, reason: drill}"
PARTITION = "  - fault: {kind: network, region: us-east, mode: partition, at: 0s, duration: 4s}"


# One plane for the module, as a staging plane outlives the drills run against it (and a start costs seconds
# of a two-core runner): each test leaves it serving, which is what the tests check anyway.
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def plane() -> AsyncIterator[DemoTarget]:
    async with DemoTarget() as started:
        yield started


def remote_of(plane: DemoTarget) -> str:
    """The target a staging drill file would give for `plane`, as one line of YAML."""
    target = {
        "admin_api": plane.api,
        "dns": f"127.0.0.1:{plane.clients().dns[1]}",
        "token_env": TOKEN_ENV,
        "region_control": {r: plane.region(r).control_url for r in REGIONS},
        "policy": str(plane.state_dir / "policy.yaml"),
    }
    return json.dumps(target)


async def serving(plane: DemoTarget) -> bool:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"{plane.api}/readyz") as reply,
    ):
        return reply.status == 200


async def test_a_region_outage_drill_against_a_running_plane_passes_and_leaves_it_running(
    plane: DemoTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, plane.token)
    drill = parse_drill(OUTAGE.format(target=remote_of(plane), method=f"{DOWN}\n{DRAIN}"))
    target = target_for(drill)
    assert isinstance(target, StagingTarget)
    async with asyncio.timeout(DRILL_BOUND):
        outcome = await run_drill(drill, target, tmp_path)
    assert outcome.passed, (tmp_path / "summary.md").read_text(encoding="utf-8")
    journal = await asyncio.to_thread(Journal.load, tmp_path / "journal.json")
    assert [(e.kind, e.region) for e in journal.of(FaultStarted)] == [("region", "us-east")]
    # The override went through the plane's admin API with the token, and the drill saw it in force.
    assert any(("us-west", "drain") in o.overrides for o in journal.of(OverrideSample)), "no drain seen"
    # It was reached, never started: the plane it drilled still runs, and us-east serves again.
    assert plane.daemon_pid is not None and await serving(plane)
    assert plane.region("us-east").fault.mode is FaultMode.OK
    log = await asyncio.to_thread((tmp_path / "journal.json").read_text, encoding="utf-8")
    assert plane.token not in log
    # The plane was told how its drill went: its status (and status page) shows it.
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"{plane.api}/status") as reply,
    ):
        last = (await reply.json())["last_drill"]
    assert last["drill"] == drill.name and last["passed"] is True and last["report"] == str(tmp_path)
    assert {e["name"] for e in last["expectations"]} == {e.name for e in outcome.figures.expectations}


@pytest.mark.parametrize(
    ("method", "env", "policy", "expected"),
    [
        (PARTITION, True, True, "method.0.fault: a remote target takes only region faults, not network"),
        (DRAIN, False, True, f"method: the drill sets overrides, and ${TOKEN_ENV} holds no admin token"),
        (DOWN, True, False, "target.policy: a remote target needs the policy file its plane runs"),
    ],
    ids=["network-fault", "override-without-token", "no-policy"],
)
async def test_what_a_remote_drill_cannot_do_is_refused_before_anything_starts(
    method: str, env: bool, policy: bool, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens anywhere the file points: a refusal that tried to reach the plane would say so.
    port = free_port()
    target: dict[str, object] = {
        "admin_api": f"http://127.0.0.1:{port}",
        "dns": f"127.0.0.1:{port}",
        "token_env": TOKEN_ENV,
        "region_control": {r: f"http://127.0.0.1:{port}" for r in REGIONS},
    }
    if policy:
        target["policy"] = str(Path(__file__).parents[2] / "policies" / "demo.yaml")
    if env:
        monkeypatch.setenv(TOKEN_ENV, "any")
    else:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    drill = parse_drill(OUTAGE.format(target=json.dumps(target), method=method))
    with pytest.raises(DrillRefused) as refused:
        await run_drill(drill, target_for(drill), tmp_path / "report")
    assert any(p.startswith(expected) for p in refused.value.problems), refused.value.problems
    assert not (tmp_path / "report").exists()


async def test_a_wrong_token_fails_an_override_drill_before_anything_is_broken(
    plane: DemoTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "not-" + plane.token
    monkeypatch.setenv(TOKEN_ENV, wrong)
    drill = parse_drill(OUTAGE.format(target=remote_of(plane), method=f"{DOWN}\n{DRAIN}"))
    async with asyncio.timeout(DRILL_BOUND):
        with pytest.raises(TargetError) as failed:
            await run_drill(drill, target_for(drill), tmp_path)
    message = str(failed.value)
    assert f"refuses the admin token in ${TOKEN_ENV}" in message and "wrong bearer token" in message
    assert wrong not in message
    journal = await asyncio.to_thread(Journal.load, tmp_path / "journal.json")
    assert journal.of(FaultStarted) == []
    assert plane.region("us-east").fault.mode is FaultMode.OK


async def test_stop_mends_the_regions_it_broke_and_leaves_the_plane_running(plane: DemoTarget) -> None:
    remote = RemoteTarget.model_validate(json.loads(remote_of(plane)))
    staging = StagingTarget(remote, load_policy(plane.state_dir / "policy.yaml"), None)
    await staging.start()
    fault = RegionFault(kind="region", region="us-east", mode=RegionMode.DOWN, duration=120)
    await staging.inject(fault, 180.0)
    assert plane.region("us-east").fault.mode is FaultMode.DOWN
    await staging.stop()
    assert plane.region("us-east").fault.mode is FaultMode.OK
    assert plane.daemon_pid is not None and await serving(plane)
    await staging.stop()  # twice is harmless
