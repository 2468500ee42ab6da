"""Reconciler: render a plan per provider, diff it against what the provider holds, apply only changes."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from controlplane.changes import ChangeSet, Record, diff
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import (
    PermanentProviderError,
    Provider,
    ProviderError,
    TransientProviderError,
)
from controlplane.residency import Violation, check_plan

log = logging.getLogger(__name__)


class ResidencyViolation(Exception):
    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(map(str, violations)))


@dataclass(frozen=True, slots=True)
class Outcome:
    provider: str
    changes: ChangeSet
    applied: bool
    error: str | None = None
    deferred: bool = False  # changes waiting for the provider's min_interval: not held yet, no error either


@dataclass(slots=True)
class ProviderStats:
    applies: int = 0
    changes: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    last_error: str | None = None
    reads: int = 0  # current() calls: what a rate-limited API is charged for besides writes
    deferred: int = 0  # changes held back by the provider's min_interval, applied at a later step


@dataclass(slots=True)
class _Known:
    """What the reconciler believes a provider holds: read at `read_at` (monotonic), or written since."""

    records: list[Record]
    read_at: float


def check_capabilities(provider: Provider, desired: Sequence[Record]) -> None:
    """What a provider declared it cannot do, it is never asked to: the core checks before any apply."""
    caps = provider.capabilities
    problems = [
        f"{r.name} [{r.group}] {r.region}: weight {r.weight} outside 0..{caps.max_weight}"
        for r in desired
        if not 0 <= r.weight <= caps.max_weight
    ]
    if not caps.client_groups and len({r.group for r in desired}) > 1:
        problems.append("it cannot tell client groups apart, but was given several")
    if not caps.weights and any(0 < r.weight < caps.max_weight for r in desired):
        problems.append("it cannot split traffic by weight, but was given a split")
    if problems:
        raise PermanentProviderError(f"{provider.name}: refused before apply: " + "; ".join(problems[:5]))


@dataclass
class Reconciler:
    """Drives each provider at its own pace (see providers.base.Tuning): a provider is read before a diff
    only when what it holds is not known, is older than its resync period, or an apply just failed; a
    change set is sent at most once per its min_interval; nothing is sent when nothing changed."""

    providers: Sequence[Provider]
    attempts: int = 3
    timeout: float | None = None  # overrides every provider's tuning.timeout (tests)
    backoff_initial: float = 0.05
    backoff_max: float = 1.0
    stats: dict[str, ProviderStats] = field(default_factory=dict)
    _known: dict[str, _Known] = field(default_factory=dict)
    _applied_at: dict[str, float] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)  # deferred providers: when they may write again

    def next_due(self) -> float | None:
        """The monotonic time a deferred change set may be sent, the soonest of them; None if none waits."""
        names = {p.name for p in self.providers}  # a provider gone since it was deferred waits for nothing
        return min((at for name, at in self._due.items() if name in names), default=None)

    async def reconcile(
        self,
        policy: Policy,
        plan: RoutingPlan,
        *,
        dry_run: bool = False,
        providers: Sequence[Provider] | None = None,
    ) -> list[Outcome]:
        """One provider failing never blocks the others; a residency violation blocks them all. `providers`:
        only these of ours (a replica that does not lead writes only to its own servers)."""
        violations = check_plan(policy, plan)
        if violations:
            raise ResidencyViolation(violations)
        chosen = self.providers if providers is None else providers
        return list(await asyncio.gather(*(self._one(p, plan, dry_run) for p in chosen)))

    def held(self, provider: str) -> list[Record]:
        """What `provider` was last read or written to hold; empty before it was first read."""
        known = self._known.get(provider)
        return list(known.records) if known else []

    def forget(self, provider: str) -> None:
        """Read `provider` afresh before its next diff (a new instance, or someone else changed it)."""
        self._known.pop(provider, None)

    async def _held(self, provider: Provider, fresh: bool) -> list[Record]:
        known = self._known.get(provider.name)
        now = time.monotonic()
        if not fresh and known is not None and now - known.read_at < provider.tuning.resync:
            return known.records
        self.stats[provider.name].reads += 1
        records = await provider.current()
        self._known[provider.name] = _Known(records, now)
        return records

    async def _one(self, provider: Provider, plan: RoutingPlan, dry_run: bool) -> Outcome:
        stats = self.stats.setdefault(provider.name, ProviderStats())
        changes = ChangeSet(provider.name, ())
        tuning = provider.tuning
        try:
            async with asyncio.timeout(self.timeout if self.timeout is not None else tuning.timeout):
                desired = provider.render(plan)
                check_capabilities(provider, desired)
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(TransientProviderError),
                    stop=stop_after_attempt(self.attempts),
                    wait=wait_exponential_jitter(
                        multiplier=self.backoff_initial, max=self.backoff_max, jitter=self.backoff_initial
                    ),
                    reraise=True,
                ):
                    with attempt:
                        # A retry always re-reads: a half-applied change set must not be replayed against
                        # a world that has moved.
                        fresh = attempt.retry_state.attempt_number > 1
                        changes = diff(provider.name, desired, await self._held(provider, fresh))
                        if not changes or dry_run:
                            self._due.pop(provider.name, None)
                            break
                        # Pace a new change set; a retry of this one is paced by the backoff instead.
                        since = time.monotonic() - self._applied_at.get(provider.name, -math.inf)
                        if not fresh and since < tuning.min_interval:
                            stats.deferred += 1
                            self._due[provider.name] = time.monotonic() - since + tuning.min_interval
                            return Outcome(provider.name, changes, False, deferred=True)
                        self._due.pop(provider.name, None)
                        self._applied_at[provider.name] = time.monotonic()
                        await provider.apply(changes)
                        known = self._known[provider.name]
                        self._known[provider.name] = _Known(sorted(desired), known.read_at)
        except Exception as exc:  # one provider's bug must not stop the others, nor the daemon
            self.forget(provider.name)
            stats.errors += 1
            stats.consecutive_errors += 1
            stats.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, ProviderError | TimeoutError):
                log.warning("provider %s failed: %s", provider.name, stats.last_error)
            else:
                log.exception("provider %s raised an unexpected error", provider.name)
            return Outcome(provider.name, changes, False, stats.last_error)
        stats.consecutive_errors = 0
        if changes and not dry_run:
            stats.applies += 1
            stats.changes += len(changes)
        return Outcome(provider.name, changes, bool(changes) and not dry_run)
