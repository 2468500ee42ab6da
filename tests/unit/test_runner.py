"""The drill runner against a small fake target (real sim regions and a real embedded DNS, a stand-in plane):
it breaks on schedule, watches, judges, and always rolls back, also when cancelled or when the target fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chaos.drill import RegionFault, parse_drill
from chaos.journal import ExpectationResult, FaultEnded, FaultStarted, Journal, SteadyState
from chaos.runner import DrillRefused, Timing, run_drill, schedule
from controlplane.errors import ControlPlaneError
from tests.fakes.drilltarget import FakeTarget

FAST = Timing(steady_window=0.6, steady_before=4.0, steady_after=4.0, stop_grace=0.5)
BOUND = 60.0  # no drill here should come near it; it only turns a hang into a failure

OUTAGE = """\
name: fake-outage
description: us-east stops answering for 1.5 s
steady_state:
  - dns_serves: {group: global, regions: [us-east, us-west, eu-west, eu-central]}
  - dns_serves: {group: eu, regions: [eu-west, eu-central]}
method:
  - fault: {kind: region, region: us-east, mode: down, at: 0.2s, duration: 1.5s}
expect:
  - leaves_dns: {region: us-east, within: 3s}
  - returns_to_dns: {region: us-east, within: 5s}
  - residency_violations: 0
"""


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


async def drill(text: str, target: FakeTarget, tmp_path: Path) -> tuple[bool, Journal]:
    async with asyncio.timeout(BOUND):
        outcome = await run_drill(parse_drill(text), target, tmp_path, timing=FAST)
    return outcome.passed, Journal.load(tmp_path / "journal.json")


async def test_a_plane_that_follows_the_fault_passes_and_the_report_is_written(tmp_path: Path) -> None:
    target = FakeTarget(lag=0.3)
    passed, journal = await drill(OUTAGE, target, tmp_path)
    results = {r.name: r for r in journal.of(ExpectationResult)}
    assert passed, [r.message for r in results.values()]
    left = results["leaves_dns"].observed
    assert isinstance(left, float) and left >= 0.3  # never before the plane's lag
    assert [s.held for s in journal.of(SteadyState)] == [True, True]
    (fault, ttl), *_ = target.injected
    assert isinstance(fault, RegionFault) and ttl == pytest.approx(1.5 + FAST.ttl_margin)
    assert [type(e) for e in journal.events if isinstance(e, FaultStarted | FaultEnded)] == [
        FaultStarted,
        FaultEnded,
    ]
    assert target.broken_at_stop == {} and target.stopped
    assert {"journal.json", "summary.md", "timeline.png"} <= files(tmp_path)
    assert "# Drill fake-outage: PASSED" in (tmp_path / "summary.md").read_text()


async def test_a_blind_plane_fails_the_drill_and_still_everything_is_mended(tmp_path: Path) -> None:
    target = FakeTarget(blind=True)
    passed, journal = await drill(OUTAGE, target, tmp_path)
    assert not passed
    results = {r.name: r for r in journal.of(ExpectationResult)}
    assert not results["leaves_dns"].passed and results["leaves_dns"].message.startswith("us-east never left")
    assert target.broken_at_stop == {}
    assert "FAILED" in (tmp_path / "summary.md").read_text()


async def test_a_steady_state_that_does_not_hold_breaks_nothing(tmp_path: Path) -> None:
    target = FakeTarget(broken_from_start=frozenset({"us-east"}))
    passed, journal = await drill(OUTAGE, target, tmp_path)
    assert not passed
    (before,) = journal.of(SteadyState)
    assert before.phase == "before" and not before.held and "saw" in before.details[0]
    assert target.injected == [] and journal.of(ExpectationResult) == []


async def test_cancelled_mid_fault_the_runner_rolls_back_before_stopping_the_target(tmp_path: Path) -> None:
    target = FakeTarget()
    long = OUTAGE.replace("duration: 1.5s", "duration: 60s").replace("within: 5s", "within: 10s")
    task = asyncio.create_task(run_drill(parse_drill(long), target, tmp_path, timing=FAST))
    async with asyncio.timeout(BOUND):
        await target.broke.wait()
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Broken with a 65 s time-to-live, so only the runner's clear can have mended it before the stop.
    assert target.broken_at_stop == {} and target.stopped
    assert [f.kind for f in target.cleared] == ["region"]
    journal = Journal.load(tmp_path / "journal.json")
    assert [e.fault for e in journal.of(FaultEnded)] == ["f1"]


async def test_a_fault_the_target_cannot_inject_ends_the_drill_with_the_others_cleared(
    tmp_path: Path,
) -> None:
    target = FakeTarget(refuse_inject=frozenset({"us-west"}))
    text = OUTAGE.replace(
        "method:\n",
        "method:\n  - fault: {kind: region, region: us-west, mode: down, at: 0.6s, duration: 5s}\n",
    )
    with pytest.raises(ControlPlaneError, match="refused the fault"):
        await drill(text, target, tmp_path)
    assert target.broken_at_stop == {}
    journal = Journal.load(tmp_path / "journal.json")
    # The refused fault counts as started: it may have broken something before failing, so it is cleared too.
    assert (
        {e.fault for e in journal.of(FaultEnded)}
        == {e.fault for e in journal.of(FaultStarted)}
        == {"f1", "f2"}
    )


async def test_a_drill_the_target_cannot_run_is_refused_before_anything_starts(tmp_path: Path) -> None:
    target = FakeTarget()
    text = OUTAGE.replace(
        "method:\n",
        "method:\n  - fault: {kind: network, region: us-west, mode: partition, duration: 1s}\n"
        "  - fault: {kind: region, region: ap-south, mode: down, duration: 1s}\n",
    )
    with pytest.raises(DrillRefused) as refused:
        await run_drill(parse_drill(text), target, tmp_path, timing=FAST)
    assert refused.value.problems == [
        "method.1.fault.region: 'ap-south' is not a region of the target's policy "
        "(us-east, us-west, eu-west, eu-central)",
        "method.0.fault: the fake target has no means for a network fault",
    ]
    assert refused.value.exit_code == 2
    assert not target.started and files(tmp_path) == set()


async def test_a_dry_run_gives_the_schedule_and_starts_nothing(tmp_path: Path) -> None:
    target = FakeTarget()
    outcome = await run_drill(parse_drill(OUTAGE), target, tmp_path, dry_run=True)
    assert outcome.schedule == tuple(schedule(parse_drill(OUTAGE)))
    assert outcome.schedule == (
        "   0.20 s  inject region fault region=us-east mode=down",
        "   1.70 s  clear region fault region=us-east mode=down",
    )
    assert not target.started and not outcome.passed and outcome.verdict().endswith("[dry run]")
    assert files(tmp_path) == set()
