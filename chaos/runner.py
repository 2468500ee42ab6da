"""Runs a drill against a target: checks it can be run, starts the target and real clients, checks the steady
state, breaks things on schedule while it watches, always puts them back, checks the steady state again,
judges the expectations and writes the report.

Rollback always runs, whatever ends the drill (its end, an error, Ctrl-C): every fault still in force is
cleared, then the target is stopped, which mends everything again. And every fault carries a time-to-live
inside the thing it breaks, so even a runner killed outright leaves nothing broken for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

from chaos.drill import (
    DaemonFault,
    Drill,
    Fault,
    FaultStep,
    OverrideStep,
    ProviderFault,
    RemoteTarget,
    mismatches,
)
from chaos.expect import TIMED, evaluate, horizon, steady_state, unmeasurable
from chaos.journal import (
    ClientBucket,
    FaultEnded,
    FaultStarted,
    Journal,
    OverrideSample,
    SteadyState,
    client_events,
)
from chaos.loadgen import LoadGenerator, LoadSettings
from chaos.report import DrillFigures, write_report
from chaos.target import DrillTarget, Look, ReportsResults
from controlplane.drillresult import MAX_EXPECTATIONS, DrillResult, ExpectationOutcome
from controlplane.errors import ControlPlaneError, InvalidInput
from controlplane.policy import load_policy

log = logging.getLogger(__name__)
T = TypeVar("T")
STEADY_RECHECK = 0.5  # seconds between checks of a steady state that has not held yet


@dataclass(frozen=True, slots=True)
class Timing:
    """How the runner paces itself; tests shorten the windows."""

    sample: float = 0.1  # seconds between looks at the plane
    bucket: float = 0.1  # the load generator's bucket width
    steady_window: float = 2.0  # the steady state must hold over this long
    steady_before: float = 20.0  # waited at most for it before the faults (a plane still ramping up)
    steady_after: float = 30.0  # and after the rollback
    ttl_margin: float = 5.0  # a fault's time-to-live beyond its scheduled end
    start_timeout: float = 180.0
    call_timeout: float = 60.0  # inject, clear (a daemon restart waits for it) and override
    look_timeout: float = 3.0
    stop_grace: float = 2.0  # client requests still running at the end are given this long


class DrillRefused(InvalidInput):
    """A drill that cannot be run against this target; nothing was started."""

    exit_code = 2

    def __init__(self, drill: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"drill {drill} refused:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class DrillOutcome:
    drill: str
    schedule: tuple[str, ...]
    figures: DrillFigures | None  # None: a dry run
    report_dir: Path | None

    @property
    def passed(self) -> bool:
        return self.figures is not None and self.figures.passed

    def verdict(self) -> str:
        """One line for a person: the drill, its result and why."""
        if self.figures is None:
            return f"{self.drill}: valid, {len(self.schedule)} steps [dry run]"
        f = self.figures
        held = sum(e.passed for e in f.expectations)
        failed = [e.name for e in f.expectations if not e.passed]
        steady = [s.phase for s in f.steady_states if not s.held]
        why = "; ".join(
            [*([f"failed: {', '.join(failed)}"] if failed else []), *(f"steady state {p}" for p in steady)]
        )
        result = "PASSED" if f.passed else "FAILED"
        tail = f" ({why})" if why else ""
        where = f" -> {self.report_dir}" if self.report_dir else ""
        return (
            f"{self.drill}: {result}, {held}/{len(f.expectations)} expectations, "
            f"{f.client_failures} client failures{tail}{where}"
        )


def _describe(fault: Fault) -> str:
    fields = fault.model_dump(mode="json", exclude={"kind", "at", "duration"}, exclude_defaults=True)
    return " ".join([f"{fault.kind} fault", *(f"{k}={v}" for k, v in fields.items())])


def schedule(drill: Drill) -> list[str]:
    """The method in time order, seconds from its start."""
    steps: list[tuple[float, str]] = []
    for fault in drill.faults:
        what = _describe(fault)
        steps.append((fault.at, f"inject {what}"))
        steps.append((fault.end, "restart the daemon" if isinstance(fault, DaemonFault) else f"clear {what}"))
    for step in drill.overrides:
        weight = f" weight={step.weight}" if step.weight is not None else ""
        steps.append((step.at, f"override {step.action.value} {step.region}{weight} for {step.duration:g} s"))
    return [f"{at:7.2f} s  {what}" for at, what in sorted(steps, key=lambda s: s[0])]


def problems(drill: Drill, target: DrillTarget) -> list[str]:
    """Why the drill cannot be run against `target`: names its policy lacks, faults it has no means for,
    expectations with nothing to measure from."""
    found = mismatches(drill, target.policy)
    for i, step in enumerate(drill.method):
        if isinstance(step, FaultStep) and (why := target.supports(step.fault)) is not None:
            found.append(f"method.{i}.fault: {why}")
    return found + unmeasurable(drill)


CATALOGUE = Path(__file__).resolve().parent / "drills"


def catalogue() -> list[Path]:
    """The drills shipped with the plane (package data), by name."""
    return sorted(CATALOGUE.glob("*.yaml"))


def target_for(drill: Drill) -> DrillTarget:
    """The target a drill names; building it starts nothing. Raises DrillRefused for one this runner has
    no means to reach."""
    if isinstance(drill.target, RemoteTarget):
        return _staging(drill, drill.target)
    if drill.target == "replicas":
        from chaos.replicatarget import ReplicaTarget

        return ReplicaTarget()
    from chaos.demotarget import DemoTarget  # boto3 and the daemon's plumbing: only when a drill runs

    return DemoTarget(with_route53=any(isinstance(f, ProviderFault) for f in drill.faults))


def _staging(drill: Drill, remote: RemoteTarget) -> DrillTarget:
    from chaos.remotetarget import StagingTarget

    refused: list[str] = []
    if remote.policy is None:
        refused.append(
            "target.policy: a remote target needs the policy file its plane runs (its client groups and "
            "the service's DNS name are not in /status)"
        )
    token = os.environ.get(remote.token_env) or None
    if drill.overrides and token is None:
        refused.append(f"method: the drill sets overrides, and ${remote.token_env} holds no admin token")
    if refused or remote.policy is None:
        raise DrillRefused(drill.name, refused)
    return StagingTarget(remote, load_policy(remote.policy), token)


async def run_drill(
    drill: Drill, target: DrillTarget, report_dir: Path, *, dry_run: bool = False, timing: Timing = Timing()
) -> DrillOutcome:
    """Runs the drill and writes its report in `report_dir`; with `dry_run`, only checks it and returns its
    schedule. Raises DrillRefused before starting anything when it cannot be run against `target`;
    an error of the target mid-drill is raised after the rollback and the report."""
    refused = problems(drill, target)
    if refused:
        raise DrillRefused(drill.name, refused)
    steps = tuple(schedule(drill))
    if dry_run:
        return DrillOutcome(drill.name, steps, None, None)
    journal = Journal(drill.name, drill.description, datetime.now(UTC).isoformat(timespec="seconds"))
    try:
        await _Run(drill, target, journal, timing).run()
    finally:
        figures = await asyncio.to_thread(write_report, journal, report_dir)
        if isinstance(target, ReportsResults):
            await target.report(drill_result(figures, report_dir))
    return DrillOutcome(drill.name, steps, figures, report_dir)


def drill_result(figures: DrillFigures, report_dir: Path) -> DrillResult:
    """What the drilled plane is told: the verdict and each expectation's, and where the report is."""
    return DrillResult(
        drill=figures.drill,
        passed=figures.passed,
        finished_at=time.time(),
        expectations=tuple(
            ExpectationOutcome(name=e.name, passed=e.passed, message=e.message[:500])
            for e in figures.expectations[:MAX_EXPECTATIONS]
        ),
        report=str(report_dir)[:500],
    )


