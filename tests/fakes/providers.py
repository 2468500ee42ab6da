"""Test doubles for providers."""

from __future__ import annotations

from controlplane.changes import ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import Capabilities, PermanentProviderError
from controlplane.providers.memory import render_records


class BrokenProvider:
    """A provider whose backend fails in a way nobody wrapped: every read raises a plain RuntimeError
    (and, when asked, so does start()). It renders like the reference provider."""

    capabilities = Capabilities(client_groups=True, weights=True, max_weight=100)

    def __init__(self, policy: Policy, name: str = "broken", fail_start: bool = False) -> None:
        self.name = name
        self._policy = policy
        self._fail_start = fail_start
        self.closed = False

    def render(self, plan: RoutingPlan) -> list[Record]:
        return render_records(self._policy, plan)

    async def current(self) -> list[Record]:
        raise RuntimeError("backend exploded")

    async def apply(self, changes: ChangeSet) -> None:
        raise RuntimeError("backend exploded")

    async def start(self) -> None:
        if self._fail_start:
            raise PermanentProviderError(f"{self.name}: cannot connect to the backend")

    def update_policy(self, policy: Policy) -> None:
        self._policy = policy

    async def close(self) -> None:
        self.closed = True
