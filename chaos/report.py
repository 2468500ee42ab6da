"""A drill's report from its journal alone: the measurements (pure), summary.md and timeline.png.

Every figure of a fault counts from that fault's start, except recovery, which counts from its end. The
window a fault's figures are looked for in runs from its start to the next start of a fault on the same
region (or the journal's end), so a second fault's detection is never credited to the first.

The writers are synchronous and matplotlib is slow: call write_report, rerender and write_combined through
asyncio.to_thread from async code. They draw on their own Figure with the Agg canvas, never through pyplot,
so no display is needed and no global figure state is shared between threads.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chaos.journal import (
    ClientBucket,
    DnsSample,
    ExpectationResult,
    FaultEnded,
    FaultStarted,
    HealthSample,
    Journal,
    LoadTotals,
    PlanSample,
    SteadyState,
)
from controlplane.stats import quantile

HEALTHY = "healthy"
FLAP_WINDOW = 5.0
"""Seconds within which a weight reversing its last move is a flap. A failover and its recovery are further
apart than this (the fault lasts, then the region must rise through its health hysteresis), while a plane
that follows a region bouncing every second is not."""
FLAP_MIN_MOVE = 10
"""Weight points a region's weight must move from where its last move left it to count as a move: its share
shifts by a few points whenever another region's score changes or it comes and goes, and that is no flap.
Leaving rotation or coming back is a move whatever the points (slow start brings a region back with few)."""


@dataclass(frozen=True, slots=True)
class FaultFigures:
    fault: str
    kind: str
    region: str | None
    start: float
    end: float | None  # None: the journal has no end for it
    detect: float | None  # -> first health sample with the region not healthy; None: not detected
    decide: float | None  # -> first plan giving it weight 0 in every group
    apply: float | None  # -> first DNS sample offering it to no group
    clients_stopped: float | None  # -> the end of the last bucket with a request to it; None: no clients ran
    recovery: float | None  # fault end -> first DNS sample offering it again; None: not recovered
    mode: str = ""

    @property
    def times(self) -> tuple[float | None, ...]:
        """detect, decide, apply, clients_stopped, recovery: the columns of _FAULT_HEAD."""
        return self.detect, self.decide, self.apply, self.clients_stopped, self.recovery

    @property
    def label(self) -> str:
        return f"{self.kind} {self.mode}".strip()


@dataclass(frozen=True, slots=True)
class DrillFigures:
    drill: str
    description: str
    expectations: tuple[ExpectationResult, ...]
    steady_states: tuple[SteadyState, ...]
    faults: tuple[FaultFigures, ...]
    successes: Mapping[str, int]  # region -> client requests that succeeded
    failures: Mapping[str, Mapping[str, int]]  # region -> reason -> client requests that failed
    residency_violations: int
    flaps: Mapping[str, int]  # region -> flaps, over every service and group
    dropped: int  # journal samples not kept because it was full

    @property
    def client_failures(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.failures.values())

    @property
    def steady_state_back(self) -> bool | None:
        """Whether the last check after rollback held; None when none was made."""
        after = [s for s in self.steady_states if s.phase == "after"]
        return after[-1].held if after else None

    @property
    def passed(self) -> bool:
        """Every expectation held and the steady state with them; a drill that expects nothing fails."""
        return (
            bool(self.expectations)
            and all(e.passed for e in self.expectations)
            and all(s.held for s in self.steady_states)
        )


def measure(journal: Journal, window: float = FLAP_WINDOW) -> DrillFigures:
    totals = journal.of(LoadTotals)
    successes: Counter[str] = Counter()
    failures: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for t in totals:
        successes.update(t.successes)
        for region, reasons in t.failures.items():
            failures[region].update(reasons)
    return DrillFigures(
        journal.drill,
        journal.description,
        tuple(journal.of(ExpectationResult)),
        tuple(journal.of(SteadyState)),
        fault_figures(journal),
        dict(successes),
        {region: dict(reasons) for region, reasons in failures.items() if reasons},
        sum(t.residency_violations for t in totals),
        flaps(journal.of(PlanSample), window),
        journal.dropped,
    )


def fault_figures(journal: Journal) -> tuple[FaultFigures, ...]:
    starts = journal.of(FaultStarted)
    ends = {e.fault: e.at for e in journal.of(FaultEnded)}
    health, plans, dns = journal.of(HealthSample), journal.of(PlanSample), journal.of(DnsSample)
    buckets = journal.of(ClientBucket)
    figures = []
    for i, fault in enumerate(starts):
        region, start, end = fault.region, fault.at, ends.get(fault.fault)
        mode = str(fault.params.get("mode", ""))
        if region is None:
            figures.append(
                FaultFigures(fault.fault, fault.kind, None, start, end, None, None, None, None, None, mode)
            )
            continue
        until = next((f.at for f in starts[i + 1 :] if f.region == region), float("inf"))
        detect = _first((s.at for s in health if start <= s.at < until and _unhealthy(s, region)), start)
        decide = _first((p.at for p in plans if start <= p.at < until and _weightless(p, region)), start)
        apply = _first((d.at for d in dns if start <= d.at < until and not _offered(d, region)), start)
        recovery = None
        if end is not None:
            recovery = _first((d.at for d in dns if d.at >= end and _offered(d, region)), end)
        stopped: float | None = None
        if buckets:
            horizon = end if end is not None else until
            # A bucket is a span: the last request to the region was at its end at the latest.
            reached = (b for b in buckets if b.region == region and b.requests and start < b.at + b.width)
            stopped = max((b.at + b.width - start for b in reached if b.at < horizon), default=0.0)
        figures.append(
            FaultFigures(
                fault.fault, fault.kind, region, start, end, detect, decide, apply, stopped, recovery, mode
            )
        )
    return tuple(figures)


def _first(times: Iterable[float], since: float) -> float | None:
    return next((t - since for t in times), None)


def _unhealthy(sample: HealthSample, region: str) -> bool:
    health = sample.regions.get(region)
    return health is not None and health.state != HEALTHY


def _weightless(plan: PlanSample, region: str) -> bool:
    return all(weights.get(region, 0) == 0 for weights in plan.weights.values())


def _offered(sample: DnsSample, region: str) -> bool:
    return any(region in regions for regions in sample.answers.values())


def flaps(
    plans: Sequence[PlanSample], window: float = FLAP_WINDOW, min_move: int = FLAP_MIN_MOVE
) -> dict[str, int]:
    """Region -> flaps, summed over the (service, group) weight series it is in, `plans` in time order.

    A move is a sample whose weight for the region differs by `min_move` or more from where the series'
    last move left it, or takes it out of rotation (to 0) or back in (a region missing from a group's
    weights has 0 there); it goes up or down. A flap is a move in the other
    direction from the series' previous move and at most `window` seconds after it. So a fall followed by
    a rise more than `window` later is a failover and its recovery, a ramp in steps is no flap however fast,
    and a weight held steady while its region bounces makes no moves at all.
    """
    series: defaultdict[tuple[str, str], dict[str, tuple[int, int, float]]] = defaultdict(dict)
    counts: Counter[str] = Counter()
    for plan in plans:
        for group, weights in plan.weights.items():
            last = series[plan.service, group]  # region -> weight, direction of its last move, moved at
            for region in weights.keys() | last.keys():
                weight = weights.get(region, 0)
                previous, direction, moved = last.get(region, (weight, 0, float("-inf")))
                # In or out of rotation is always a move, however small the weight it comes back with.
                if weight == previous or (weight and previous and abs(weight - previous) < min_move):
                    last.setdefault(region, (weight, 0, moved))
                    continue
                now = 1 if weight > previous else -1
                if now == -direction and plan.at - moved <= window:
                    counts[region] += 1
                last[region] = (weight, now, plan.at)
    regions = sorted({region for last in series.values() for region in last})
    return {region: counts[region] for region in regions}


def _seconds(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.2f} s"


def _cell(value: object) -> str:
    """A table cell: pipes escaped and newlines flattened, so an observed value cannot break the table."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _params(params: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _verdict(passed: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "not checked"}[passed]


