"""A drill's verdicts from its journal alone: each expectation and each steady-state check, with what was
observed and a sentence a person understands. Pure: no clock, no I/O.

Times in the journal count from the drill's start; the drill file's `at` count from the method's start,
`offset` seconds later (the steady state was checked in between). Timed expectations count from the faults'
own journal times: from when a fault was really injected, not when it was scheduled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from chaos.drill import (
    DnsServesCheck,
    Drill,
    Expectation,
    FailsClosed,
    LeavesDns,
    MaxClientErrorRate,
    MaxClientFailures,
    MaxFlaps,
    OverrideStep,
    OverrideSurvives,
    ResidencyViolations,
    ReturnsToDns,
    StaysInDns,
    SteadyCheck,
    WeightFalls,
)
from chaos.journal import (
    ClientBucket,
    DnsSample,
    ExpectationResult,
    FaultEnded,
    FaultStarted,
    Journal,
    OverrideSample,
    Params,
    PlanSample,
    SteadyState,
)
from chaos.report import FaultFigures, fault_figures, flaps, measure
from controlplane.yamldoc import quoted

TIMED = (LeavesDns, ReturnsToDns, FailsClosed)
"""Expectations decided by a moment (something happened in time), which the runner may stop watching for."""


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _limit(seconds: float) -> str:
    return f"{seconds:g} s"


def name_of(expectation: Expectation) -> str:
    """The expectation's key in the drill file."""
    return next(iter(type(expectation).model_fields))


def _params(expectation: Expectation) -> Params:
    inner = getattr(expectation, name_of(expectation))
    if isinstance(inner, int | float):
        return {"max": inner}
    dumped: Params = inner.model_dump(mode="json", exclude_none=True)
    return dumped


def _in_time(took: float, within: float, what: str, since: str) -> tuple[bool, float, str]:
    """A timed expectation's verdict: `what` happened `took` seconds after `since`, at most `within`."""
    passed = took <= within
    verdict = "" if passed else ", later than the limit"
    return passed, round(took, 3), f"{what} {_s(took)} after {since}{verdict} (limit {_limit(within)})"


def _where(region: str, group: str | None) -> str:
    return f"{region} (group {group})" if group else region


def _for_group(journal: Journal, group: str | None) -> Journal:
    """The journal as one group saw DNS: its answers alone (none, when a sample lacks it), so fault_figures'
    apply and recovery become that group's."""
    if group is None:
        return journal
    projected = Journal(journal.drill, journal.description, journal.started)
    projected.extend(e for e in journal.events if isinstance(e, FaultStarted | FaultEnded))
    projected.extend(
        DnsSample(d.at, {group: d.answers.get(group, frozenset())}) for d in journal.of(DnsSample)
    )
    return projected


def _faults_on(journal: Journal, region: str, group: str | None) -> list[FaultFigures]:
    return [f for f in fault_figures(_for_group(journal, group)) if f.region == region]


def _leaves(e: LeavesDns, journal: Journal) -> tuple[bool, float | None, str]:
    spec = e.leaves_dns
    where, limit = _where(spec.region, spec.group), _limit(spec.within)
    faults = _faults_on(journal, spec.region, spec.group)
    if not faults:
        return False, None, f"no fault on {where} was injected, so there was nothing to leave for"
    took = faults[0].apply
    if took is None:
        return False, None, f"{where} never left DNS after its fault (limit {limit})"
    return _in_time(took, spec.within, f"{where} left DNS", "the fault")


def _returns(e: ReturnsToDns, journal: Journal) -> tuple[bool, float | None, str]:
    spec = e.returns_to_dns
    where, limit = _where(spec.region, spec.group), _limit(spec.within)
    faults = _faults_on(journal, spec.region, spec.group)
    if not faults:
        return False, None, f"no fault on {where} was injected, so there was nothing to return from"
    last = faults[-1]
    if last.end is None:
        return False, None, f"the last fault on {where} never ended"
    if last.recovery is None:
        return False, None, f"{where} was not back in DNS after its fault ended (limit {limit})"
    return _in_time(last.recovery, spec.within, f"{where} was back in DNS", "the fault ended")


