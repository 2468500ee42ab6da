"""The daemon: supervised probe, reconcile and reload tasks around one event loop, with graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from opentelemetry import trace

from controlplane.engine import decide
from controlplane.overrides import Override, active
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy, PolicyError, load_policy
from controlplane.providers.base import Provider
from controlplane.reconciler import ProviderStats, Reconciler, ResidencyViolation
from controlplane.state import AuditLog, StateStore
from controlplane.telemetry import traced_probes
from probes.health import (
    HealthTracker,
    HealthView,
    Kinds,
    State,
    health_view,
    region_health,
)
from probes.observation import Observation, ProbeKind
from probes.scheduler import DEFAULT_PROBES, ProbeFunction, ProbeScheduler

log = logging.getLogger(__name__)
tracer = trace.get_tracer("controlplane")


class ManagedProvider(Provider, Protocol):
    """A provider the daemon can start, reconfigure and stop."""

    async def start(self) -> None: ...

    def update_policy(self, policy: Policy) -> None: ...


ProviderFactory = Callable[[Policy], list[ManagedProvider]]


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
        self._provider_factory = provider_factory
        self.providers: list[ManagedProvider] = []
        self.reconciler = Reconciler([])
        self.tracker = HealthTracker()
        self.store = StateStore(config.state_dir)
        self.audit = AuditLog(config.state_dir / "audit.jsonl")
        persisted = self.store.load()
        self.plan: RoutingPlan | None = persisted.plan
        self.overrides: tuple[Override, ...] = persisted.overrides
        self.last_change: float | None = None
        self.counters = Counters()
        self.started_at = time.time()
        self.scheduler = ProbeScheduler(
            policy, sink=self.observe, is_transitioning=self._transitioning, probes=traced_probes(probes)
        )
        self._states: dict[str, State] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._policy_mtime = self._mtime()
        self._last_errors: dict[str, str | None] = {}
        self._unstarted: set[str] = set()
        self._next_start_retry = 0.0

    # ---------------------------------------------------------------- inputs

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
        return self.scheduler.first_round.is_set()

    def health(self, now: float | None = None) -> HealthView:
        return health_view(self.tracker.kinds, self.policy, time.time() if now is None else now)

    async def add_override(self, override: Override) -> None:
        self.overrides = (*active(self.overrides, time.time()), override)
        await self.store.save(self.plan, self.overrides)
        await self.audit.write("override_added", override=override.to_json())
        self._wake.set()

    async def remove_overrides(self, region: str, service: str | None = None) -> int:
        kept = tuple(
            o
            for o in self.overrides
            if not (o.region == region and (service is None or o.service == service))
        )
        removed = len(self.overrides) - len(kept)
        if removed:
            self.overrides = kept
            await self.store.save(self.plan, self.overrides)
            await self.audit.write("override_removed", region=region, service=service, count=removed)
            self._wake.set()
        return removed

    # ---------------------------------------------------------------- the loop

    async def step(self) -> RoutingPlan:
        """One decision, gated and reconciled. Returns the plan decided."""
        with tracer.start_as_current_span("reconcile") as span:
            now = time.time()
            expired = [o for o in self.overrides if now >= o.until]
            if expired:
                self.overrides = active(self.overrides, now)
                await self.audit.write("override_expired", overrides=[o.to_json() for o in expired])
            policy, previous = self.policy, self.plan  # one policy for the whole step, whatever a reload does
            # Judging thousands of regions and deciding for thousands of services take tens of milliseconds
            # that probes would otherwise wait out: both are pure, so they run off the loop, on a snapshot.
            view, plan = await asyncio.to_thread(
                _judge_and_decide, dict(self.tracker.kinds), policy, previous, now, self.overrides
            )
            changed = _weights(plan) != _weights(previous)
            span.set_attribute("plan.changed", changed)
            try:
                outcomes = await self.reconciler.reconcile(policy, plan, dry_run=self.config.dry_run)
            except ResidencyViolation as exc:
                # The engine and the gate disagree: apply nothing, keep the last plan, shout.
                self.counters.residency_blocks += 1
                log.error("residency gate refused plan: %s", exc)
                await self.audit.write("plan_refused", violations=[str(v) for v in exc.violations])
                span.set_attribute("plan.refused", True)
                return plan
            # What the providers now serve is the plan: publish it before the audit writes yield the loop.
            self.plan = plan
            self.counters.reconciles += 1
            # A provider failing the same way every second is audited once, not every second.
            applied = [
                o for o in outcomes if o.applied or (o.error and o.error != self._last_errors.get(o.provider))
            ]
            self._last_errors = {o.provider: o.error for o in outcomes}
            if changed:
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
            if applied:
                await self.audit.write(
                    "applied",
                    providers=[
                        {
                            "provider": o.provider,
                            "changes": len(o.changes),
                            "applied": o.applied,
                            "error": o.error,
                        }
                        for o in applied
                    ],
                    changes=[o.changes.to_json() for o in applied if o.changes],
                )
            if changed or expired:
                await self.store.save(self.plan, self.overrides)
            return plan

    async def _reconcile_loop(self) -> None:
        await self.scheduler.first_round.wait()
        log.info("first probe round complete; reconciling")
        await self.audit.write(
            "ready", health={r: _health_summary(h) for r, h in self.health().regions.items()}
        )
        while True:
            try:
                async with asyncio.timeout(self.config.reconcile_interval):
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
        """Load the policy file again; an invalid edit is refused and the last good policy keeps running."""
        try:
            policy = await asyncio.to_thread(load_policy, self.config.policy_path)
        except PolicyError as exc:
            self.counters.reloads_rejected += 1
            for problem in exc.problems:
                log.error("policy reload refused, keeping the last good policy: %s", problem)
            await self.audit.write("policy_rejected", problems=[str(p) for p in exc.problems])
            return False
        if policy == self.policy:
            return True
        old = self.policy
        self.policy = policy
        self.tracker.forget_regions(r.name for r in policy.regions)
        self.scheduler.update_policy(policy)
        if policy.providers != old.providers:
            await self._restart_providers()
        else:
            for provider in self.providers:
                provider.update_policy(policy)
        _settle_heap()
        self.counters.reloads_ok += 1
        log.info("policy reloaded from %s", self.config.policy_path)
        await self.audit.write("policy_loaded", path=str(self.config.policy_path))
        self._wake.set()
        return True

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
        started: list[ManagedProvider] = []
        for provider in self._provider_factory(self.policy):
            if only is not None and provider.name not in only:
                continue
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
                try:
                    await provider.close()
                except Exception:
                    log.exception("closing provider %s", provider.name)
                continue
            self._unstarted.discard(provider.name)
            started.append(provider)
        self._next_start_retry = time.monotonic() + self.config.provider_start_retry
        self.providers = [*self.providers, *started] if only is not None else started
        self.reconciler.providers = list(self.providers)

    async def _close_providers(self) -> None:
        for provider in self.providers:
            try:
                await provider.close()
            except Exception:
                log.exception("closing provider %s", provider.name)
        self.providers = []
        self.reconciler.providers = []
        self._unstarted.clear()

    async def _restart_providers(self) -> None:
        await self._close_providers()
        await self._start_providers()

    # ---------------------------------------------------------------- supervision

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Keep a task alive: log a crash and restart it with capped backoff; cancellation ends it."""
        delay = 0.1
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters.task_restarts[name] += 1
                log.exception("task %s crashed; restarting in %.1fs", name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def request_stop(self) -> None:
        self._stop.set()

    async def stopped(self) -> None:
        await self._stop.wait()

    async def run(
        self, extra: Sequence[tuple[str, Callable[[], Awaitable[None]]]] = (), *, handle_signals: bool = True
    ) -> None:
        """Run until request_stop() or SIGTERM/SIGINT; then stop every task and close every provider."""
        loop = asyncio.get_running_loop()
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
        _settle_heap()
        tasks = [
            asyncio.create_task(self._supervise(name, factory), name=name)
            for name, factory in (
                ("probes", self.scheduler.run),
                ("reconcile", self._reconcile_loop),
                ("reload", self._reload_loop),
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
            await self.store.save(self.plan, self.overrides)
            await self.audit.write("stop")
            for sig in installed:
                loop.remove_signal_handler(sig)


def _judge_and_decide(
    kinds: Kinds, policy: Policy, previous: RoutingPlan | None, now: float, overrides: tuple[Override, ...]
) -> tuple[HealthView, RoutingPlan]:
    view = health_view(kinds, policy, now)
    return view, decide(policy, view, previous, now, overrides)


def _settle_heap() -> None:
    """Move what start-up or a reload allocated (policy, providers, thousands of probe targets) out of the
    garbage collector's sight: full collections then stop pausing the loop for tens of milliseconds."""
    gc.collect()
    gc.freeze()


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