def _fault_cells(times: Sequence[float | None], ended: bool) -> list[str]:
    missing = (
        "not detected",
        "not decided",
        "not applied",
        "no clients",
        "not recovered" if ended else "never ended",
    )
    return [_seconds(t, m) for t, m in zip(times, missing, strict=True)]


_FAULT_HEAD = ("detect", "decide", "apply", "clients stopped", "recovery")


def render_summary(figures: DrillFigures) -> str:
    """summary.md: the verdict, a pass/fail row per expectation with what was observed, then the figures."""
    lines = [f"# Drill {figures.drill}: {'PASSED' if figures.passed else 'FAILED'}", ""]
    if figures.description:
        lines += [figures.description, ""]
    lines += ["## Expectations", ""]
    if figures.expectations:
        rows = [
            [
                e.name,
                _params(e.params),
                "-" if e.observed is None else e.observed,
                _verdict(e.passed),
                e.message,
            ]
            for e in figures.expectations
        ]
        lines += _table(("expectation", "params", "observed", "result", "message"), rows)
    else:
        lines.append("None: a drill that expects nothing cannot fail, so it counts as failed.")
    lines += ["", "## Steady state", ""]
    rows = [[s.phase, _verdict(s.held), "; ".join(s.details)] for s in figures.steady_states]
    lines += _table(("phase", "result", "details"), rows) if rows else ["Not checked."]
    lines += ["", "## Faults", "", "Seconds from the fault's start; recovery from its end.", ""]
    rows = [
        [
            f.fault,
            f.label,
            f.region or "-",
            f"{f.start:.2f} s",
            _seconds(f.end, "-"),
            *_fault_cells(f.times, f.end is not None),
        ]
        for f in figures.faults
    ]
    lines += _table(("fault", "kind", "region", "start", "end", *_FAULT_HEAD), rows) if rows else ["None."]
    lines += ["", "## Clients", ""]
    regions = sorted(figures.successes.keys() | figures.failures.keys())
    rows = [
        [
            region,
            figures.successes.get(region, 0),
            sum(figures.failures.get(region, {}).values()),
            _params(dict(sorted(figures.failures.get(region, {}).items()))) or "-",
            figures.flaps.get(region, 0),
        ]
        for region in regions
    ]
    lines += _table(("region", "succeeded", "failed", "failures by reason", "flaps"), rows) if rows else []
    lines += [
        "",
        f"- client requests failed: {figures.client_failures}",
        f"- residency violations: {figures.residency_violations}",
        f"- weight flaps: {sum(figures.flaps.values())}",
        f"- steady state came back: {_verdict(figures.steady_state_back)}",
    ]
    if figures.dropped:
        lines.append(f"- journal full: {figures.dropped} samples not kept")
    return "\n".join(lines) + "\n"


