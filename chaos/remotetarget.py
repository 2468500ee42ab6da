"""A running plane as a drill target (staging), and what every target shares: the plane as a drill sees it
from outside, through its admin API and its DNS.

A staging plane is reached, never started: `StagingTarget` asks its admin API whether it is ready, looks at
it and sets overrides as an operator would, and breaks only its regions, through each region's control API
(SimRegion-compatible: POST /fault with a ttl). Its network, DNS provider, buckets and daemon are not the
drill's to break from here.

The policy comes from the drill file (`target.policy`), not from /status: /status names the regions and
their jurisdictions, but not the client groups, their sources, nor the service's DNS name, which the drill
needs to impersonate clients and to check its names before anything starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from chaos.drill import Fault, OverrideAction, OverrideStep, RegionFault, RegionMode, RemoteTarget
from chaos.journal import DnsSample, HealthSample, PlanSample, RegionHealth
from chaos.loadgen import GroupLoad, Target, policy_targets
from chaos.loopback import require_loopback
from chaos.target import Clients, DrillTarget, Look, TargetError
from controlplane.drillresult import DrillResult
from controlplane.policy import ClientGroup, Policy

log = logging.getLogger(__name__)
T = TypeVar("T")

HTTP_TIMEOUT = 2.0
LOOK_TIMEOUT = 1.0
READY_TIMEOUT = 30.0  # a staging plane is already running: this only waits out a restart
# The embedded DNS answers one weighted pick per query, so one query says little about which regions a group
# gets: a look asks in batches until it has seen every region it expects (those the plan weights and those
# the last look saw), and at most DNS_QUERIES times. A steady plane costs one batch per group; a region DNS
# answers one time in ten is missed by 64 queries with odds 0.9^64, about 1 in 850.
DNS_BATCH = 8
DNS_QUERIES = 64
TOKEN_HEADER = "Authorization"
GLOBAL_RATE = 20.0  # requests per second of the default group; every other group gets OTHER_RATE
OTHER_RATE = 10.0


def group_source(group: ClientGroup) -> str | None:
    """An address inside the group's first source prefix, to send its clients' queries from."""
    if not group.sources:
        return None
    network = ipaddress.ip_network(group.sources[0], strict=False)
    source = str(next(network.hosts(), network.network_address))
    require_loopback(source, f"client group {group.name}'s source")
    return source


def clients_of(policy: Policy, dns_server: tuple[str, int], targets: Mapping[str, Target]) -> Clients:
    """Real clients for each of the policy's groups that can be impersonated from here."""
    groups: list[GroupLoad] = []
    ecs: GroupLoad | None = None
    for group in policy.client_groups:
        rate = GLOBAL_RATE if group.name == policy.default_client_group else OTHER_RATE
        # A client per request a second: each caches its own weighted answer, as real stubs do, so the
        # load spreads over the regions as the weights say (four clients could all miss a region).
        clients = int(rate)
        source = group_source(group)
        if source is not None:
            groups.append(GroupLoad(group.name, rate, source=source, clients=clients))
            # One group also by EDNS client subnet from 127.0.0.1, so both ways in are exercised.
            ecs = ecs or GroupLoad(
                f"{group.name}-ecs", rate, subnet=group.sources[0], group=group.name, clients=clients
            )
        elif group.name == policy.default_client_group:
            groups.append(GroupLoad(group.name, rate, clients=clients))
    return Clients(
        dns=dns_server,
        name=policy.services[0].dns_name,
        groups=(*groups, *([ecs] if ecs is not None else [])),
        targets=targets,
        model=policy.probes.inference.model or None,
    )


def region_spec(fault: RegionFault, ttl: float) -> dict[str, object]:
    """The body of a region control API's POST /fault for `fault`, reverting by itself after `ttl`."""
    spec: dict[str, object] = {"mode": fault.mode.value, "ttl": ttl}
    if fault.mode is RegionMode.ERRORS:
        spec["fraction"] = fault.share
    if fault.mode is RegionMode.SLOW:
        spec["factor"] = fault.factor
    return spec


MEND = {"mode": "ok"}


def refuse_unsupported(target: DrillTarget, fault: Fault) -> None:
    """TargetError when `target` cannot inject `fault`: the runner asked before starting, a direct caller
    may not have, and half a fault is worse than none."""
    why = target.supports(fault)
    if why is not None:
        raise TargetError(why)


