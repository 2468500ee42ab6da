"""A drill's journal and its report: measurements from hand-built journals, summary.md and timeline.png."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle, StepPatch

from chaos.journal import (
    ClientBucket,
    DnsSample,
    Event,
    ExpectationResult,
    FaultEnded,
    FaultStarted,
    HealthSample,
    Journal,
    LoadTotals,
    PlanSample,
    RegionHealth,
    SteadyState,
    client_events,
)
from chaos.loadgen import GroupLoad, Ledger, LoadSettings, Outcome, Reason, Target
from chaos.report import measure, render_combined, render_summary, rerender, timeline, write_report

EAST, WEST = "us-east", "us-west"
FAULT = {"mode": "down", "at": "10s", "duration": "10s"}


def _health(at: float, east: str) -> HealthSample:
    return HealthSample(
        at, {EAST: RegionHealth(east, 0.0 if east != "healthy" else 1.0), WEST: RegionHealth("healthy", 1.0)}
    )


def outage(detected: bool = True) -> Journal:
    """us-east down from 10 s to 20 s: seen unhealthy at 11.5, weight 0 at 12, out of DNS at 13.25, last
    client request to it in the bucket [13, 13.5), back in DNS at 24.25. With `detected` false the probes
    never notice and nothing moves."""
    journal = Journal("region-outage", "us-east stops answering")
    journal.append(SteadyState(0.0, "before", True, ("dns_serves global: us-east, us-west",)))
    journal.append(FaultStarted(10.0, "f1", "region", EAST, FAULT))
    for second in range(30):
        # Unknown is not healthy either: the first probe after the fault only timed out.
        state = (
            "healthy" if not detected or not 11 <= second < 23 else "unknown" if second == 11 else "unhealthy"
        )
        journal.append(_health(second + 0.5, state))
        # The eu group never has us-east: weight 0 and no answer there all along.
        east = 0 if detected and 12 <= second < 24 else 25 if detected and second == 24 else 50
        weights = {"global": {EAST: east, WEST: 100 - east}, "eu": {WEST: 100}}
        journal.append(PlanSample(float(second), "chat", weights))
        offered = {EAST, WEST} if not detected or not 13 <= second < 24 else {WEST}
        journal.append(DnsSample(second + 0.25, {"global": frozenset(offered), "eu": frozenset({WEST})}))
        if second == 20:
            journal.append(FaultEnded(20.0, "f1", "region", EAST, FAULT))
    for tenth in range(0, 300, 5):
        at = tenth / 10
        reaches_east = not detected or not 13.5 <= at < 24.5
        failed = 1 if 10 <= at < 13.5 else 0
        if reaches_east:
            journal.append(ClientBucket(at, 0.5, EAST, 2 - failed, failed))
        journal.append(ClientBucket(at, 0.5, WEST, 2, 0))
    journal.append(LoadTotals(30.0, {EAST: 100, WEST: 120}, {EAST: {"connect_refused": 7}}, 0, 0))
    journal.append(
        ExpectationResult(30.0, "leaves_dns", {"region": EAST, "within": "2s"}, False, 3.25, "3.25 s > 2 s")
    )
    journal.append(ExpectationResult(30.0, "max_client_failures", {"max": 20}, True, 7))
    journal.append(SteadyState(31.0, "after", True))
    return journal


def test_a_clean_outage_and_recovery_is_measured_exactly() -> None:
    figures = measure(outage())
    (fault,) = figures.faults
    assert (fault.fault, fault.region, fault.start, fault.end) == ("f1", EAST, 10.0, 20.0)
    assert fault.detect == pytest.approx(1.5)
    assert fault.decide == pytest.approx(2.0)
    assert fault.apply == pytest.approx(3.25)
    assert fault.clients_stopped == pytest.approx(3.5)
    assert fault.recovery == pytest.approx(4.25)
    assert figures.client_failures == 7
    assert figures.failures == {EAST: {"connect_refused": 7}}
    assert figures.residency_violations == 0
    assert figures.flaps == {EAST: 0, WEST: 0}  # out at 12, back at 24: a failover, not a flap
    assert figures.steady_state_back is True
    assert not figures.passed  # leaves_dns did not hold


def test_a_drill_passes_only_when_it_expected_something_and_all_held() -> None:
    ok = ExpectationResult(1.0, "max_flaps", {"max": 0}, True, 0)
    held, broken = SteadyState(0.0, "before", True), SteadyState(2.0, "after", False)
    for events, passed in [([ok, held], True), ([held], False), ([ok, held, broken], False)]:
        journal = Journal("d")
        journal.extend(events)
        assert measure(journal).passed is passed, events


def test_a_fault_never_detected_is_reported_as_such() -> None:
    figures = measure(outage(detected=False))
    (fault,) = figures.faults
    assert (fault.detect, fault.decide, fault.apply) == (None, None, None)
    assert fault.clients_stopped == pytest.approx(10.0)  # clients reached it until the fault ended
    assert fault.recovery == pytest.approx(0.25)  # it never left DNS, so the first sample after has it
    summary = render_summary(figures)
    row = next(line for line in summary.splitlines() if line.startswith("| f1 |"))
    assert "not detected" in row and "not decided" in row and "not applied" in row


def two_faults() -> Journal:
    """us-east slow from 0 s to 5 s, never noticed; down from 10 s, unhealthy at 11 s."""
    journal = Journal("two-faults")
    journal.append(FaultStarted(0.0, "a", "region", EAST, {"mode": "slow"}))
    journal.append(FaultEnded(5.0, "a", "region", EAST, {"mode": "slow"}))
    journal.append(FaultStarted(10.0, "b", "region", EAST, FAULT))
    journal.append(_health(11.0, "unhealthy"))
    return journal


def test_a_second_fault_on_the_region_does_not_lend_its_detection_to_the_first() -> None:
    first, second = measure(two_faults()).faults
    assert first.detect is None
    assert second.detect == pytest.approx(1.0)


def _plans(east: list[int], every: float = 1.0) -> list[Event]:
    return [
        PlanSample(i * every, "chat", {"global": {EAST: w, WEST: 100 - w}, "eu": {WEST: 100}})
        for i, w in enumerate(east)
    ]


def test_a_weight_following_a_bouncing_region_flaps_and_a_damped_one_does_not() -> None:
    bouncing, damped = Journal("bouncing"), Journal("damped")
    bouncing.extend(_plans([50, 0, 50, 0, 50, 0]))
    # The same region bouncing every second, held out by health hysteresis, then ramped back in steps once
    # it stayed up: weights move, but never back on themselves within the window.
    damped.extend(_plans([50, *[0] * 10, 10, 20, 35, 50]))
    assert measure(bouncing).flaps == {EAST: 4, WEST: 4}
    assert measure(damped).flaps == {EAST: 0, WEST: 0}


def test_a_reversal_after_the_window_is_no_flap_and_a_missing_region_has_weight_zero() -> None:
    journal = Journal("slow")
    journal.extend(_plans([50, 0, 50], every=6.0))  # out at 6, back at 12: further apart than the window
    # Dropped from the group's weights altogether (0) 1 s later, then back 1 s after that: two flaps.
    journal.append(PlanSample(13.0, "chat", {"global": {WEST: 100}}))
    journal.append(PlanSample(14.0, "chat", {"global": {EAST: 50, WEST: 50}}))
    assert measure(journal).flaps == {EAST: 2, WEST: 2}


def test_the_journal_round_trips_through_json_and_the_report_rerenders_from_it_alone(tmp_path: Path) -> None:
    journal = outage()
    again = Journal.from_json(json.loads(json.dumps(journal.to_json())))
    assert again.events == journal.events
    assert (again.drill, again.description) == (journal.drill, journal.description)
    figures = write_report(journal, tmp_path / "report")
    written = (tmp_path / "report" / "summary.md").read_text()
    (tmp_path / "report" / "summary.md").unlink()
    assert rerender(tmp_path / "report") == figures
    assert (tmp_path / "report" / "summary.md").read_text() == written


def test_a_journal_of_an_unknown_event_is_refused() -> None:
    data = Journal("x").to_json()
    data["events"] = [{"event": "meteor", "at": 1.0}]
    with pytest.raises(ValueError, match="meteor"):  # pydantic's ValidationError is a ValueError
        Journal.from_json(data)


def test_a_full_journal_drops_samples_but_keeps_what_the_report_needs() -> None:
    journal = Journal("busy", limit=2)
    journal.extend(_plans([50, 0, 50]))
    journal.append(FaultStarted(3.0, "f1", "region", EAST, FAULT))
    journal.append(ExpectationResult(4.0, "max_flaps", {"max": 0}, True, 0))
    assert journal.dropped == 1
    assert [type(e) for e in journal.events] == [PlanSample, PlanSample, FaultStarted, ExpectationResult]
    assert "journal full: 1 samples not kept" in render_summary(measure(journal))


def test_the_load_generators_report_enters_the_journal_at_the_drills_time() -> None:
    settings = LoadSettings(
        ("127.0.0.1", 53), "chat.llm.internal", (GroupLoad("global", 1.0),), {"127.0.0.11": Target(EAST, "")}
    )
    ledger = Ledger(settings)
    ledger.add(Outcome(0.05, "global", "127.0.0.11", EAST, None))
    ledger.add(Outcome(0.32, "global", "127.0.0.11", EAST, Reason.CONNECT_REFUSED, violation=True))
    events = client_events(ledger.report(), offset=2.0, width=settings.bucket, at=9.0)
    journal = Journal("load")
    journal.extend(events)
    buckets = journal.of(ClientBucket)
    assert [(b.region, b.width, b.successes, b.failures) for b in buckets] == [
        (EAST, 0.1, 1, 0),
        (EAST, 0.1, 0, 1),
    ]
    assert [b.at for b in buckets] == pytest.approx([2.0, 2.3])
    figures = measure(journal)
    assert figures.failures == {EAST: {"connect_refused": 1}}
    assert figures.successes == {EAST: 1}
    assert figures.residency_violations == 1


def test_summary_has_a_pass_fail_row_per_expectation_and_the_figures() -> None:
    summary = render_summary(measure(outage()))
    lines = summary.splitlines()
    assert lines[0] == "# Drill region-outage: FAILED"
    leaves = next(line for line in lines if line.startswith("| leaves_dns |"))
    assert "3.25" in leaves and "**FAIL**" in leaves and "region=us-east, within=2s" in leaves
    failures = next(line for line in lines if line.startswith("| max_client_failures |"))
    assert "| 7 | pass |" in failures
    fault = next(line for line in lines if line.startswith("| f1 |"))
    cells = [c.strip() for c in fault.strip("|").split("|")]
    assert cells == [
        "f1",
        "region down",
        EAST,
        "10.00 s",
        "20.00 s",
        "1.50 s",
        "2.00 s",
        "3.25 s",
        "3.50 s",
        "4.25 s",
    ]
    assert "- client requests failed: 7" in lines
    assert "- residency violations: 0" in lines
    assert "- steady state came back: pass" in lines


def test_the_combined_table_has_a_row_per_drill_and_percentiles_per_fault() -> None:
    passing = Journal("region-outage")
    passing.extend(e for e in outage().events if not isinstance(e, ExpectationResult))
    passing.append(ExpectationResult(30.0, "max_client_failures", {"max": 20}, True, 7))
    table = render_combined([measure(passing), measure(outage(detected=False)), measure(two_faults())])
    lines = table.splitlines()
    rows = [line for line in lines if line.startswith("| region-outage |")]
    assert len(rows) == 2
    assert "PASSED" in rows[0] and "1/1" in rows[0] and "1.50 s" in rows[0]
    assert "**FAILED**" in rows[1] and "not detected" in rows[1]
    # A drill's figure is its worst fault's, and a fault not detected is worse than any detected.
    assert "not detected" in next(line for line in lines if line.startswith("| two-faults |"))
    assert "1 of 3 drills passed." in table
    per_fault = next(line for line in lines if line.startswith("| region down |"))
    assert [c.strip() for c in per_fault.strip("|").split("|")] == [
        "region down", "3", "1.50 s", "1.50 s", "3.25 s", "3.25 s", "1",
    ]  # fmt: skip


def test_the_timeline_draws_three_panels_with_faults_shaded_and_saves_a_png(tmp_path: Path) -> None:
    journal = outage()
    figure = timeline(journal)
    weights, health, errors = figure.axes
    assert sorted(line.get_label() for line in weights.get_lines()) == [EAST, WEST]
    east = next(line for line in weights.get_lines() if line.get_label() == EAST)
    assert 0 in list(east.get_ydata()) and 50 in list(east.get_ydata())
    east_band, west_band = (c for c in health.collections if isinstance(c, PolyCollection))
    assert len(east_band.get_paths()) == len(west_band.get_paths()) == 30  # a span per health sample
    red = to_rgba("tab:red")
    assert sum(tuple(c) == red for c in east_band.get_facecolors()) == 11
    assert not any(tuple(c) == red for c in west_band.get_facecolors())
    assert [t.get_text() for t in health.get_yticklabels()] == [EAST, WEST]
    (failed,) = (p for p in errors.patches if isinstance(p, StepPatch))
    values, _, below = failed.get_data()
    assert failed.get_label() == EAST and sum(values) - sum(below) == 7
    for ax in figure.axes:
        spans = [p for p in ax.patches if isinstance(p, Rectangle)]
        shaded = [p for p in spans if (p.get_x(), p.get_width(), p.get_alpha()) == (10.0, 10.0, 0.15)]
        assert len(shaded) == 1, ax.get_ylabel()
    assert any("f1: region down us-east" in t.get_text() for t in weights.texts)

    write_report(journal, tmp_path)
    png = (tmp_path / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1200, 800)
    assert len(png) > 20_000
