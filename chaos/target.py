"""What a drill runs against: the seam between the drill runner and the stack it breaks.

The runner (chaos/runner.py) knows drills, schedules, journals and expectations; a target knows how to start
or reach a plane, break and mend its parts, and look at it. `DemoTarget` (chaos/demotarget.py) is the demo
stack on loopback; a staging stack reached through its admin API is another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from chaos.drill import Fault, OverrideStep
from chaos.journal import DnsSample, HealthSample, PlanSample
from chaos.loadgen import GroupLoad, Target
from controlplane.drillresult import DrillResult
from controlplane.errors import ControlPlaneError
from controlplane.policy import Policy


@dataclass(frozen=True, slots=True)
class Look:
    """One look at the plane, at `at` (seconds since the drill started). Absent parts could not be seen
    (the daemon is down, the admin API timed out) and say why in `errors`."""

    at: float
    health: HealthSample | None = None
    plans: tuple[PlanSample, ...] = ()  # one per service
    dns: DnsSample | None = None
    overrides: tuple[tuple[str, str], ...] = ()  # (region, action) of every override in force
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Clients:
    """How the load generator reaches the service as each client group."""

    dns: tuple[str, int]
    name: str  # the service's DNS name
    groups: tuple[GroupLoad, ...]
    targets: Mapping[str, Target] = field(default_factory=dict)  # answered address -> region endpoint
    model: str | None = None


class DrillTarget(Protocol):
    """A plane to drill. Every fault it injects also carries `ttl` inside the thing it breaks (a region's
    control API, the TCP proxy, the fault proxy), so a runner that dies cannot leave it broken; `clear` mends
    at once. Methods raise `TargetError` for what the target cannot do (a fault kind it has no means for)."""

    policy: Policy

    async def start(self) -> None:
        """Start (or connect to) the plane; return once it is ready (/readyz) or raise TargetError."""

    async def stop(self) -> None:
        """Stop what `start` started, mending every fault first. Safe to call twice and after a failed start."""

    def clients(self) -> Clients: ...

    async def inject(self, fault: Fault, ttl: float) -> None: ...

    async def clear(self, fault: Fault) -> None: ...

    async def override(self, step: OverrideStep) -> None:
        """POST the override through the admin API, for `step.duration` seconds."""

    async def look(self, at: float) -> Look: ...

    def supports(self, fault: Fault) -> str | None:
        """Why this target cannot inject `fault`, or None when it can (checked before anything starts)."""


@runtime_checkable
class ReportsResults(Protocol):
    """A target that is a plane running on (not one the runner started): it is told how the drill went."""

    async def report(self, result: DrillResult) -> None:
        """Tell the plane; a failure to is logged, never a failed drill."""


class TargetError(ControlPlaneError):
    """The target cannot do what was asked; the message says what and why."""