def _method_start(journal: Journal) -> float:
    return min((f.at for f in journal.of(FaultStarted)), default=0.0)


def _stays(e: StaysInDns, journal: Journal) -> tuple[bool, int | None, str]:
    spec = e.stays_in_dns
    where = _where(spec.region, spec.group)
    since = _method_start(journal)
    samples = [d for d in journal.of(DnsSample) if d.at >= since]
    if not samples:
        return False, None, f"DNS was never seen during the faults, so {where} staying cannot be shown"
    groups = (spec.group,) if spec.group else None
    out = [
        d
        for d in samples
        if not any(
            spec.region in regions for g, regions in d.answers.items() if groups is None or g in groups
        )
    ]
    if not out:
        return True, 0, f"{where} stayed in DNS in all {len(samples)} samples"
    return (
        False,
        len(out),
        f"{where} was out of DNS in {len(out)} of {len(samples)} samples, first at {_s(out[0].at)}",
    )


def _at_most(value: int, ceiling: float) -> bool:
    return value <= ceiling


def _weight_falls(e: WeightFalls, journal: Journal) -> tuple[bool, float | None, str]:
    spec = e.weight_falls
    where = _where(spec.region, spec.group)
    starts = [f.at for f in journal.of(FaultStarted) if f.region == spec.region]
    if not starts:
        return False, None, f"no fault broke {spec.region}, so its weight had no reason to fall"
    since = starts[0]

    def weights(plan: PlanSample) -> list[int]:
        groups = [g for g in plan.weights if spec.group is None or g == spec.group]
        return [plan.weights[g].get(spec.region, 0) for g in groups if spec.region in plan.weights[g]]

    before = [w for p in journal.of(PlanSample) if p.at < since and (w := weights(p))]
    if not before:
        return False, None, f"{where} had no weight before the fault to fall from"
    ceiling = [b * (100 - spec.by) / 100 for b in before[-1]]
    plans = [(p.at, w) for p in journal.of(PlanSample) if p.at >= since and (w := weights(p))]
    # The same groups as before the fault (a group list that changed mid-drill is no evidence either way).
    low = [at - since for at, w in plans if len(w) == len(ceiling) and all(map(_at_most, w, ceiling))]
    fell = low[0] if low else None
    if fell is None:
        return False, None, f"{where} never fell by {spec.by}% of {before[-1]} (limit {_limit(spec.within)})"
    zero = next((at for at, w in plans if at - since >= fell and min(w) == 0), None)
    if zero is not None:
        return (
            False,
            round(fell, 3),
            f"{where} fell to 0 at {_s(zero)}: a slow region should keep some traffic",
        )
    return _in_time(fell, spec.within, f"{where} fell by {spec.by}%", "the fault")


def _fails_closed(e: FailsClosed, journal: Journal) -> tuple[bool, float | None, str]:
    spec = e.fails_closed
    limit = _limit(spec.within)
    starts = journal.of(FaultStarted)
    if not starts:
        return False, None, "no fault was injected, so there was nothing to fail closed for"
    since = starts[0].at
    closed = next(
        (d.at - since for d in journal.of(DnsSample) if d.at >= since and not d.answers.get(spec.group)), None
    )
    if closed is None:
        return False, None, f"group {spec.group} was always answered with some region (limit {limit})"
    return _in_time(closed, spec.within, f"group {spec.group} got no region", "the first fault")


