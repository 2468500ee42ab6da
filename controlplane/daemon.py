"""The daemon: supervised probe, reconcile, reload and weight-sync tasks around one event loop, with graceful
shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from opentelemetry import trace

from controlplane.coord.etcd import EtcdError
from controlplane.coord.quorum import QuorumView, combine
from controlplane.coord.replica import Coordinator, Role
from controlplane.cost.live import LiveCost, live_cost
from controlplane.cost.model import marginal_cost_per_mtok
from controlplane.cost.prices import PriceBook, PriceSheetError, check_fleets, load_prices, shipped_sheets
from controlplane.drillresult import DrillResult
from controlplane.engine import decide
from controlplane.errors import InvalidInput, Unavailable
from controlplane.overrides import Override, active
from controlplane.plan import RoutingPlan
from controlplane.policy import Model, Policy, PolicyError, load_policy
from controlplane.providers.base import Fence, Fenced, ManagedProvider, ProviderError
from controlplane.reconciler import Outcome, ProviderStats, Reconciler, ResidencyViolation
from controlplane.state import MAX_OVERRIDES, AuditLog, StateStore
from controlplane.telemetry import traced_probes
from controlplane.weights.artifacts import ArtifactView, model_pairs
from controlplane.weights.sync import SyncReport, attempt_sync
from probes.health import (
    HealthTracker,
    HealthView,
    Kinds,
    State,
    enabled_kinds,
    health_view,
    region_health,
)
from probes.loop import LoopMonitor
from probes.observation import Observation, ProbeKind
from probes.scheduler import DEFAULT_PROBES, ProbeFunction, ProbeScheduler

log = logging.getLogger(__name__)
tracer = trace.get_tracer("controlplane")

RESTART_INITIAL = 0.1  # seconds before a crashed task's first restart, doubling to RESTART_MAX
RESTART_MAX = 5.0
STABLE_AFTER = 10.0  # a task that ran this long before crashing starts its backoff afresh
CRASH_LOOP_WINDOW = 60.0  # two crashes in a row within this long: not ready
YOUNG_GC_THRESHOLD = 20_000  # see settle_heap()


ProviderFactory = Callable[[Policy], list[ManagedProvider]]


@runtime_checkable
class Fenceable(Protocol):
    """A provider that refuses to write unless its fence says this replica leads (see providers.base.Fence)."""

    fence: Fence | None


@dataclass(frozen=True)
class DaemonConfig:
    policy_path: Path
    state_dir: Path
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    token: str | None = None
    reconcile_interval: float = 1.0
    reload_interval: float = 1.0
    dry_run: bool = False
    provider_start_retry: float = 5.0  # seconds between attempts to start a provider that failed to start
    prices: tuple[Path, ...] = ()  # the user's price sheets, read after the shipped ones (figure by figure)
    replica: str = "local"  # this replica's name among the plane's replicas (policy `coordination`)


def _weights(plan: RoutingPlan | None) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for g in plan or ():
        out.setdefault(g.service, {})[g.group] = g.as_dict()
    return out


@dataclass
class Counters:
    observations: Counter[tuple[str, str, bool]] = field(default_factory=Counter)
    plan_changes: int = 0
    reconciles: int = 0
    reloads_ok: int = 0
    reloads_rejected: int = 0
    residency_blocks: int = 0
    task_restarts: Counter[str] = field(default_factory=Counter)
    syncs: int = 0  # sync_model runs, surveys (dry runs) included


@dataclass
class TaskHealth:
    """One supervised task's crashes: `streak` counts crashes with no stable run between them."""

    crashes: int = 0
    streak: int = 0
    last_crash: float | None = None
    last_error: str | None = None

    @property
    def crash_looping(self) -> bool:
        return (
            self.streak >= 2
            and self.last_crash is not None
            and time.time() - self.last_crash < CRASH_LOOP_WINDOW
        )


class TooManyOverrides(InvalidInput):
    http_status = 409


