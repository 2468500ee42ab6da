"""The in-process reference provider: what tests and dry runs measure the others against."""

from __future__ import annotations

from controlplane.changes import ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import (
    LOCAL,
    Capabilities,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    Tuning,
)
from controlplane.providers.records import MAX_WEIGHT, RecordKey, apply_changes, render_records


class MemoryProvider:
    """Holds records in memory: the provider that tests and dry runs measure the others against."""

    capabilities: Capabilities = Capabilities(client_groups=True, weights=True, max_weight=MAX_WEIGHT)
    tuning: Tuning = LOCAL

    def __init__(self, policy: Policy, name: str = "memory") -> None:
        self.name = name
        self._policy = policy
        self._records: dict[RecordKey, Record] = {}
        self._failures = 0
        self._failure: type[ProviderError] = TransientProviderError

    def fail_next(self, n: int = 1, transient: bool = True) -> None:
        """Make the next `n` apply() calls fail without changing anything (fault injection for tests)."""
        self._failures = n
        self._failure = TransientProviderError if transient else PermanentProviderError

    def update_policy(self, policy: Policy) -> None:
        self._policy = policy

    def render(self, plan: RoutingPlan) -> list[Record]:
        return render_records(self._policy, plan)

    async def current(self) -> list[Record]:
        return sorted(self._records.values())

    async def apply(self, changes: ChangeSet) -> None:
        if self._failures > 0:
            self._failures -= 1
            raise self._failure(f"{self.name}: injected failure")
        self._records = apply_changes(self.name, self._records, changes)

    async def start(self) -> None:
        """Nothing to start; present so the daemon manages every provider alike."""

    async def close(self) -> None:
        """Nothing to release; records survive so a test can look at them after shutdown."""
