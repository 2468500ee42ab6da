"""One probe round and one decision outside the daemon: what `controlplane plan` shows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from controlplane.engine import decide
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.factory import build_providers
from controlplane.reconciler import Outcome, Reconciler
from controlplane.state import StateStore
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


async def plan_once(policy: Policy, state_dir: Path) -> tuple[list[Outcome], RoutingPlan]:
    tracker = await observe_once(policy)
    persisted = StateStore(state_dir).load()
    now = time.time()
    plan = decide(policy, health_view(tracker.kinds, policy, now), persisted.plan, now, persisted.overrides)
    providers = build_providers(policy)
    try:
        outcomes = await Reconciler(list(providers), attempts=1).reconcile(policy, plan, dry_run=True)
    finally:
        for provider in providers:
            await provider.close()
    return outcomes, plan
