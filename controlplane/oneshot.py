"""One probe round and one decision outside the daemon: what `controlplane plan` shows and `apply` applies."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from controlplane import safety
from controlplane.changes import ChangeSet
from controlplane.engine import decide
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import ManagedProvider, ProviderError
from controlplane.providers.factory import build_providers
from controlplane.reconciler import Outcome, Reconciler
from controlplane.state import StateStore
from controlplane.weights.artifacts import ArtifactView, model_pairs
from controlplane.weights.sync import attempt_sync
from probes.health import HealthTracker, health_view
from probes.scheduler import ProbeScheduler

FIRST_SPREAD = 0.2  # seconds: every first probe goes out at once, whatever each kind's period


async def observe_once(policy: Policy) -> HealthTracker:
    """Probe every region with every enabled kind once (bounded by the slowest probe's timeout)."""
    tracker = HealthTracker()
    scheduler = ProbeScheduler(
        policy,
        sink=lambda obs: tracker.observe(obs, policy.health),
        is_transitioning=lambda region, kind: False,
        first_spread=FIRST_SPREAD,
    )
    task = asyncio.create_task(scheduler.run())
    budget = FIRST_SPREAD + max(policy.probes.timeout, policy.probes.inference.timeout) + 1.0
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget):
                await scheduler.first_round.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await scheduler.close()
    return tracker


@dataclass(frozen=True, slots=True)
class OneShot:
    """A decision and, per provider, the change set against what it really holds (or why it could not)."""

    plan: RoutingPlan
    outcomes: list[Outcome]
    owned: dict[str, int]  # records each provider held before: the safety gate's base
    in_process: list[str]  # providers whose state only the daemon holds: left out


async def survey_weights(policy: Policy, known: ArtifactView) -> ArtifactView:
    """`known` (what the daemon last saw) after one survey of every model's buckets: a bucket that cannot be
    read now keeps its last answer, as in the daemon, so a one-shot plan agrees with it."""
    view = known.only(model_pairs(policy))
    for model in policy.models:
        report = await attempt_sync(policy, model, dry_run=True)
        view = view.with_report(report, [r.name for r in policy.model_regions(model)], time.time())
    return view


async def _decide(policy: Policy, state_dir: Path) -> RoutingPlan:
    persisted = await asyncio.to_thread(StateStore(state_dir).load)
    tracker, artifacts = await asyncio.gather(
        observe_once(policy), survey_weights(policy, persisted.artifacts)
    )
    now = time.time()
    health = health_view(tracker.kinds, policy, now)
    return decide(policy, health, persisted.plan, now, persisted.overrides, artifacts)


@contextlib.asynccontextmanager
async def _live(policy: Policy) -> AsyncIterator[tuple[list[ManagedProvider], list[Outcome], list[str]]]:
    """The policy's providers whose state another process can read, started; an Outcome with the error for
    each that would not start; and the names of the in-process ones (the daemon's business)."""
    started: list[ManagedProvider] = []
    failed: list[Outcome] = []
    local: list[str] = []
    try:
        for provider in build_providers(policy):
            if provider.capabilities.in_process:
                local.append(provider.name)
                await provider.close()
                continue
            try:
                await provider.start()
            except ProviderError as exc:
                failed.append(Outcome(provider.name, ChangeSet(provider.name, ()), False, str(exc)))
                await provider.close()
                continue
            started.append(provider)
        yield started, failed, local
    finally:
        for provider in started:
            await provider.close()


async def _survey(
    policy: Policy,
    plan: RoutingPlan,
    providers: list[ManagedProvider],
    failed: list[Outcome],
    local: list[str],
) -> OneShot:
    reconciler = Reconciler(list(providers), attempts=1)
    outcomes = await reconciler.reconcile(policy, plan, dry_run=True)
    owned = {p.name: len(reconciler.held(p.name)) for p in providers}
    return OneShot(plan, [*outcomes, *failed], owned, local)


async def plan_once(policy: Policy, state_dir: Path) -> OneShot:
    """Probe once, decide, and diff against what each provider really holds; change nothing."""
    plan = await _decide(policy, state_dir)
    async with _live(policy) as (providers, failed, local):
        return await _survey(policy, plan, providers, failed, local)


async def apply_once(
    policy: Policy,
    state_dir: Path,
    confirm: Callable[[OneShot], Awaitable[bool]],
    *,
    force: bool = False,
) -> tuple[OneShot, list[Outcome] | None]:
    """`plan_once`, then the safety gate (unless `force`), then `confirm`, then apply; returns the survey and
    the outcomes of the apply (None when nothing was applied: no changes, or not confirmed)."""
    plan = await _decide(policy, state_dir)
    async with _live(policy) as (providers, failed, local):
        survey = await _survey(policy, plan, providers, failed, local)
        changed = [o for o in survey.outcomes if o.changes and o.error is None]
        if not changed:
            return survey, None
        if not force:
            tuning = {p.name: p.tuning for p in providers}
            safety.check(
                ((o.changes, survey.owned[o.provider], tuning[o.provider].max_delete_share) for o in changed),
                policy,
            )
        if not await confirm(survey):
            return survey, None
        outcomes = await Reconciler(list(providers)).reconcile(policy, plan)
    store = StateStore(state_dir)
    persisted = await asyncio.to_thread(store.load)
    await store.save(
        plan, persisted.overrides, persisted.artifacts
    )  # the daemon resumes from what was applied
    await store.close()
    return survey, outcomes