class UnpricedFleets(InvalidInput):
    """A policy whose fleets need figures the price sheets lack: refused like any invalid policy."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Pricing:
    """The price sheets as loaded for one policy, and what the engine leans on: each fleet region's cost per
    1M output tokens of serving more there."""

    book: PriceBook
    costs: Mapping[str, float]


def load_pricing(policy: Policy, sheets: Sequence[Path]) -> Pricing | None:
    """The shipped sheets, then `sheets`, checked against `policy`'s fleets. None when the policy has no
    fleet and no sheet was given: then it runs exactly as before, needing no price sheet at all.

    Raises PriceSheetError for a sheet that cannot be read, UnpricedFleets for figures a fleet lacks."""
    if not sheets and not any(r.fleet for r in policy.regions):
        return None
    book = load_prices([*shipped_sheets(), *sheets])
    problems = check_fleets(policy, book)
    if problems:
        raise UnpricedFleets(problems)
    costs = {r.name: cost for r in policy.regions if (cost := marginal_cost_per_mtok(r, book)) is not None}
    return Pricing(book, costs)


class Daemon:
    """Observe -> decide -> gate -> diff -> apply, forever, changing nothing before the first probe round."""

    def __init__(
        self,
        config: DaemonConfig,
        policy: Policy,
        provider_factory: ProviderFactory,
        probes: Mapping[ProbeKind, ProbeFunction] = DEFAULT_PROBES,
    ) -> None:
        self.config = config
        self.policy = policy
        self.coordinator = (
            Coordinator(policy.coordination, config.replica, on_change=self._wake_soon)
            if policy.coordination is not None
            else None
        )
        self._led_epoch: int | None = None  # the epoch this replica last led under
        self._followed: tuple[int, float] | None = (
            None  # the leader's plan last served: (epoch, generated_at)
        )
        self.pricing = load_pricing(policy, config.prices)
        self._provider_factory = provider_factory
        self.providers: list[ManagedProvider] = []
        self.reconciler = Reconciler([])
        self.tracker = HealthTracker()
        self.store = StateStore(config.state_dir)
        self.audit = AuditLog(
            config.state_dir / "audit.jsonl", mirror=self.coordinator.note if self.coordinator else None
        )
        persisted = self.store.load()
        self.state_problems = persisted.problems  # what state.json held that did not validate
        # The damping base: the last plan some provider really holds (or, at start, the one persisted).
        self.plan: RoutingPlan | None = persisted.plan
        self.overrides: tuple[Override, ...] = persisted.overrides
        self.tasks: dict[str, TaskHealth] = {}
        self.last_change: float | None = None
        self.counters = Counters()
        self.started_at = time.time()
        self.loop_monitor = LoopMonitor()
        self.scheduler = ProbeScheduler(
            policy,
            sink=self.observe,
            is_transitioning=self._transitioning,
            probes=traced_probes(probes),
            monitor=self.loop_monitor,
        )
        self.held_after_stall: int | None = None  # the stall the last hold was for (its number)
        self._states: dict[str, State] = {}
        self.last_view: HealthView | None = None  # what the last step judged (peers' votes counted)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._policy_mtime = self._mtime()
        self._last_errors: dict[str, str | None] = {}
        self._unstarted: set[str] = set()
        self._next_start_retry = 0.0
        # What each region's bucket holds. Until every model was surveyed once the reconciler waits (as it
        # waits for the first probe round) and a restart keeps serving the persisted plan.
        self.artifacts = persisted.artifacts.only(model_pairs(policy))
        self.weights_surveyed = asyncio.Event()
        if not policy.models:
            self.weights_surveyed.set()
        self.last_sync: float | None = None
        self._sync_wanted = asyncio.Event()
        self.last_drill: DrillResult | None = None  # the last drill a runner reported against this plane

    # ---------------------------------------------------------------- inputs

    def _wake_soon(self) -> None:
        self._wake.set()

    def _transitioning(self, region: str, kind: ProbeKind) -> bool:
        return self.tracker.transitioning(region, kind)

    def observe(self, obs: Observation) -> None:
        """Scheduler sink: fold one result in, and wake the reconciler at once if a verdict flipped."""
        self.tracker.observe(obs, self.policy.health)
        self.counters.observations[(obs.region, obs.kind.value, obs.ok)] += 1
        state = region_health(self.tracker.kinds, self.policy, obs.region, obs.at).state
        if self._states.get(obs.region) is not state:
            self._states[obs.region] = state
            self._wake.set()

    @property
    def ready(self) -> bool:
        """Looked at every region and every bucket once, and no task is crash-looping."""
        return (
            self.scheduler.first_round.is_set()
            and self.weights_surveyed.is_set()
            and not any(t.crash_looping for t in self.tasks.values())
        )

    def health(self, now: float | None = None) -> HealthView:
        return health_view(self.tracker.kinds, self.policy, time.time() if now is None else now)

    def live_cost(self, view: HealthView | None = None) -> LiveCost | None:
        """What the served plan costs per hour at the output token rates the servers count; None when no
        region has a fleet."""
        if self.pricing is None:
            return None
        view = view or self.health()
        rates = {name: h.tokens_out_per_s for name, h in view.regions.items()}
        return live_cost(self.policy, self.plan, rates, self.pricing.book)

    async def add_override(self, override: Override) -> None:
        """Takes effect at once (on every replica, when coordinated); persisting it locally is best-effort
        (see `store.health`)."""

        def added(overrides: tuple[Override, ...]) -> tuple[Override, ...]:
            kept = active(overrides, time.time())
            if len(kept) >= MAX_OVERRIDES:
                raise TooManyOverrides(
                    f"{len(kept)} overrides are active, the most this daemon keeps; remove some"
                )
            return (*kept, override)

        await self._change_overrides(added)
        await self.audit.write("override_added", override=override.to_json())

    async def remove_overrides(self, region: str, service: str | None = None) -> int:
        removed = 0

        def without(overrides: tuple[Override, ...]) -> tuple[Override, ...]:
            nonlocal removed
            kept = tuple(
                o for o in overrides if not (o.region == region and (service is None or o.service == service))
            )
            removed = len(overrides) - len(kept)
            return kept

        await self._change_overrides(without)
        if removed:
            await self.audit.write("override_removed", region=region, service=service, count=removed)
        return removed

    async def _change_overrides(self, change: Callable[[tuple[Override, ...]], tuple[Override, ...]]) -> None:
        """Replicas share their overrides through etcd, so one posted to any replica holds on all of them and
        outlives any one of them; a daemon alone keeps them itself."""
        if self.coordinator is None:
            wanted = change(self.overrides)
        else:
            try:
                wanted = await self.coordinator.change_overrides(change)
            except EtcdError as exc:
                raise Unavailable(f"overrides live in etcd, which did not answer: {exc}") from exc
        if wanted != self.overrides:
            self.overrides = wanted
            await self.store.save(self.plan, self.overrides, self.artifacts)
            self._wake.set()

    async def record_drill(self, result: DrillResult) -> None:
        self.last_drill = result
        await self.audit.write("drill_reported", **result.model_dump(mode="json"))

    # ---------------------------------------------------------------- the loop

    async def step(self) -> RoutingPlan:
        """One decision, gated and reconciled. Returns the plan decided."""
        with tracer.start_as_current_span("reconcile") as span:
            now = time.time()
            coordinator = self.coordinator
            quorum, leading = None, True
            if coordinator is not None:
                self.overrides = coordinator.overrides
                quorum = coordinator.judge()
                leading = quorum.frozen is None and coordinator.leads()
                if leading:
                    await self._take_lead(coordinator)
            expired = [o for o in self.overrides if now >= o.until]
            if expired:
                self.overrides = active(self.overrides, now)
                await self.audit.write("override_expired", overrides=[o.to_json() for o in expired])
            # One policy (and its prices) for the whole step, whatever a reload does.
            policy, previous, pricing = self.policy, self.plan, self.pricing
            # Judging thousands of regions and deciding for thousands of services take tens of milliseconds
            # that probes would otherwise wait out: both are pure, so they run off the loop, on a snapshot.
            own, view, plan = await asyncio.to_thread(
                _judge_and_decide,
                dict(self.tracker.kinds),
                policy,
                previous,
                now,
                self.overrides,
                self.artifacts,
                pricing.costs if pricing else None,
                quorum,
                leading,
            )
            self.last_view = view
            if coordinator is not None:
                await coordinator.publish({name: h.state for name, h in own.regions.items()})
            if plan is None or (coordinator is not None and not coordinator.leads()):
                # Not leading (or no longer: the lease may have lapsed while it decided).
                span.set_attribute("plan.role", coordinator.role().value if coordinator else "")
                return await self._follow(policy, coordinator) if coordinator else RoutingPlan(now, ())
            changed = _weights(plan) != _weights(previous)
            span.set_attribute("plan.changed", changed)
            stall = self._unseen_stall()
            if changed and stall is not None:
                # The plane itself could not look: a change now would rest on results it failed to collect
                # (every region stale, probes timed out), not on the regions. Hold until it has looked again.
                span.set_attribute("plan.held_after_stall", True)
                if self.held_after_stall != stall:
                    self.held_after_stall = stall
                    log.warning("event loop stalled: holding the plan until every region is probed again")
                    await self.audit.write("held_after_stall", lag=round(self.loop_monitor.max_lag, 3))
                return plan
            try:
                outcomes = await self.reconciler.reconcile(policy, plan, dry_run=self.config.dry_run)
            except ResidencyViolation as exc:
                # The engine and the gate disagree: apply nothing, keep the last plan, shout.
                self.counters.residency_blocks += 1
                log.error("residency gate refused plan: %s", exc)
                await self.audit.write("plan_refused", violations=[str(v) for v in exc.violations])
                span.set_attribute("plan.refused", True)
                return plan
            self.counters.reconciles += 1
            # A provider failing the same way every second is audited once, not every second.
            reported = [
                o for o in outcomes if o.applied or (o.error and o.error != self._last_errors.get(o.provider))
            ]
            self._last_errors = {o.provider: o.error for o in outcomes}
            held = not outcomes or any(o.error is None and not o.deferred for o in outcomes)
            span.set_attribute("plan.held", held)
            if held:
                # What the providers now serve is the plan, and the next step's damping base. When none
                # holds it, the base stays what they do hold: damping from a wish would let weights jump.
                self.plan = plan
                if coordinator is not None:
                    await self._share(coordinator, plan, changed, outcomes)
            if changed and held:
                _log_changes(previous, plan)
                self.counters.plan_changes += 1
                self.last_change = now
                await self.audit.write(
                    "plan_changed",
                    before=_weights(previous),
                    after=_weights(plan),
                    groups=plan.to_json()["groups"],
                    health={r: _health_summary(h) for r, h in view.regions.items()},
                    overrides=[o.to_json() for o in self.overrides],
                )
            if reported:
                await self.audit.write(
                    "applied",
                    providers=[
                        {
                            "provider": o.provider,
                            "changes": len(o.changes),
                            "applied": o.applied,
                            "error": o.error,
                        }
                        for o in reported
                    ],
                    changes=[o.changes.to_json() for o in reported if o.changes],
                )
            if (changed and held) or expired:
                await self.store.save(self.plan, self.overrides, self.artifacts)
            return plan

    async def _take_lead(self, coordinator: Coordinator) -> None:
        """On a new epoch: start from the plan the last leader shared (what the providers hold, as far as the
        plane knows), and read every provider afresh: what this replica knew of them dates from before."""
        lead = coordinator.leadership
        if lead is None or lead.epoch == self._led_epoch:
            return
        self._led_epoch = lead.epoch
        shared = coordinator.shared_plan
        if shared is not None and shared.epoch < lead.epoch:
            self.plan = _within(shared.plan, self.policy)
        for provider in self.providers:
            self.reconciler.forget(provider.name)
        log.info("%s leads the plane, epoch %d", coordinator.replica, lead.epoch)
        await self.audit.write(
            "leading", replica=coordinator.replica, epoch=lead.epoch, after=shared.leader if shared else None
        )

    async def _share(
        self, coordinator: Coordinator, plan: RoutingPlan, changed: bool, outcomes: Sequence[Outcome]
    ) -> None:
        """After the leader's apply: tell the other replicas (their embedded DNS serves what it decided); step
        down when a provider holds a newer leader's epoch than this one."""
        if any(o.applied for o in outcomes):
            coordinator.applied_at = time.time()
        refused = [o for o in outcomes if o.error is not None and o.error.startswith(f"{Fenced.__name__}:")]
        coordinator.fenced_writes += len(refused)
        lead = coordinator.leadership
        if refused and lead is not None:
            lead.depose(f"provider {refused[0].provider} refused the write: {refused[0].error}")
            return
        shared = coordinator.shared_plan
        if changed or shared is None or shared.epoch != self._led_epoch:
            await coordinator.share_plan(plan)

    async def _follow(self, policy: Policy, coordinator: Coordinator) -> RoutingPlan:
        """Not leading: serve the leader's plan on this replica's own servers (its embedded DNS) and write to
        nothing else; frozen or starting: change nothing at all."""
        shared = coordinator.shared_plan
        if coordinator.role() is not Role.FOLLOWER or shared is None:
            return self.plan or RoutingPlan(time.time(), ())
        plan = _within(shared.plan, policy)
        try:
            outcomes = await self.reconciler.reconcile(
                policy, plan, dry_run=self.config.dry_run, providers=self._writable(self.providers)
            )
        except ResidencyViolation as exc:
            if self._followed != (shared.epoch, shared.plan.generated_at):
                self._followed = (shared.epoch, shared.plan.generated_at)
                self.counters.residency_blocks += 1
                log.error("residency gate refused the leader's plan: %s", exc)
                await self.audit.write("plan_refused", violations=[str(v) for v in exc.violations])
            return self.plan or plan
        if outcomes and all(o.error is not None for o in outcomes):
            return plan
        if _weights(plan) != _weights(self.plan):
            _log_changes(self.plan, plan)
            self.counters.plan_changes += 1
            self.last_change = time.time()
            await self.audit.write(
                "plan_followed", leader=shared.leader, epoch=shared.epoch, after=_weights(plan)
            )
            self.plan = plan
            await self.store.save(self.plan, self.overrides, self.artifacts)
        self._followed = (shared.epoch, shared.plan.generated_at)
        return plan

    def _writable(self, providers: Sequence[ManagedProvider]) -> list[ManagedProvider]:
        """What this replica may write to: everything when alone or leading; else only its own servers."""
        if self.coordinator is None or self.coordinator.leads():
            return list(providers)
        return [p for p in providers if p.capabilities.in_process]

    def _unseen_stall(self) -> int | None:
        """The number of a recent stall while some region has not been probed since it ended; else None."""
        loop_now = asyncio.get_running_loop().time()
        pending = self.loop_monitor.state.overdue(loop_now)  # this step may be the first to run after it
        end = loop_now if pending is not None else self.loop_monitor.last_stall_end
        number = self.loop_monitor.stalls + (pending is not None)
        if end is None or loop_now - end > self.policy.health.stale_after:
            return None  # long enough ago: every result since is fresh or honestly missing
        since = time.time() - (loop_now - end)
        kinds = enabled_kinds(self.policy)
        for region in self.policy.regions:
            for kind in kinds:
                found = self.tracker.kinds.get((region.name, kind))
                if found is None or found.last.at < since:
                    return number
        return None

    async def _reconcile_loop(self) -> None:
        await self.scheduler.first_round.wait()
        await self.weights_surveyed.wait()
        log.info("first probe round complete; reconciling")
        await self.audit.write(
            "ready", health={r: _health_summary(h) for r, h in self.health().regions.items()}
        )
        while True:
            wait = self.config.reconcile_interval
            if (due := self.reconciler.next_due()) is not None:
                # A change a provider's pace held back goes out as soon as it may, not at the next tick.
                wait = min(wait, max(0.0, due - time.monotonic()))
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._unstarted and time.monotonic() >= self._next_start_retry:
                await self._start_providers(only=self._unstarted)
            await self.step()

    def _mtime(self) -> float:
        try:
            return self.config.policy_path.stat().st_mtime
        except OSError:
            return 0.0

    async def reload(self) -> bool:
        """Load the policy file and the price sheets again; an invalid edit, or fleets the sheets cannot price,
        is refused and the last good policy keeps running."""
        try:
            policy = await asyncio.to_thread(load_policy, self.config.policy_path)
            pricing = await asyncio.to_thread(load_pricing, policy, self.config.prices)
        except (PolicyError, PriceSheetError) as exc:
            return await self._refuse_reload([str(p) for p in exc.problems])
        except UnpricedFleets as exc:
            return await self._refuse_reload(exc.problems)
        if policy == self.policy and pricing == self.pricing:
            return True
        if policy.coordination != self.policy.coordination:
            # The replica's etcd session, prefix and lease were made for the old settings.
            return await self._refuse_reload(["coordination: a change takes a restart of every replica"])
        old = self.policy
        refused = await self._swap_providers(old, policy)
        if refused is not None:
            return await self._refuse_reload([refused])
        # A model whose version (or source, or where it may live) changed is surveyed before the new policy
        # routes: its regions' answers were about something else, and without a survey every one of them
        # would lose its traffic at once, even those already holding the new version.
        changed = _changed_models(old, policy)
        reports = [await self._run_sync(policy, m, dry_run=True) for m in changed]
        self._set_policy_and_weights(policy, pricing, reports)
        self.tracker.forget_regions(r.name for r in policy.regions)
        self.scheduler.update_policy(policy)
        settle_heap()
        self.counters.reloads_ok += 1
        log.info("policy reloaded from %s", self.config.policy_path)
        await self.audit.write("policy_loaded", path=str(self.config.policy_path))
        self._wake.set()
        if changed:
            self._sync_wanted.set()
        return True

    def _set_policy_and_weights(
        self, policy: Policy, pricing: Pricing | None, reports: Sequence[SyncReport]
    ) -> None:
        """One step, no await: a decision never sees the new policy with the old policy's weights or prices."""
        view = self.artifacts
        for report in reports:
            view = view.with_report(report, _regions_of(policy, report.model), time.time())
        self.policy = policy
        self.pricing = pricing
        self.artifacts = view.only(model_pairs(policy))
        if not policy.models:
            self.weights_surveyed.set()

    async def _refuse_reload(self, problems: list[str]) -> bool:
        self.counters.reloads_rejected += 1
        for problem in problems:
            log.error("policy reload refused, keeping the last good policy: %s", problem)
        await self.audit.write("policy_rejected", problems=problems)
        return False

    async def _swap_providers(self, old: Policy, policy: Policy) -> str | None:
        """Move the providers to `policy`, make before break: a provider that can adopt it in place does; one
        that needs a new instance (a new port, say) gets it started and loaded with the current plan before
        the old one stops. If a replacement cannot start, everything is put back and the reason returned:
        the reload is refused and the old providers keep serving."""
        running = {p.name: p for p in self.providers}
        adopted: list[ManagedProvider] = []
        started: list[ManagedProvider] = []
        retired: list[ManagedProvider] = []
        spare: list[ManagedProvider] = []
        failure: str | None = None
        wanted = self._make_providers(policy)
        for fresh in wanted:
            current = running.pop(fresh.name, None)
            if current is not None:
                try:
                    current.update_policy(policy)
                except ProviderError:
                    pass  # it needs a new instance
                else:
                    adopted.append(current)
                    spare.append(fresh)
                    continue
                try:
                    await fresh.start()
                except Exception as exc:
                    failure = f"providers.{fresh.name}: the new settings cannot be served, so the old ones stay: {exc}"
                    spare.append(fresh)
                    break
                started.append(fresh)
                retired.append(current)
                self.reconciler.forget(fresh.name)
            elif await self._start_one(fresh):
                started.append(fresh)
        if failure is not None:
            for provider in adopted:
                provider.update_policy(old)
            await _close_all([*started, *spare])
            return failure
        await self._serve_held_plan(self._writable(started), policy)
        await _close_all([*retired, *running.values(), *spare])
        order = [p.name for p in wanted]
        self.providers = sorted([*adopted, *started], key=lambda p: order.index(p.name))
        self.reconciler.providers = list(self.providers)
        self._unstarted &= set(order)
        return None

    async def _serve_held_plan(self, providers: Sequence[ManagedProvider], policy: Policy) -> None:
        """Give `providers` the last plan at once, so neither a restart nor a new provider instance answers
        empty until the next decision; refused whole if it breaks `policy`'s residency."""
        if self.plan is None or not providers:
            return
        plan = _within(self.plan, policy)
        try:
            outcomes = await Reconciler(list(providers), attempts=1).reconcile(
                policy, plan, dry_run=self.config.dry_run
            )
        except ResidencyViolation as exc:
            log.error("not serving the last plan, it breaks residency: %s", exc)
            await self.audit.write("resume_refused", violations=[str(v) for v in exc.violations])
            return
        await self.audit.write(
            "plan_served",
            age=round(time.time() - plan.generated_at, 3),
            providers={o.provider: o.error or "ok" for o in outcomes},
        )

    # ---------------------------------------------------------------- weights

    def request_sync(self) -> None:
        """Sync every model now rather than at the next interval (a sync under way finishes first)."""
        self._sync_wanted.set()

    async def sync_weights(self) -> None:
        """Survey every model's buckets (a dry run: listings and markers only) and publish what each region
        holds, so routing learns at once what is missing; then copy, verify and promote where needed. A
        region that lost its files thus stops getting traffic while they are copied back, and gets it again
        when they verify."""
        policy = self.policy
        surveys = [(m, await self._run_sync(policy, m, dry_run=True)) for m in policy.models]
        for _, report in surveys:
            self._publish(report)
        self.weights_surveyed.set()
        for model, survey in surveys:
            todo = {d.plan.region for d in survey.destinations if not d.ok and d.plan.blocked is None}
            if survey.error is None and todo:
                self._publish(await self._run_sync(policy, model, dry_run=False, only=todo), todo)
        self.last_sync = time.time()
        await self.store.save(self.plan, self.overrides, self.artifacts)

    async def _run_sync(
        self, policy: Policy, model: Model, *, dry_run: bool, only: set[str] | None = None
    ) -> SyncReport:
        self.counters.syncs += 1
        return await attempt_sync(policy, model, dry_run=dry_run, only_regions=only)

    def _publish(self, report: SyncReport, only: set[str] | None = None) -> None:
        policy = self.policy
        model = next((m for m in policy.models if m.name == report.model), None)
        if model is None or model.version != report.version:
            return  # a reload moved on while it ran; the sync it requested will answer for the new version
        regions = _regions_of(policy, model.name)
        self.artifacts = self.artifacts.with_report(
            report, [r for r in regions if only is None or r in only], time.time()
        )
        log_level = logging.WARNING if report.error or not report.ok else logging.INFO
        log.log(
            log_level,
            "weights of %s %s (%s): %s",
            model.name,
            model.version,
            "survey" if report.dry_run else "sync",
            report.error
            or ", ".join(
                f"{d.plan.region} {'ok' if d.ok else '; '.join(d.failures) or 'needs sync'}"
                for d in report.destinations
            ),
        )
        self._wake.set()

    async def _sync_loop(self) -> None:
        while True:
            self._sync_wanted.clear()
            await self.sync_weights()
            try:
                async with asyncio.timeout(self.policy.sync.interval):
                    await self._sync_wanted.wait()
            except TimeoutError:
                pass

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval)
            mtime = self._mtime()
            if mtime != self._policy_mtime:
                self._policy_mtime = mtime
                await self.reload()

    async def _start_providers(self, only: set[str] | None = None) -> None:
        """Start the policy's providers (or retry just `only`); one failing to start never blocks the others:
        it is audited, left out, and retried every few seconds."""
        started = [
            provider
            for provider in self._make_providers(self.policy)
            if (only is None or provider.name in only) and await self._start_one(provider)
        ]
        self._next_start_retry = time.monotonic() + self.config.provider_start_retry
        self.providers = [*self.providers, *started] if only is not None else started
        self.reconciler.providers = list(self.providers)

    def _make_providers(self, policy: Policy) -> list[ManagedProvider]:
        """The policy's providers; when coordinated, each one outside this process asks the coordinator before
        every write whether this replica still leads, and under which epoch."""
        providers = self._provider_factory(policy)
        if self.coordinator is not None:
            for provider in providers:
                if isinstance(provider, Fenceable) and not provider.capabilities.in_process:
                    provider.fence = self.coordinator.fence
        return providers

    async def _start_one(self, provider: ManagedProvider) -> bool:
        try:
            await provider.start()
        except Exception as exc:
            stats = self.reconciler.stats.setdefault(provider.name, ProviderStats())
            stats.errors += 1
            stats.consecutive_errors += 1
            error = f"{type(exc).__name__}: {exc}"
            if provider.name not in self._unstarted or error != stats.last_error:
                log.error("provider %s failed to start, running without it: %s", provider.name, exc)
                await self.audit.write("provider_failed", provider=provider.name, error=error)
            stats.last_error = error
            self._unstarted.add(provider.name)
            await _close_all([provider])
            return False
        self._unstarted.discard(provider.name)
        self.reconciler.forget(provider.name)  # a new instance: what the old one held says nothing
        return True

    async def _close_providers(self) -> None:
        await _close_all(self.providers)
        self.providers = []
        self.reconciler.providers = []
        self._unstarted.clear()

    # ---------------------------------------------------------------- supervision

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Keep a task alive: restart it after a crash with capped backoff, afresh once it had run stably;
        crashing twice in a row makes the daemon not ready. Cancellation ends it."""
        health = self.tasks.setdefault(name, TaskHealth())
        delay = RESTART_INITIAL
        while True:
            began = time.monotonic()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - began >= STABLE_AFTER:
                    delay, health.streak = RESTART_INITIAL, 0
                health.crashes += 1
                health.streak += 1
                health.last_crash = time.time()
                health.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self.counters.task_restarts[name] += 1
                if health.streak == 1:
                    log.exception("task %s crashed; restarting in %.1fs", name, delay)
                else:  # the traceback was logged at the first crash of this streak
                    log.error(
                        "task %s crashed again (%d in a row): %s", name, health.streak, health.last_error
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)

    def request_stop(self) -> None:
        self._stop.set()

    async def stopped(self) -> None:
        await self._stop.wait()

    async def run(
        self, extra: Sequence[tuple[str, Callable[[], Awaitable[None]]]] = (), *, handle_signals: bool = True
    ) -> None:
        """Run until request_stop() or SIGTERM/SIGINT; then stop every task and close every provider."""
        loop = asyncio.get_running_loop()
        _raise_descriptor_limit()
        installed: list[signal.Signals] = []
        # SIGHUP too: a closed terminal should shut the plane down cleanly, not orphan its children.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if handle_signals else ():
            try:
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        await self.audit.write(
            "start", policy=str(self.config.policy_path), resumed_plan=self.plan is not None
        )
        await self._start_providers()
        await self._serve_held_plan(self._writable(self.providers), self.policy)
        settle_heap()
        tasks = [
            asyncio.create_task(self._supervise(name, factory), name=name)
            for name, factory in (
                ("loop", self.loop_monitor.run),
                ("probes", self.scheduler.run),
                ("reconcile", self._reconcile_loop),
                ("reload", self._reload_loop),
                ("sync", self._sync_loop),
                *((("coordination", self.coordinator.run),) if self.coordinator else ()),
                *extra,
            )
        ]
        try:
            await self._stop.wait()
        finally:
            log.info("shutting down")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.scheduler.close()
            await self._close_providers()
            await self.store.save(self.plan, self.overrides, self.artifacts)
            await self.audit.write("stop")
            await self.store.close()
            await self.audit.close()
            for sig in installed:
                loop.remove_signal_handler(sig)


def _judge_and_decide(
    kinds: Kinds,
    policy: Policy,
    previous: RoutingPlan | None,
    now: float,
    overrides: tuple[Override, ...],
    artifacts: ArtifactView,
    costs: Mapping[str, float] | None,
    quorum: QuorumView | None = None,
    leading: bool = True,
) -> tuple[HealthView, HealthView, RoutingPlan | None]:
    """This replica's own view, the view it acts on (its peers' votes counted), and the plan decided on it:
    None when a coordinated replica may not decide (it does not lead, or it is frozen)."""
    own = health_view(kinds, policy, now)
    if quorum is None:
        return own, own, decide(policy, own, previous, now, overrides, artifacts, costs)
    view = combine(own, quorum)
    if not leading:
        return own, view, None
    return own, view, decide(policy, view, previous, now, overrides, artifacts, costs)


def _regions_of(policy: Policy, model: str) -> list[str]:
    return [r.name for r in policy.model_regions(policy.model(model))]


def _changed_models(old: Policy, new: Policy) -> list[Model]:
    """`new`'s models whose weights must be looked at again: new ones, and those whose source, version,
    jurisdictions or serving regions changed."""
    before = {m.name: (m, _regions_of(old, m.name)) for m in old.models}
    return [m for m in new.models if before.get(m.name) != (m, _regions_of(new, m.name))]


def _raise_descriptor_limit() -> None:
    """Use every descriptor the hard limit allows: held connections must exhaust a bounded pool of ours,
    never the process, or probes fail with EMFILE and healthy regions look dead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _close_all(providers: Sequence[ManagedProvider]) -> None:
    for provider in providers:
        try:
            await provider.close()
        except Exception:
            log.exception("closing provider %s", provider.name)