class PlaneView:
    """A plane's admin API and DNS, as the drill runner uses them: readiness, looks, overrides.

    `token` goes only into the Authorization header of requests that change something, never into a log or
    an error; without one, `override` refuses."""

    def __init__(
        self,
        policy: Policy,
        api: str,
        dns_server: tuple[str, int],
        token: str | None,
        *,
        dns_queries: int = DNS_QUERIES,
    ) -> None:
        self.policy = policy
        self.api = api.rstrip("/")
        self.dns_server = dns_server
        self.dns_queries = dns_queries
        self._token = token
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT))
        self._last_dns: Mapping[str, frozenset[str]] = {}

    async def close(self) -> None:
        await self.session.close()

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        headers = {TOKEN_HEADER: f"Bearer {self._token}"} if method != "GET" and self._token else {}
        async with asyncio.timeout(HTTP_TIMEOUT):
            async with self.session.request(method, self.api + path, json=body, headers=headers) as reply:
                data = await reply.json(content_type=None) if reply.content_length != 0 else None
                return reply.status, data

    async def ready(self) -> bool:
        status, _ = await self.request("GET", "/readyz")
        return status == 200

    async def region_fault(self, region: str, control_url: str, spec: Mapping[str, object]) -> None:
        """POST `spec` to a region's control API (SimRegion's /fault)."""
        url = f"{control_url.rstrip('/')}/fault"
        async with asyncio.timeout(HTTP_TIMEOUT), self.session.post(url, json=spec) as reply:
            if reply.status != 200:
                raise TargetError(f"{region}'s control API answered {reply.status}: {await reply.text()}")

    async def override(self, step: OverrideStep) -> None:
        if not self._token:
            raise TargetError("an override needs the plane's admin token, and none was given")
        body: dict[str, object] = {
            "region": step.region,
            "action": step.action.value,
            "duration": step.duration,
            "reason": step.reason,
        }
        if step.action is OverrideAction.WEIGHT:
            body["weight"] = step.weight
        try:
            status, reply = await self.request("POST", "/overrides", body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TargetError(f"POST /overrides: {exc!r}") from None
        if status != 201:
            raise TargetError(f"POST /overrides answered {status}: {reply}")

    async def look(self, at: float) -> Look:
        errors: list[str] = []
        health: HealthSample | None = None
        plans: tuple[PlanSample, ...] = ()
        overrides: tuple[tuple[str, str], ...] = ()
        status = await _seen(self.request("GET", "/status"))
        if isinstance(status, str):
            errors.append(f"/status: {status}")
        elif status[0] != 200:
            errors.append(f"/status answered {status[0]}")
        else:
            health, plans, overrides = _read_status(at, status[1])
        answers = await _seen(self._dns(plans[0].weights if plans else {}))
        dns_sample: DnsSample | None = None
        if isinstance(answers, str):
            errors.append(f"dns: {answers}")
        else:
            dns_sample = DnsSample(at, answers)
            self._last_dns = answers
        return Look(at, health, plans, dns_sample, overrides, tuple(errors))

    async def _dns(self, planned: Mapping[str, Mapping[str, int]]) -> dict[str, frozenset[str]]:
        """Per client group reachable by source address, the regions the DNS answered it with."""
        regions = {r.dns_address: r.name for r in self.policy.regions}
        name = self.policy.services[0].dns_name
        out: dict[str, frozenset[str]] = {}
        for group in self.policy.client_groups:
            source = group_source(group)
            if source is None and group.name == self.policy.default_client_group:
                source = "127.0.0.1"
            if source is None:
                continue
            expected = {r for r, w in planned.get(group.name, {}).items() if w > 0}
            expected |= self._last_dns.get(group.name, frozenset())
            seen: set[str] = set()
            for _ in range(0, self.dns_queries, DNS_BATCH):
                batch = await asyncio.gather(*(self._query(name, source) for _ in range(DNS_BATCH)))
                seen.update(regions.get(a, a) for a in set().union(*batch))
                if seen >= expected:
                    break
            out[group.name] = frozenset(seen)
        return out

    async def _query(self, name: str, source: str) -> frozenset[str]:
        query = dns.message.make_query(name, "A")
        host, port = self.dns_server
        response = await dns.asyncquery.udp(query, host, port=port, source=source, timeout=LOOK_TIMEOUT)
        if response.rcode() != dns.rcode.NOERROR:
            raise TargetError(f"DNS answered {dns.rcode.to_text(response.rcode())} for {name} from {source}")
        return frozenset(str(item.address) for rrset in response.answer for item in rrset)


async def _seen(what: Awaitable[T]) -> T | str:
    """What `what` gives, or why it could not be seen (the daemon down or restarting, a timeout)."""
    try:
        return await what
    except (aiohttp.ClientError, TimeoutError, OSError, dns.exception.DNSException, TargetError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _read_status(
    at: float, body: Mapping[str, Any]
) -> tuple[HealthSample, tuple[PlanSample, ...], tuple[tuple[str, str], ...]]:
    health = HealthSample(
        at, {name: RegionHealth(r["state"], r.get("score")) for name, r in body["regions"].items()}
    )
    plans = tuple(
        PlanSample(
            at, service, {g: {r: w["weight"] for r, w in p["weights"].items()} for g, p in groups.items()}
        )
        for service, groups in body["services"].items()
    )
    overrides = tuple((o["region"], o["action"]) for o in body["overrides"])
    return health, plans, overrides


class StagingTarget:
    """A plane already running, reached through its admin API (`remote.admin_api`) and DNS (`remote.dns`);
    `policy` is the policy it runs. Only region faults, through `remote.region_control`; `stop` mends those
    and leaves the plane running."""

    def __init__(
        self,
        remote: RemoteTarget,
        policy: Policy,
        token: str | None,
        *,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.remote, self.policy, self.ready_timeout, self._token = remote, policy, ready_timeout, token
        host, _, port = remote.dns.rpartition(":")
        self._dns = (host.strip("[]"), int(port))
        self._view: PlaneView | None = None
        self._broken: list[RegionFault] = []

    def _plane(self) -> PlaneView:
        if self._view is None:
            raise TargetError(f"the staging target at {self.remote.admin_api} is not started")
        return self._view

    async def report(self, result: DrillResult) -> None:
        """POST /drills, so the plane's status page shows how its last drill went (needs the token)."""
        if self._token is None:
            log.info("no admin token: %s is not told how the drill went", self.remote.admin_api)
            return
        view = PlaneView(self.policy, self.remote.admin_api, self._dns, self._token)
        try:
            status, body = await view.request("POST", "/drills", result.model_dump(mode="json"))
            if status != 201:
                log.warning("the plane refused the drill's result (%d): %s", status, body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("could not tell %s how the drill went: %s", self.remote.admin_api, exc)
        finally:
            await view.close()

    async def start(self) -> None:
        self._view = view = PlaneView(self.policy, self.remote.admin_api, self._dns, self._token)
        try:
            await self._until_ready(view)
            await self._same_regions(view)
            if self._token:
                await self._token_accepted(view)
        except BaseException:
            await self.stop()
            raise

    async def _until_ready(self, view: PlaneView) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        last = "no answer yet"
        while True:
            try:
                if await view.ready():
                    return
                last = "answered not ready (503)"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if loop.time() > deadline:
                raise TargetError(
                    f"the plane is not ready: tried GET {view.api}/readyz for {self.ready_timeout:g} s; "
                    f"last: {last}"
                )
            await asyncio.sleep(0.2)

    async def _same_regions(self, view: PlaneView) -> None:
        """The policy the drill was given must be the one the plane runs, or its looks mean nothing."""
        status, body = await view.request("GET", "/status")
        if status != 200:
            raise TargetError(f"GET {view.api}/status answered {status}")
        running = {name: r.get("jurisdiction") for name, r in body["regions"].items()}
        given = {r.name: r.jurisdiction for r in self.policy.regions}
        if running != given:
            raise TargetError(
                f"the plane at {view.api} runs regions {sorted(running.items())}, "
                f"the drill's policy has {sorted(given.items())}: target.policy must be the policy it runs"
            )

    async def _token_accepted(self, view: PlaneView) -> None:
        """A token the plane refuses fails the drill here, before anything is broken, not at its first
        override: an empty body is refused for its content (400) only once the token has been accepted."""
        status, body = await view.request("POST", "/overrides", [])
        if status in (401, 403):
            reason = body.get("error") if isinstance(body, dict) else body
            raise TargetError(
                f"the plane at {view.api} refuses the admin token in ${self.remote.token_env}: {reason}"
            )

    async def stop(self) -> None:
        view, self._view = self._view, None
        if view is None:
            return
        for fault in self._broken:
            try:
                await self._mend(view, fault)
            except (TargetError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                # Its ttl mends it still; the others must not stay broken for this one.
                log.warning("could not mend %s's %s fault while stopping: %s", fault.region, fault.mode, exc)
        self._broken.clear()
        await view.close()

    def clients(self) -> Clients:
        return clients_of(self.policy, self._dns, policy_targets(self.policy))

    def supports(self, fault: Fault) -> str | None:
        if not isinstance(fault, RegionFault):
            return (
                f"a remote target takes only region faults, not {fault.kind}: a staging plane's network, "
                "provider, buckets and daemon are not the drill's to break from here"
            )
        if fault.region not in {r.name for r in self.policy.regions}:
            return f"the plane's policy has no region {fault.region!r}"
        if fault.region not in self.remote.region_control:
            return f"target.region_control names no control URL for {fault.region}"
        return None

    async def inject(self, fault: Fault, ttl: float) -> None:
        refuse_unsupported(self, fault)
        assert isinstance(fault, RegionFault)  # supports() said so
        self._broken.append(fault)
        await self._plane().region_fault(
            fault.region, self.remote.region_control[fault.region], region_spec(fault, ttl)
        )

    async def clear(self, fault: Fault) -> None:
        if isinstance(fault, RegionFault):
            await self._mend(self._plane(), fault)
            with contextlib.suppress(ValueError):
                self._broken.remove(fault)

    async def _mend(self, view: PlaneView, fault: RegionFault) -> None:
        await view.region_fault(fault.region, self.remote.region_control[fault.region], MEND)

    async def override(self, step: OverrideStep) -> None:
        await self._plane().override(step)

    async def look(self, at: float) -> Look:
        return await self._plane().look(at)
