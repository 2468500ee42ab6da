"""Expectations and steady-state checks from hand-built journals: each one both holding and not, with what
was observed and a message a person can read."""

from __future__ import annotations

import json

import pytest

from chaos.drill import Drill, parse_drill
from chaos.expect import evaluate, horizon, steady_state, unmeasurable
from chaos.journal import (
    ClientBucket,
    DnsSample,
    Event,
    ExpectationResult,
    FaultEnded,
    FaultStarted,
    Journal,
    LoadTotals,
    OverrideSample,
    PlanSample,
)

EAST, WEST, EUW = "us-east", "us-west", "eu-west"
ALL = frozenset({EAST, WEST, EUW})


def drill(
    expect: str, method: str = "  - fault: {kind: region, region: us-east, mode: down, duration: 10s}"
) -> Drill:
    return parse_drill(f"name: d\nmethod:\n{method}\nexpect:\n  - {expect}\n")


def journal(*events: Event) -> Journal:
    built = Journal("d")
    built.extend(events)
    return built


def dns(at: float, global_: frozenset[str], eu: frozenset[str] = frozenset({EUW})) -> DnsSample:
    return DnsSample(at, {"global": global_, "eu": eu})


def fault(
    start: float = 10.0, end: float | None = 20.0, region: str = EAST, kind: str = "region"
) -> list[Event]:
    events: list[Event] = [FaultStarted(start, f"f{start:g}", kind, region, {"mode": "down"})]
    if end is not None:
        events.append(FaultEnded(end, f"f{start:g}", kind, region, {"mode": "down"}))
    return events


def outage(left: float | None, back: float | None) -> Journal:
    """us-east down 10..20 s; DNS sampled every 0.25 s; it leaves global's answers at `left` and comes back
    at `back` (None: never)."""
    samples = []
    for i in range(0, 160):
        at = i * 0.25
        out = left is not None and at >= left and (back is None or at < back)
        samples.append(dns(at, ALL - {EAST} if out else ALL))
    return journal(*fault(), *samples)


def one(expect: str, j: Journal, offset: float = 0.0, method: str | None = None) -> ExpectationResult:
    d = drill(expect) if method is None else drill(expect, method)
    (result,) = evaluate(d, j, 40.0, offset)
    return result


def test_leaves_dns_holds_within_its_limit_and_says_how_long_it_took() -> None:
    result = one("leaves_dns: {region: us-east, within: 2s}", outage(11.5, 25.0))
    assert (result.passed, result.observed, result.name) == (True, 1.5, "leaves_dns")
    assert result.message == "us-east left DNS 1.50 s after the fault (limit 2 s)"
    assert result.params == {"region": EAST, "within": 2.0}


def test_leaves_dns_fails_when_late_or_never() -> None:
    late = one("leaves_dns: {region: us-east, within: 2s}", outage(13.25, 25.0))
    assert (late.passed, late.observed) == (False, 3.25)
    assert "later than the limit" in late.message
    never = one("leaves_dns: {region: us-east, within: 2s}", outage(None, None))
    assert (never.passed, never.observed) == (False, None)
    assert never.message == "us-east never left DNS after its fault (limit 2 s)"


def test_leaves_dns_for_one_group_looks_at_that_groups_answers_only() -> None:
    # eu-west leaves the global answers at 11 s but the eu group keeps it: every group must see it go.
    samples = [
        DnsSample(at / 4, {"global": ALL - {EUW} if at / 4 >= 11 else ALL, "eu": frozenset({EUW})})
        for at in range(100)
    ]
    j = journal(*fault(region=EUW), *samples)
    method = "  - fault: {kind: region, region: eu-west, mode: down, duration: 10s}"
    assert one("leaves_dns: {region: eu-west, within: 2s, group: global}", j, method=method).passed
    for expect in (
        "leaves_dns: {region: eu-west, within: 2s, group: eu}",
        "leaves_dns: {region: eu-west, within: 2s}",
    ):
        assert not one(expect, j, method=method).passed


def test_returns_to_dns_counts_from_the_faults_end() -> None:
    back = one("returns_to_dns: {region: us-east, within: 30s}", outage(11.5, 24.0))
    assert (back.passed, back.observed) == (True, 4.0)
    assert back.message == "us-east was back in DNS 4.00 s after the fault ended (limit 30 s)"
    late = one("returns_to_dns: {region: us-east, within: 3s}", outage(11.5, 24.0))
    assert (late.passed, late.observed) == (False, 4.0)
    never = one("returns_to_dns: {region: us-east, within: 30s}", outage(11.5, None))
    assert (never.passed, never.observed) == (False, None)
    assert "was not back" in never.message


def test_returns_to_dns_fails_when_the_fault_never_ended() -> None:
    j = journal(*fault(end=None), *(dns(t, ALL) for t in range(30)))
    result = one("returns_to_dns: {region: us-east, within: 30s}", j)
    assert not result.passed and result.message == "the last fault on us-east never ended"