def _worst(values: Iterable[float | None]) -> float | None:
    """The slowest of a drill's faults; one that never happened (None) is the worst of all."""
    collected = list(values)
    return None if None in collected else max((v for v in collected if v is not None), default=None)


def render_combined(drills: Sequence[DrillFigures]) -> str:
    """The --all table: a row per drill (each figure the worst over its region faults), then detection and
    reroute (until DNS stopped offering the region) p50/p99 per fault kind and mode over every drill."""
    rows = []
    for d in drills:
        located = [f for f in d.faults if f.region is not None]
        worst = [_worst(times) for times in zip(*(f.times for f in located), strict=True)]
        ended = all(f.end is not None for f in located)
        cells = _fault_cells(worst, ended) if located else ["-"] * len(_FAULT_HEAD)
        rows.append(
            [
                d.drill,
                "PASSED" if d.passed else "**FAILED**",
                f"{sum(e.passed for e in d.expectations)}/{len(d.expectations)}",
                *cells,
                d.client_failures,
                sum(d.flaps.values()),
                d.residency_violations,
                _verdict(d.steady_state_back),
            ]
        )
    head = (
        "drill",
        "result",
        "expectations",
        *_FAULT_HEAD,
        "client failures",
        "flaps",
        "residency",
        "steady",
    )
    lines = [*_table(head, rows), ""]
    passed = sum(d.passed for d in drills)
    lines += [f"{passed} of {len(drills)} drills passed.", "", "## Per fault", ""]
    kinds: defaultdict[str, list[FaultFigures]] = defaultdict(list)
    for d in drills:
        for f in d.faults:
            if f.region is not None:
                kinds[f.label].append(f)
    rows = []
    for label, faults in sorted(kinds.items()):
        detect = [f.detect for f in faults if f.detect is not None]
        reroute = [f.apply for f in faults if f.apply is not None]
        rows.append(
            [
                label,
                len(faults),
                *(_seconds(quantile(detect, q), "-") for q in (0.5, 0.99)),
                *(_seconds(quantile(reroute, q), "-") for q in (0.5, 0.99)),
                len(faults) - len(detect),
            ]
        )
    per_fault = ("fault", "count", "detect p50", "detect p99", "reroute p50", "reroute p99", "not detected")
    lines += _table(per_fault, rows) if rows else ["No region faults."]
    return "\n".join(lines) + "\n"