def _within(plan: RoutingPlan, policy: Policy) -> RoutingPlan:
    """`plan` cut down to what `policy` still has: its services and groups, and each group's allowed regions
    (the residency gate still checks the result)."""
    allowed = {
        (s.name, g.name): {r.name for r in policy.allowed_regions(s, g)}
        for s in policy.services
        for g in policy.client_groups
    }
    return RoutingPlan(
        plan.generated_at,
        tuple(
            replace(g, weights=tuple(w for w in g.weights if w.region in regions))
            for g in plan
            if (regions := allowed.get((g.service, g.group))) is not None
        ),
    )


def settle_heap() -> None:
    """Move what start-up or a reload allocated (policy, providers, thousands of probe targets) out of the
    garbage collector's sight: full collections then stop pausing the loop for tens of milliseconds.

    Also let the young generation grow before it is collected: a decision for thousands of services makes
    millions of short-lived objects without cycles, which reference counting frees, and at the default
    threshold (700 allocations) the collector would scan them hundreds of times per decision for nothing.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


def _health_summary(h: Any) -> dict[str, Any]:
    return {"state": h.state.value, "score": h.score, "reasons": list(h.reasons)}


def _log_changes(before: RoutingPlan | None, after: RoutingPlan) -> None:
    """One log line per changed weight, with its reason: the daemon log tells the story the audit log proves."""
    for g in after:
        previous = before.group(g.service, g.group) if before else None
        for w in g.weights:
            old = previous.weight(w.region) if previous else None
            if old != w.weight:
                log.info(
                    "%s/%s %s: %s -> %d%% (%s; %s)",
                    g.service,
                    g.group,
                    w.region,
                    old,
                    w.weight,
                    g.mode.value,
                    w.reason,
                )