def test_stays_in_dns_counts_the_samples_it_was_missing_from() -> None:
    assert one("stays_in_dns: {region: us-east}", outage(None, None)).passed
    result = one("stays_in_dns: {region: us-east}", outage(12.0, 13.0))
    assert (result.passed, result.observed) == (False, 4)
    assert result.message.endswith("first at 12.00 s")


def test_fails_closed_needs_the_groups_answers_empty_in_time() -> None:
    samples = [dns(t / 4, ALL, frozenset() if t / 4 >= 11 else frozenset({EUW})) for t in range(100)]
    j = journal(*fault(region=EUW), *samples)
    method = "  - fault: {kind: region, region: eu-west, mode: down, duration: 10s}"
    held = one("fails_closed: {group: eu, within: 2s}", j, method=method)
    assert (held.passed, held.observed) == (True, 1.0)
    late = one("fails_closed: {group: eu, within: 500ms}", j, method=method)
    assert (late.passed, late.observed) == (False, 1.0)
    never = one("fails_closed: {group: global, within: 2s}", j, method=method)
    assert (never.passed, never.observed) == (False, None)


OVERRIDE = """\
  - override: {region: us-west, action: drain, at: 1s, duration: 10s}
  - fault: {kind: daemon, at: 3s, restart_after: 2s}"""


def overrides(seen: dict[float, bool]) -> Journal:
    """The drill's method started at 5 s of drill time; the daemon was down from 8 s to 10 s (no looks)."""
    drain = ((WEST, "drain"),)
    looks = [OverrideSample(at, drain if there else ()) for at, there in seen.items()]
    return journal(FaultStarted(8.0, "f1", "daemon", None), FaultEnded(10.0, "f1", "daemon", None), *looks)


def test_an_override_seen_before_and_after_the_restart_survives() -> None:
    j = overrides({5.5: False, 6.0: True, 7.0: True, 11.0: True, 15.5: True, 16.0: False})
    result = one("override_survives: {region: us-west}", j, offset=5.0, method=OVERRIDE)
    assert (result.passed, result.observed) == (True, 4)


@pytest.mark.parametrize(
    ("seen", "why"),
    [
        ({6.0: True, 7.0: True, 11.0: False, 12.0: True}, "was gone at 11.00 s"),
        ({6.0: True, 7.0: True}, "not seen after the daemon restarted at 10.00 s"),
        ({6.0: False, 12.0: False}, "never seen in force"),
    ],
)
def test_an_override_lost_or_unseen_after_the_restart_does_not_survive(
    seen: dict[float, bool], why: str
) -> None:
    result = one("override_survives: {region: us-west}", overrides(seen), offset=5.0, method=OVERRIDE)
    assert not result.passed and why in result.message


def loaded(failed: int, violations: int = 0) -> Journal:
    return journal(
        *fault(), LoadTotals(30.0, {EAST: 90, WEST: 100}, {EAST: {"connect_refused": failed}}, violations, 0)
    )


@pytest.mark.parametrize(
    ("expect", "j", "passed", "observed"),
    [
        ("max_client_failures: 20", loaded(20), True, 20),
        ("max_client_failures: 20", loaded(21), False, 21),
        ("max_client_failures: 20", journal(*fault()), False, None),
        ("max_client_error_rate: 0.1", loaded(10), True, 0.05),
        ("max_client_error_rate: 0.01", loaded(10), False, 0.05),
        ("residency_violations: 0", loaded(0), True, 0),
        ("residency_violations: 0", loaded(0, violations=3), False, 3),
    ],
)
def test_client_counts_against_their_limits(expect: str, j: Journal, passed: bool, observed: object) -> None:
    result = one(expect, j)
    assert (result.passed, result.observed) == (passed, observed)


def plans(*weights: int) -> Journal:
    return journal(
        *(PlanSample(float(i), "chat", {"global": {EAST: w, WEST: 100}}) for i, w in enumerate(weights))
    )


def test_max_flaps_counts_weight_reversals() -> None:
    assert one("max_flaps: 0", plans(100, 100, 0, 0, 0, 0, 0, 0, 0, 100)).passed  # out and back, far apart
    bouncing = one("max_flaps: 0", plans(100, 0, 100, 0, 100))
    assert (bouncing.passed, bouncing.observed, bouncing.params) == (False, 3, {"max": 0})
    assert bouncing.message == "3 weight flaps (us-east 3) (at most 0)"
    assert not one("max_flaps: 0", journal(*fault())).passed  # no plan seen: nothing shows it held