class _Run:
    def __init__(self, drill: Drill, target: DrillTarget, journal: Journal, timing: Timing) -> None:
        self.drill, self.target, self.journal, self.timing = drill, target, journal, timing
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.active: dict[str, Fault] = {}  # fault id -> fault injected (or being injected) and not cleared
        self.load: LoadGenerator | None = None

    def now(self) -> float:
        return self.loop.time() - self.t0

    async def _call(self, what: Awaitable[T], limit: float | None = None) -> T:
        async with asyncio.timeout(limit or self.timing.call_timeout):
            return await what

    async def run(self) -> None:
        try:
            await self._call(self.target.start(), self.timing.start_timeout)
            self.t0 = self.loop.time()
            await self._with_clients()
        finally:
            await self._call(self.target.stop())

    async def _with_clients(self) -> None:
        clients = self.target.clients()
        settings = LoadSettings(
            clients.dns,
            clients.name,
            clients.groups,
            clients.targets,
            model=clients.model,
            bucket=self.timing.bucket,
        )
        self.load = load = LoadGenerator(settings, self.target.policy)
        await load.start()
        sampler = asyncio.create_task(self._sample())
        offset: float | None = None
        try:
            before = await self._steady("before", self.timing.steady_before)
            self.journal.append(before)
            if not before.held:
                log.warning("drill %s: the steady state did not hold, so nothing was broken", self.drill.name)
                return
            offset = self.now()
            try:
                await self._method(offset)
                await self._watch(offset)
            finally:
                await self._rollback()
            self.journal.append(await self._steady("after", self.timing.steady_after))
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            try:
                await load.stop(self.timing.stop_grace)
            finally:
                offset_load = load.started_at - self.t0
                self.journal.extend(client_events(load.report(), offset_load, self.timing.bucket, self.now()))
        if offset is not None:
            self.journal.extend(evaluate(self.drill, self.journal, self.now(), offset))

    # ------------------------------------------------------------------ the method

    async def _method(self, offset: float) -> None:
        tasks = [
            asyncio.create_task(
                self._fault(f"f{i + 1}", step.fault, offset)
                if isinstance(step, FaultStep)
                else self._override(step.override, offset)
            )
            for i, step in enumerate(self.drill.method)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))

    async def _fault(self, fid: str, fault: Fault, offset: float) -> None:
        region = getattr(fault, "region", None)
        params = fault.model_dump(mode="json", exclude={"kind", "region"})
        await self._until(offset + fault.at)
        # Started and active before the call: the fault takes hold somewhere inside it (so detection is
        # never flattered), and an inject that fails or is cancelled may have broken something already.
        self.journal.append(FaultStarted(self.now(), fid, fault.kind, region, params))
        self.active[fid] = fault
        await self._call(self.target.inject(fault, fault.end - fault.at + self.timing.ttl_margin))
        log.info("drill %s: %s injected: %s", self.drill.name, fid, _describe(fault))
        await self._until(offset + fault.end)
        await self._clear(fid)

    async def _clear(self, fid: str) -> None:
        fault = self.active[fid]
        try:
            await self._call(self.target.clear(fault))
            log.info("drill %s: %s cleared", self.drill.name, fid)
        finally:
            del self.active[fid]
            params = fault.model_dump(mode="json", exclude={"kind", "region"})
            self.journal.append(
                FaultEnded(self.now(), fid, fault.kind, getattr(fault, "region", None), params)
            )

    async def _override(self, step: OverrideStep, offset: float) -> None:
        await self._until(offset + step.at)
        await self._call(self.target.override(step))

    async def _watch(self, offset: float) -> None:
        """Until every timed expectation holds, or cannot any more: its deadline has passed."""
        deadline = offset + horizon(self.drill)
        while self.now() < deadline:
            timed = evaluate(
                self.drill, self.journal, self.now(), offset, only=lambda e: isinstance(e, TIMED)
            )
            if all(r.passed for r in timed):
                return
            await asyncio.sleep(0.25)

    async def _rollback(self) -> None:
        """Clears every fault still in force, each on its own: one that cannot be cleared does not keep the
        others broken (its time-to-live, and the target's stop, still mend it)."""
        for fid in list(self.active):
            try:
                await self._clear(fid)
            except (ControlPlaneError, TimeoutError, OSError) as exc:
                log.warning("drill %s: could not clear %s: %s", self.drill.name, fid, exc)

    # ------------------------------------------------------------------ watching

    async def _sample(self) -> None:
        due = self.loop.time()
        while True:
            at = self.now()
            try:
                look = await self._call(self.target.look(at), self.timing.look_timeout)
            except (ControlPlaneError, TimeoutError, OSError) as exc:
                log.debug("drill %s: look at %.2f s failed: %s", self.drill.name, at, exc)
            else:
                self._record(look)
            due = max(due + self.timing.sample, self.loop.time())
            await asyncio.sleep(due - self.loop.time())

    def _record(self, look: Look) -> None:
        if look.health is not None:
            self.journal.append(look.health)
            # The overrides come with the health from the admin API: without it they were not seen.
            self.journal.append(OverrideSample(look.at, look.overrides))
        self.journal.extend(look.plans)
        if look.dns is not None:
            self.journal.append(look.dns)

    def _buckets(self) -> list[ClientBucket]:
        """The client requests finished so far, in journal form (the journal gets them once, at the end)."""
        assert self.load is not None
        offset = self.load.started_at - self.t0
        events = client_events(self.load.report(), offset, self.timing.bucket, self.now())
        return [e for e in events if isinstance(e, ClientBucket)]

    async def _steady(self, phase: Literal["before", "after"], bound: float) -> SteadyState:
        """The steady state over the last window, checked until it holds or `bound` seconds have passed."""
        window = self.timing.steady_window
        started = self.now()
        await self._until(started + window)
        while True:
            now = self.now()
            found = steady_state(
                self.drill.steady_state, self.journal, self._buckets(), now - window, now, phase
            )
            if found.held or now - started >= bound:
                return found
            await asyncio.sleep(STEADY_RECHECK)
