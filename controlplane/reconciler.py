"""Reconciler: render a plan per provider, diff it against what the provider holds, apply only changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from controlplane.changes import ChangeSet, diff
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import Provider, ProviderError, TransientProviderError
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


@dataclass(slots=True)
class ProviderStats:
    applies: int = 0
    changes: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    last_error: str | None = None


@dataclass
class Reconciler:
    providers: Sequence[Provider]
    attempts: int = 3
    timeout: float = 5.0
    backoff_initial: float = 0.05
    backoff_max: float = 1.0
    stats: dict[str, ProviderStats] = field(default_factory=dict)

    async def reconcile(self, policy: Policy, plan: RoutingPlan, *, dry_run: bool = False) -> list[Outcome]:
        """One provider failing never blocks the others; a residency violation blocks them all."""
        violations = check_plan(policy, plan)
        if violations:
            raise ResidencyViolation(violations)
        return list(await asyncio.gather(*(self._one(p, plan, dry_run) for p in self.providers)))

    async def _one(self, provider: Provider, plan: RoutingPlan, dry_run: bool) -> Outcome:
        stats = self.stats.setdefault(provider.name, ProviderStats())
        changes = ChangeSet(provider.name, ())
        try:
            async with asyncio.timeout(self.timeout):
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(TransientProviderError),
                    stop=stop_after_attempt(self.attempts),
                    wait=wait_exponential_jitter(
                        multiplier=self.backoff_initial, max=self.backoff_max, jitter=self.backoff_initial
                    ),
                    reraise=True,
                ):
                    with attempt:
                        # Re-read current state on every attempt: a half-applied change set must not be
                        # replayed against a world that has moved.
                        changes = diff(provider.name, provider.render(plan), await provider.current())
                        if changes and not dry_run:
                            await provider.apply(changes)
        except Exception as exc:  # one provider's bug must not stop the others, nor the daemon
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