def _survives(
    e: OverrideSurvives, journal: Journal, steps: Sequence[OverrideStep], offset: float
) -> tuple[bool, int | None, str]:
    """Each of the region's override steps is listed from when it is first seen until its own end, in every
    look at the admin API in between, and at least once after the last daemon restart before that end."""
    region = e.override_survives.region
    ours = [s for s in steps if s.region == region]
    if not ours:
        return False, None, f"the method places no override on {region}"
    samples = journal.of(OverrideSample)
    restarts = [f.at for f in journal.of(FaultEnded) if f.kind == "daemon"]
    seen_total = 0
    for step in ours:
        start, end = offset + step.at, offset + step.end
        window = [o for o in samples if start <= o.at < end]
        held = [(region, step.action.value) in o.overrides for o in window]
        if True not in held:
            return False, 0, f"the {step.action.value} override on {region} was never seen in force"
        first = held.index(True)
        lost = next((o.at for o, h in zip(window[first:], held[first:], strict=True) if not h), None)
        if lost is not None:
            return False, sum(held), f"the {step.action.value} override on {region} was gone at {_s(lost)}"
        restart = max((r for r in restarts if r < end), default=None)
        if restart is not None and not any(o.at > restart for o, h in zip(window, held, strict=True) if h):
            return (
                False,
                sum(held),
                f"the {step.action.value} override on {region} was not seen after the daemon restarted "
                f"at {_s(restart)}",
            )
        seen_total += sum(held)
    return True, seen_total, f"the override on {region} stayed in force in all {seen_total} looks"


def _count_limit(observed: int | None, limit: int, what: str) -> tuple[bool, int | None, str]:
    if observed is None:
        return False, None, f"no client load was measured, so {what} cannot be shown"
    passed = observed <= limit
    return passed, observed, f"{observed} {what} (at most {limit}{'' if passed else ': too many'})"


def _clients(
    e: MaxClientFailures | MaxClientErrorRate | ResidencyViolations, journal: Journal
) -> tuple[bool, float | int | None, str]:
    figures = measure(journal)
    loaded = bool(figures.successes or figures.failures)
    if isinstance(e, MaxClientFailures):
        failed = figures.client_failures if loaded else None
        return _count_limit(failed, e.max_client_failures, "client requests failed")
    if isinstance(e, ResidencyViolations):
        violations = figures.residency_violations if loaded else None
        return _count_limit(violations, e.residency_violations, "residency violations")
    total = figures.client_failures + sum(figures.successes.values())
    if not total:
        return False, None, "no client request was made, so the error rate cannot be shown"
    rate = figures.client_failures / total
    passed = rate <= e.max_client_error_rate
    return (
        passed,
        round(rate, 4),
        f"{rate:.2%} of {total} client requests failed (at most {e.max_client_error_rate:.2%})",
    )


def _flaps(e: MaxFlaps, journal: Journal) -> tuple[bool, int | None, str]:
    plans = journal.of(PlanSample)
    if not plans:
        return False, None, "no plan was seen, so flaps cannot be counted"
    counted = {r: n for r, n in flaps(plans).items() if n}
    total = sum(counted.values())
    passed = total <= e.max_flaps
    by_region = ", ".join(f"{r} {n}" for r, n in sorted(counted.items()))
    return (
        passed,
        total,
        f"{total} weight flaps{f' ({by_region})' if by_region else ''} (at most {e.max_flaps})",
    )


def evaluate_one(
    expectation: Expectation, journal: Journal, at: float, drill: Drill, offset: float
) -> ExpectationResult:
    result: tuple[bool, float | int | None, str]
    match expectation:
        case LeavesDns():
            result = _leaves(expectation, journal)
        case ReturnsToDns():
            result = _returns(expectation, journal)
        case StaysInDns():
            result = _stays(expectation, journal)
        case FailsClosed():
            result = _fails_closed(expectation, journal)
        case WeightFalls():
            result = _weight_falls(expectation, journal)
        case OverrideSurvives():
            result = _survives(expectation, journal, drill.overrides, offset)
        case MaxFlaps():
            result = _flaps(expectation, journal)
        case MaxClientFailures() | MaxClientErrorRate() | ResidencyViolations():
            result = _clients(expectation, journal)
    passed, observed, message = result
    return ExpectationResult(at, name_of(expectation), _params(expectation), passed, observed, message)


def evaluate(
    drill: Drill,
    journal: Journal,
    at: float,
    offset: float,
    only: Callable[[Expectation], bool] | None = None,
) -> list[ExpectationResult]:
    """Every expectation of the drill (those `only` keeps) over the journal as it is at `at`."""
    return [evaluate_one(e, journal, at, drill, offset) for e in drill.expect if only is None or only(e)]