def test_a_share_shifting_as_other_regions_come_and_go_is_no_flap() -> None:
    # Up a few points when another region is drained, out with its fault, back through slow start, and a few
    # points down when the drained one returns: one failover and its recovery, no flap.
    assert one("max_flaps: 0", plans(31, 38, 0, 0, 0, 0, 0, 0, 0, 0, 6, 31, 38, 31)).passed
    # But back in rotation with a slow-start weight of 4 and out again, every second, is flapping.
    bouncing = one("max_flaps: 0", plans(31, 0, 4, 0, 4, 0, 4, 0))
    assert (bouncing.passed, bouncing.observed) == (False, 6)


def test_every_result_survives_the_journal_json() -> None:
    j = outage(11.5, 24.0)
    j.extend(evaluate(drill("leaves_dns: {region: us-east, within: 2s}"), j, 40.0, 0.0))
    j.append(OverrideSample(1.0, ((WEST, "drain"),)))
    again = Journal.from_json(json.loads(json.dumps(j.to_json())))
    assert again.events == j.events


def test_the_steady_state_wants_exactly_the_regions_and_few_client_errors() -> None:
    d = parse_drill(
        "name: d\nsteady_state:\n  - dns_serves: {group: global, regions: [us-east, us-west, eu-west]}\n"
        "  - max_client_error_rate: 0.1\nmethod:\n  - fault: {kind: region, region: us-east, mode: down, "
        "duration: 1s}\nexpect:\n  - max_flaps: 0\n"
    )
    j = outage(11.5, 24.0)
    good = [ClientBucket(t / 10, 0.1, EAST, 10, 0) for t in range(100)]
    held = steady_state(d.steady_state, j, good, 0.0, 3.0, "before")
    assert held.held and held.phase == "before" and held.at == 3.0
    assert held.details[0] == "dns_serves global: eu-west, us-east, us-west in all 13 samples"
    assert held.details[1].startswith("client error rate 0.00% of 300 requests")
    # Over the outage the answers lack us-east; clients failing too.
    bad = [ClientBucket(t / 10, 0.1, EAST, 5, 5) for t in range(100, 130)]
    broken = steady_state(d.steady_state, j, bad, 11.0, 13.0, "after")
    assert not broken.held
    assert broken.details[0].endswith("saw eu-west, us-west at 11.50 s")
    assert broken.details[1].startswith("client error rate 50.00%")
    # A window without samples or requests shows nothing held.
    empty = steady_state(d.steady_state, journal(), [], 0.0, 3.0, "before")
    assert not empty.held and "no client request" in empty.details[1]


def test_horizon_is_the_latest_deadline_of_a_timed_expectation() -> None:
    d = parse_drill(
        "name: d\nmethod:\n  - fault: {kind: region, region: us-east, mode: down, at: 2s, duration: 5s}\n"
        "expect:\n  - leaves_dns: {region: us-east, within: 2s}\n  - returns_to_dns: {region: us-east, within: 20s}\n"
    )
    assert horizon(d) == 27.0
    assert horizon(drill("max_flaps: 0")) == 10.0


def test_expectations_the_method_gives_nothing_to_measure_are_named() -> None:
    d = parse_drill(
        "name: d\nmethod:\n  - fault: {kind: daemon, restart_after: 1s}\nexpect:\n"
        "  - leaves_dns: {region: us-east, within: 2s}\n  - override_survives: {region: us-west}\n  - max_flaps: 0\n"
    )
    assert unmeasurable(d) == [
        "expect.0.leaves_dns.region: no fault of the method breaks 'us-east'",
        "expect.1.override_survives.region: the method places no override on 'us-west'",
    ]
    assert unmeasurable(drill("leaves_dns: {region: us-east, within: 2s}")) == []


def slowed(weights: list[int]) -> Journal:
    """us-east slowed at 10 s, holding 25 before; its weight in the global group once a second from then
    (eu never has it)."""
    plans = [
        PlanSample(9.0 + i, "chat", {"global": {EAST: w, WEST: 100 - w}, "eu": {EUW: 100}})
        for i, w in enumerate([25, *weights])
    ]
    return journal(*fault(), *plans)


def test_weight_falls_holds_when_the_share_drops_in_time_but_not_to_zero() -> None:
    expect = "weight_falls: {region: us-east, by: 20, within: 3s}"
    held = one(expect, slowed([25, 23, 20, 17, 17]))  # 20 is 80 % of 25
    assert (held.passed, held.observed) == (True, 2.0)
    assert held.message == "us-east fell by 20% 2.00 s after the fault (limit 3 s)"
    late = one(expect, slowed([25, 24, 23, 22, 19]))
    assert (late.passed, late.observed) == (False, 4.0) and "later than the limit" in late.message
    never = one(expect, slowed([25, 25, 24, 25]))
    assert (never.passed, never.observed) == (False, None)
    dropped = one(expect, slowed([25, 18, 0, 0]))
    assert not dropped.passed and "fell to 0" in dropped.message
