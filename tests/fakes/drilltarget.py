"""A small drill target for the runner's tests: real simulated regions and a real embedded DNS on loopback,
driven by a stand-in for the daemon that takes a broken region out of DNS `lag` seconds after it broke and
puts it back `lag` after it mends (no probes, no engine: what the runner does is under test, not the plane).

It records what the runner asked of it, and what was still broken when it was stopped: its `stop` mends
nothing itself, so a test can see whether the runner rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from chaos.drill import Fault, OverrideStep, RegionFault
from chaos.journal import DnsSample, HealthSample, PlanSample, RegionHealth
from chaos.loadgen import GroupLoad, policy_targets
from chaos.loopback import free_port, loopback_policy
from chaos.simregion import FaultMode, FaultSpec, SimFleet
from chaos.target import Clients, Look, TargetError
from controlplane.policy import Policy, parse_policy
from controlplane.providers.localdns import LocalDnsProvider
from tests.builders import converge, plan

STEP = 0.05  # seconds between the stand-in plane's decisions
EU_SOURCE = "127.0.1.5"


@dataclass(frozen=True, slots=True)
class Override:
    region: str
    action: str
    until: float


class FakeTarget:
    def __init__(
        self,
        *,
        lag: float = 0.3,
        blind: bool = False,
        kinds: frozenset[str] = frozenset({"region"}),
        broken_from_start: frozenset[str] = frozenset(),
        refuse_inject: frozenset[str] = frozenset(),
    ) -> None:
        """`blind`: the plane never notices anything; `kinds`: the fault kinds it supports;
        `broken_from_start`: regions down before the drill; `refuse_inject`: regions whose faults fail."""
        self.policy: Policy = parse_policy(
            loopback_policy(free_port(), free_port(), f"127.0.0.1:{free_port()}"), "fake.yaml"
        )
        self.lag, self.blind, self.kinds = lag, blind, kinds
        self.broken_from_start, self.refuse_inject = broken_from_start, refuse_inject
        self.fleet = SimFleet.for_policy(self.policy)
        self.dns = LocalDnsProvider(self.policy)
        self.started = self.stopped = False
        self.injected: list[tuple[Fault, float]] = []  # (fault, ttl)
        self.cleared: list[Fault] = []
        self.broke = asyncio.Event()  # set at the first inject
        self.broken_at_stop: dict[str, FaultMode] = {}
        self.overrides: list[Override] = []
        self.weights: dict[str, dict[str, int]] = {}  # group -> region -> weight, as DNS answers
        self._since: dict[str, tuple[bool, float]] = {}  # region -> (down, since when)
        self._plane: asyncio.Task[None] | None = None

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        self.started = True
        await self.fleet.start()
        await self.dns.start()
        for region in self.broken_from_start:
            await self.fleet[region].set_fault(FaultSpec(FaultMode.DOWN))
        await self._decide()
        self._plane = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.broken_at_stop = {
            name: region.fault.mode
            for name, region in self.fleet.regions.items()
            if region.fault.mode != "ok"
        }
        if self._plane is not None:
            self._plane.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._plane
        await self.dns.close()
        await self.fleet.stop()

    def _out(self, region: str, now: float) -> bool:
        if any(o.region == region and o.action == "drain" and o.until > now for o in self.overrides):
            return True
        down = self.fleet[region].fault.mode != FaultMode.OK
        was, since = self._since.get(region, (False, float("-inf")))
        if down != was:
            self._since[region] = (down, now)
            since = now
        # The plane follows `lag` late: until then it still acts on the state before the change.
        seen = down if now - since >= self.lag else not down
        return seen and not self.blind

    async def _decide(self) -> None:
        now = self._now()
        out = {r.name for r in self.policy.regions if self._out(r.name, now)}
        service = self.policy.services[0]
        self.weights = {
            group.name: {
                r.name: 100 for r in self.policy.allowed_regions(service, group) if r.name not in out
            }
            for group in self.policy.client_groups
        }
        await converge(self.dns, plan(self.weights))

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(STEP)
            await self._decide()

    def clients(self) -> Clients:
        return Clients(
            dns=self.dns.address,
            name=self.policy.services[0].dns_name,
            groups=(GroupLoad("global", 20.0, clients=2), GroupLoad("eu", 10.0, source=EU_SOURCE, clients=2)),
            targets=policy_targets(self.policy),
            model=self.policy.probes.inference.model,
        )

    def supports(self, fault: Fault) -> str | None:
        return None if fault.kind in self.kinds else f"the fake target has no means for a {fault.kind} fault"

    async def inject(self, fault: Fault, ttl: float) -> None:
        self.injected.append((fault, ttl))
        self.broke.set()
        if not isinstance(fault, RegionFault):
            raise TargetError(f"the fake target cannot inject a {fault.kind} fault")
        if fault.region in self.refuse_inject:
            raise TargetError(f"{fault.region}'s control API refused the fault")
        await self.fleet[fault.region].set_fault(FaultSpec(FaultMode(fault.mode.value), ttl=ttl))

    async def clear(self, fault: Fault) -> None:
        self.cleared.append(fault)
        if isinstance(fault, RegionFault):
            await self.fleet[fault.region].set_fault(FaultSpec())

    async def override(self, step: OverrideStep) -> None:
        self.overrides.append(Override(step.region, step.action.value, self._now() + step.duration))

    async def look(self, at: float) -> Look:
        now = self._now()
        health = HealthSample(
            at,
            {
                r.name: RegionHealth("unhealthy" if self._out(r.name, now) else "healthy")
                for r in self.policy.regions
            },
        )
        answers = {g: frozenset(w) for g, w in self.weights.items() if g in ("global", "eu")}
        in_force = tuple((o.region, o.action) for o in self.overrides if o.until > now)
        return Look(at, health, (PlanSample(at, "chat", self.weights),), DnsSample(at, answers), in_force)