def horizon(drill: Drill) -> float:
    """Seconds after the method's start by which every timed expectation is decided whatever happens: the
    watch after the last step ends need not last longer (with faults injected on time)."""
    starts: dict[str | None, float] = {}
    ends: dict[str | None, float] = {}
    for fault in drill.faults:
        region = getattr(fault, "region", None)
        starts[region] = min(starts.get(region, fault.at), fault.at)
        ends[region] = max(ends.get(region, fault.end), fault.end)
    first = min((f.at for f in drill.faults), default=0.0)
    deadlines = [drill.length]
    for e in drill.expect:
        if isinstance(e, LeavesDns):
            deadlines.append(starts.get(e.leaves_dns.region, 0.0) + e.leaves_dns.within)
        elif isinstance(e, ReturnsToDns):
            deadlines.append(ends.get(e.returns_to_dns.region, 0.0) + e.returns_to_dns.within)
        elif isinstance(e, FailsClosed):
            deadlines.append(first + e.fails_closed.within)
        elif isinstance(e, WeightFalls):
            deadlines.append(starts.get(e.weight_falls.region, 0.0) + e.weight_falls.within)
    return max(deadlines)


def unmeasurable(drill: Drill) -> list[str]:
    """Expectations the method gives nothing to measure from: they would fail for nothing, so refuse them
    before anything is broken."""
    broken = {r for f in drill.faults if (r := getattr(f, "region", None)) is not None}
    overridden = {s.region for s in drill.overrides}
    problems = []
    for i, e in enumerate(drill.expect):
        key = name_of(e)
        region = getattr(getattr(e, key), "region", None)
        if isinstance(e, LeavesDns | ReturnsToDns | WeightFalls) and region not in broken:
            problems.append(f"expect.{i}.{key}.region: no fault of the method breaks {quoted(str(region))}")
        if isinstance(e, OverrideSurvives) and region not in overridden:
            problems.append(
                f"expect.{i}.{key}.region: the method places no override on {quoted(str(region))}"
            )
        if isinstance(e, FailsClosed) and not drill.faults:
            problems.append(f"expect.{i}.{key}: the method has no fault to fail closed for")
    return problems


# ---------------------------------------------------------------- steady state


def _dns_serves(check: DnsServesCheck, dns: Sequence[DnsSample]) -> tuple[bool, str]:
    spec = check.dns_serves
    wanted = frozenset(spec.regions)
    label = f"dns_serves {spec.group}: {', '.join(sorted(wanted))}"
    if not dns:
        return False, f"{label}: DNS was not seen"
    wrong = next((d for d in dns if d.answers.get(spec.group, frozenset()) != wanted), None)
    if wrong is None:
        return True, f"{label} in all {len(dns)} samples"
    saw = ", ".join(sorted(wrong.answers.get(spec.group, frozenset()))) or "no region"
    return False, f"{label}: saw {saw} at {_s(wrong.at)}"


def _error_rate(limit: float, clients: Sequence[ClientBucket]) -> tuple[bool, str]:
    failed = sum(b.failures for b in clients)
    total = sum(b.requests for b in clients)
    if not total:
        return False, "max_client_error_rate: no client request finished in the window"
    rate = failed / total
    return rate <= limit, f"client error rate {rate:.2%} of {total} requests (at most {limit:.2%})"


def steady_state(
    checks: Sequence[SteadyCheck],
    journal: Journal,
    clients: Sequence[ClientBucket],
    start: float,
    end: float,
    phase: Literal["before", "after"],
) -> SteadyState:
    """The checks over the window [start, end] of drill time: DNS samples from the journal, client
    requests from `clients` (the load generator's buckets so far, started in the window)."""
    dns = [d for d in journal.of(DnsSample) if start <= d.at <= end]
    window = [b for b in clients if start <= b.at and b.at + b.width <= end]
    results = [
        _dns_serves(c, dns) if isinstance(c, DnsServesCheck) else _error_rate(c.max_client_error_rate, window)
        for c in checks
    ]
    return SteadyState(end, phase, all(ok for ok, _ in results), tuple(d for _, d in results))
