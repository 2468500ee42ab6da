"""The demo policy run as three replicas on etcd, as a drill target (`target: replicas`).

Simulated regions in this process, one etcd member, and the replica processes of chaos/replicas.py, each
behind proxies of its own. The drill's clients ask the embedded DNS of one replica (the watcher: one that
did not lead when the target started) and the drill looks at the plane through the watcher's admin API: a
follower serves the leader's plan, so what it shows is what the plane decided. Region faults go to the
regions themselves (every replica sees them); replica faults kill, pause or cut off one replica, by default
the one that leads when the fault starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from chaos.drill import LEADER, Fault, OverrideStep, RegionFault, ReplicaFault, ReplicaMode
from chaos.etcdproc import EtcdCluster, EtcdDidNotStart
from chaos.loadgen import Target
from chaos.loopback import DEMO_POLICY
from chaos.remotetarget import MEND, PlaneView, clients_of, refuse_unsupported, region_spec
from chaos.replicas import Link, ReplicaDidNotStart, ReplicaStack
from chaos.simregion import SimFleet, SimRegion
from chaos.target import Clients, Look, TargetError
from controlplane.policy import Policy, load_policy

log = logging.getLogger(__name__)
REPLICAS = 3
LEASE_TTL = 3
START_TIMEOUT = 90.0  # three cold replicas and a leader on a loaded two-core runner
PREFIX = "/controlplane/drill"
_CUTS = {ReplicaMode.CUT_REGIONS: Link.REGIONS, ReplicaMode.CUT_ETCD: Link.ETCD}


class ReplicaTarget:
    def __init__(self, *, policy_path: Path = DEMO_POLICY, slow_start: float = 1.0) -> None:
        self.policy_path = policy_path
        self.slow_start = slow_start
        # The shipped policy's names, to check a drill before anything starts; start() replaces it.
        self.policy: Policy = load_policy(policy_path)
        self._token = secrets.token_urlsafe(16)
        self._dir: Path | None = None
        self._etcd: EtcdCluster | None = None
        self._fleet: SimFleet | None = None
        self._stack: ReplicaStack | None = None
        self._view: PlaneView | None = None
        self._watcher = ""
        self._hit: dict[int, str] = {}  # id of a replica fault in force -> the replica it broke
        self._paused: dict[str, asyncio.TimerHandle] = {}  # replica -> its SIGCONT when the ttl runs out

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise TargetError("a plane of replicas needs etcd (apt-get install etcd-server)")
        self._dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="drill-replicas-"))
        self._etcd = EtcdCluster(binary, self._dir / "etcd", 1)
        try:
            await asyncio.to_thread(self._etcd.start)
        except EtcdDidNotStart as exc:
            raise TargetError(str(exc)) from None
        model = self.policy.probes.inference.model or "demo-llm"
        self._fleet = SimFleet(
            [
                SimRegion(r.name, urlsplit(r.endpoint).hostname or "127.0.0.1", 0, 0, model=r.model or model)
                for r in self.policy.regions
            ]
        )
        await self._fleet.start()
        data = await asyncio.to_thread(self._policy_data)
        self._stack = ReplicaStack(
            data, self._etcd.endpoints, self._dir, replicas=REPLICAS, prefix=PREFIX, lease_ttl=LEASE_TTL,
            token=self._token,
        )  # fmt: skip
        try:
            await self._stack.start()
            leader = await self._stack.wait_leader(within=START_TIMEOUT)
        except (ReplicaDidNotStart, TimeoutError) as exc:
            raise TargetError(f"the replicas did not start: {exc}") from None
        self._watcher = [n for n in self._stack.names if n != leader][-1]
        watcher = self._stack[self._watcher]
        self.policy = await asyncio.to_thread(load_policy, watcher.policy_path)
        self._view = PlaneView(self.policy, watcher.api, ("127.0.0.1", watcher.dns_port), self._token)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        # Ready is not enough: until the follower serves the leader's plan its DNS answers no address, and
        # the drill's clients would count that (and cache it) against the drill.
        while not (await self._view.ready() and await self._serves_a_plan()):
            if loop.time() > deadline:
                raise TargetError(
                    f"{self._watcher} did not serve the leader's plan within {START_TIMEOUT:g}s"
                )
            await asyncio.sleep(0.1)

    async def _serves_a_plan(self) -> bool:
        assert self._view is not None
        status, body = await self._view.request("GET", "/status")
        return status == 200 and bool(body.get("services"))

    def _policy_data(self) -> dict[str, Any]:
        """The policy with each region at its simulated server and no HAProxy (replicas serve DNS)."""
        assert self._fleet is not None
        data: dict[str, Any] = yaml.safe_load(self.policy_path.read_text(encoding="utf-8"))
        for region in data["regions"]:
            region["endpoint"] = self._fleet[region["name"]].endpoint
        data["providers"].pop("haproxy", None)
        for service in data["services"]:
            service["slow_start"] = self.slow_start
        return data

    async def stop(self) -> None:
        for handle in self._paused.values():
            handle.cancel()
        self._paused.clear()
        self._hit.clear()
        if self._view is not None:
            await self._view.close()
            self._view = None
        if self._stack is not None:
            await self._stack.stop()  # SIGCONTs a paused replica before its SIGTERM
            self._stack = None
        if self._fleet is not None:
            await self._fleet.stop()
            self._fleet = None
        if self._etcd is not None:
            await asyncio.to_thread(self._etcd.close)
            self._etcd = None
        if self._dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._dir, True)
            self._dir = None

    @property
    def stack(self) -> ReplicaStack:
        return self._plane()[0]

    def _plane(self) -> tuple[ReplicaStack, SimFleet, PlaneView]:
        if self._stack is None or self._fleet is None or self._view is None:
            raise TargetError("the replicas target is not started")
        return self._stack, self._fleet, self._view

    # ------------------------------------------------------------------ clients and looks

    def clients(self) -> Clients:
        _, fleet, view = self._plane()
        targets = {sim.host: Target(name, sim.endpoint) for name, sim in fleet.regions.items()}
        return clients_of(self.policy, view.dns_server, targets)

    async def look(self, at: float) -> Look:
        return await self._plane()[2].look(at)

    async def override(self, step: OverrideStep) -> None:
        await self._plane()[2].override(step)  # through the watcher: overrides are shared through etcd

    # ------------------------------------------------------------------ faults

    def supports(self, fault: Fault) -> str | None:
        if isinstance(fault, RegionFault):
            names = {r.name for r in self.policy.regions}
            return (
                None if fault.region in names else f"no region {fault.region!r} ({', '.join(sorted(names))})"
            )
        if isinstance(fault, ReplicaFault):
            names = {f"r{i}" for i in range(1, REPLICAS + 1)}
            ok = fault.replica == LEADER or fault.replica in names
            return (
                None if ok else f"no replica {fault.replica!r}: {LEADER} or one of {', '.join(sorted(names))}"
            )
        return f"a plane of replicas takes region and replica faults, not {fault.kind} faults"

    async def inject(self, fault: Fault, ttl: float) -> None:
        refuse_unsupported(self, fault)
        stack, fleet, view = self._plane()
        if isinstance(fault, RegionFault):
            await view.region_fault(fault.region, fleet[fault.region].control_url, region_spec(fault, ttl))
            return
        assert isinstance(fault, ReplicaFault)
        name = fault.replica if fault.replica != LEADER else await stack.leader()
        if name is None:
            raise TargetError("no single replica leads: there is no leader to break")
        if name == self._watcher:
            raise TargetError(f"{name} serves the drill's clients and looks: break another replica")
        self._hit[id(fault)] = name
        match fault.mode:
            case ReplicaMode.KILL:
                await stack.kill(name)  # a dead process needs no ttl: clear() or stop() starts or ends it
            case ReplicaMode.PAUSE:
                stack.pause(name)
                self._paused[name] = asyncio.get_running_loop().call_later(ttl, stack.resume, name)
            case ReplicaMode.CUT_REGIONS | ReplicaMode.CUT_ETCD:
                stack.cut(name, _CUTS[fault.mode], ttl=ttl)

    async def clear(self, fault: Fault) -> None:
        stack, fleet, view = self._plane()
        if isinstance(fault, RegionFault):
            await view.region_fault(fault.region, fleet[fault.region].control_url, MEND)
            return
        assert isinstance(fault, ReplicaFault)
        name = self._hit.pop(id(fault), None)
        if name is None:
            return  # never injected
        match fault.mode:
            case ReplicaMode.KILL:
                await stack.spawn(name)
                try:
                    await stack.wait_listening(name)
                except ReplicaDidNotStart as exc:
                    raise TargetError(str(exc)) from None
            case ReplicaMode.PAUSE:
                with contextlib.suppress(KeyError):
                    self._paused.pop(name).cancel()
                stack.resume(name)
            case ReplicaMode.CUT_REGIONS | ReplicaMode.CUT_ETCD:
                stack.heal(name, _CUTS[fault.mode])