_STATE_COLOURS = {HEALTHY: "tab:green", "unhealthy": "tab:red"}
_OTHER_STATE = "tab:gray"  # unknown, or a state this report does not know
_MAX_SLOTS = 10_000  # client error bins drawn at most, whatever the buckets' width


def timeline(journal: Journal, group: str | None = None) -> Figure:
    """Three panels sharing time: weights per region (`group`'s, or summed over every service and group),
    health per region as a band, client errors per region per bucket; faults shaded and labelled on each."""
    figure = Figure(figsize=(12, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    weights_ax, health_ax, errors_ax = figure.subplots(3, 1, sharex=True, height_ratios=(3, 2, 2))
    figure.suptitle(f"Drill {journal.drill}")

    series: defaultdict[str, dict[float, int]] = defaultdict(dict)
    for plan in journal.of(PlanSample):
        chosen = [w for g, w in plan.weights.items() if group is None or g == group]
        regions = {r for w in chosen for r in w} | series.keys()
        for region in regions:
            points = series[region]
            points[plan.at] = points.get(plan.at, 0) + sum(w.get(region, 0) for w in chosen)
    for region, points in sorted(series.items()):
        weights_ax.step(list(points), list(points.values()), where="post", label=region)
    weights_ax.set_ylabel(f"weight ({group})" if group else "weight (all groups)")

    health = journal.of(HealthSample)
    names = sorted({r for s in health for r in s.regions})
    end = journal.end
    for row, region in enumerate(names):
        spans = [(s.at, s.regions[region].state) for s in health if region in s.regions]
        untils = [at for at, _ in spans[1:]] + [end]
        health_ax.broken_barh(
            [(at, until - at) for (at, _), until in zip(spans, untils, strict=True)],
            (row - 0.4, 0.8),
            facecolors=[_STATE_COLOURS.get(state, _OTHER_STATE) for _, state in spans],
            label=region,
        )
    health_ax.set_yticks(range(len(names)), names)
    health_ax.set_ylabel("health")

    buckets = journal.of(ClientBucket)
    if buckets:
        # A stacked step area per region, not a bar per bucket: thousands of bars take seconds to draw.
        first, last = buckets[0].at, buckets[-1].at
        width = max(min(b.width for b in buckets), (last - first) / _MAX_SLOTS)
        slots = int((last - first) // width) + 1
        edges = [first + i * width for i in range(slots + 1)]
        below = [0] * slots
        for region in sorted({b.region for b in buckets if b.failures}):
            above = list(below)
            for b in buckets:
                if b.region == region:
                    above[min(slots - 1, int((b.at - first) // width))] += b.failures
            errors_ax.stairs(above, edges, baseline=below, fill=True, label=region)
            below = above
    errors_ax.set_ylabel("client errors")
    errors_ax.set_xlabel("seconds since the drill started")

    ends = {e.fault: e.at for e in journal.of(FaultEnded)}
    for fault in journal.of(FaultStarted):
        until = ends.get(fault.fault, end)
        for ax in (weights_ax, health_ax, errors_ax):
            ax.axvspan(fault.at, until, color="tab:orange", alpha=0.15, zorder=0)
        mode = fault.params.get("mode", "")
        text = f"{fault.fault}: {fault.kind} {mode} {fault.region or ''}".strip()
        weights_ax.annotate(
            text,
            (fault.at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
        )
    for ax in (weights_ax, errors_ax):
        if ax.get_legend_handles_labels()[1]:
            ax.legend(loc="upper right", fontsize=8)
    return figure


def write_report(journal: Journal, directory: Path, window: float = FLAP_WINDOW) -> DrillFigures:
    """journal.json, summary.md and timeline.png in `directory` (made if missing); synchronous."""
    directory.mkdir(parents=True, exist_ok=True)
    journal.write(directory / "journal.json")
    return rerender(directory, journal, window)


def rerender(directory: Path, journal: Journal | None = None, window: float = FLAP_WINDOW) -> DrillFigures:
    """summary.md and timeline.png from `journal`, or from the directory's journal.json alone."""
    if journal is None:
        journal = Journal.load(directory / "journal.json")
    figures = measure(journal, window)
    (directory / "summary.md").write_text(render_summary(figures), encoding="utf-8")
    timeline(journal).savefig(directory / "timeline.png")
    return figures


def write_combined(drills: Sequence[DrillFigures], path: Path) -> None:
    path.write_text(render_combined(drills), encoding="utf-8")
