"""Test doubles for providers: a backend with scripted failures, and one that fails in a way nobody wrapped.

Both render like the reference provider (MemoryProvider), so what they should hold is known exactly.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.changes import ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import LOCAL, Capabilities, PermanentProviderError
from controlplane.providers.memory import MemoryProvider
from controlplane.providers.records import render_records


@dataclass(frozen=True)
class Fault:
    """What one apply() does instead of succeeding."""

    error: Exception
    # Changes of the set the backend makes before it fails: a half-applied change set.
    applied_first: int = 0
    # When given, the apply waits for it first: a backend that hangs until the test lets it go.
    release: asyncio.Event | None = None


class FlakyProvider(MemoryProvider):
    """The reference provider whose next applies follow a script of faults, then succeed; it remembers
    every change set it was sent and how often its state was read."""

    def __init__(self, policy: Policy, name: str = "flaky", faults: Iterable[Fault] = ()) -> None:
        super().__init__(policy, name)
        self.faults = deque(faults)
        self.sent: list[ChangeSet] = []
        self.reads = 0

    async def current(self) -> list[Record]:
        self.reads += 1
        return await super().current()

    async def apply(self, changes: ChangeSet) -> None:
        self.sent.append(changes)
        if not self.faults:
            await super().apply(changes)
            return
        fault = self.faults.popleft()
        if fault.release is not None:
            await fault.release.wait()
        if fault.applied_first:
            await super().apply(ChangeSet(changes.provider, changes.changes[: fault.applied_first]))
        raise fault.error


class BrokenProvider:
    """A provider whose backend fails in a way nobody wrapped: every read raises a plain RuntimeError
    (and, when asked, so does start()). It renders like the reference provider."""

    capabilities = Capabilities(client_groups=True, weights=True, max_weight=100)
    tuning = LOCAL

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
