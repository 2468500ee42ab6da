"""The daemon drives Route 53 end to end: simulated regions probed for real, the plan decided and gated,
and the Route 53 provider built from the policy writing a real moto_server through the fault proxy. What
clients get is judged the way Route 53 answers them (tests/fakes/route53_resolver.py) on the zone moto
holds, read directly, never through the proxy."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chaos.faultproxy import Fault, FaultProxy
from chaos.simregion import SimFleet
from controlplane.providers.route53 import SENTINEL, Layout, route53_weight
from tests.conftest import until
from tests.fakes.moto import (  # noqa: F401
    aws_credentials_fixture,
    listing,
    moto_fixture,
    moto_server_fixture,
    route53_client,
)
from tests.fakes.route53_resolver import Location, resolve
from tests.integration.daemon_helpers import (
    ADDRESS,
    DNS_NAME,
    FULL,
    Plane,
    fault,
    policy_data,
    running_plane,
    sim_fleet,
    write_policy,
)

pytestmark = [pytest.mark.needs_binary("moto_server"), pytest.mark.usefixtures("aws_credentials")]

ZONE = "llm.test"  # DNS_NAME, chat.llm.test, lies in it
OWNER = "e2e"
EU_PLACES = (Location("EU", "FR"), Location("EU", "DE"))
GLOBAL_PLACES = (Location("NA", "US"), Location("AS", "JP"), Location())
EU_ADDRESSES = frozenset({ADDRESS["eu-west"], ADDRESS["eu-central"], SENTINEL["A"]})
CONVERGE = 10.0  # generous: the daemon needs well under two seconds on an idle machine


@dataclass
class Cloud:
    plane: Plane
    fleet: SimFleet
    proxy: FaultProxy
    moto: str
    zone_id: str
    session: aiohttp.ClientSession

    @property
    def provider(self) -> str:
        return f"route53:{ZONE}"

    async def listed(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(listing, self.moto, self.zone_id)

    async def answers(self, places: Iterable[Location]) -> frozenset[str]:
        """Every address Route 53 could give a client in any of `places` now."""
        listed = await self.listed()
        return frozenset().union(*(resolve(listed, DNS_NAME, where).addresses for where in places))

    async def zone_weights(self) -> dict[str, dict[str, int]]:
        """The weighted set of each client group as the zone holds it: region -> Route 53 weight."""
        layout = Layout(OWNER, self.zone_id.removeprefix("/hostedzone/"))
        out: dict[str, dict[str, int]] = {}
        for rrset in await self.listed():
            record = layout.parse_member(rrset) if layout.owns(rrset) else None
            if record is not None:
                out.setdefault(record.group, {})[record.region] = record.weight
        return out

    def planned(self) -> dict[str, dict[str, int]]:
        """The daemon's plan (percent) per client group, as its memory provider holds it."""
        return {group: self.plane.weights(group) for group in FULL}

    async def zone_follows(self, percent: dict[str, dict[str, int]] | None = None) -> bool:
        """The zone holds exactly these weights (default: the daemon's plan), with a record for every region
        the group may use: one at weight 0 is kept, not lost."""
        wanted = {
            g: {r: route53_weight(w) for r, w in ws.items()} for g, ws in (percent or self.planned()).items()
        }
        return await self.zone_weights() == wanted

    async def status(self) -> dict[str, Any]:
        code, body = await self.plane.get("/status")
        assert code == 200
        provider: dict[str, Any] = body["providers"].get(self.provider, {})
        return provider

    async def probes(self) -> float:
        metrics = await self.plane.metrics()
        return sum(v for (name, _), v in metrics.items() if name == "controlplane_probe_results_total")


@asynccontextmanager
async def cloud_plane(moto: str, tmp_path: Path) -> AsyncIterator[Cloud]:
    """Four simulated regions, a hosted zone on moto, the fault proxy before it and the daemon with the
    memory provider (so a decision is held while Route 53 refuses it) and Route 53 through the proxy."""
    client = await asyncio.to_thread(route53_client, moto)
    created = await asyncio.to_thread(client.create_hosted_zone, Name=ZONE, CallerReference="e2e")
    zone_id = created["HostedZone"]["Id"]
    async with (
        sim_fleet() as fleet,
        FaultProxy(moto) as proxy,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
    ):
        data = policy_data(fleet)
        data["client_groups"][0]["geo"] = {"continents": ["EU"]}
        data["providers"]["route53"] = {"zone": ZONE, "endpoint_url": proxy.url, "owner": OWNER}
        policy = tmp_path / "policy.yaml"
        write_policy(policy, data)
        async with running_plane(policy, tmp_path / "state") as plane:
            cloud = Cloud(plane, fleet, proxy, moto, zone_id, session)
            await until(lambda: cloud.zone_follows(FULL), within=CONVERGE, what="the zone to hold the plan")
            yield cloud


@dataclass
class ResidencyWatch:
    """Reads the zone over and over while a test breaks regions, and keeps what EU clients could get."""

    cloud: Cloud
    seen: Counter[str] = field(default_factory=Counter)

    async def run(self) -> None:
        while True:
            for address in await self.cloud.answers(EU_PLACES):
                self.seen[address] += 1
            await asyncio.sleep(0.02)


async def test_the_zone_follows_a_broken_region_and_eu_clients_never_leave_the_eu(
    moto: str, tmp_path: Path
) -> None:
    async with cloud_plane(moto, tmp_path) as cloud:
        everyone = frozenset(ADDRESS.values())
        assert await cloud.answers(GLOBAL_PLACES) == everyone
        assert await cloud.answers(EU_PLACES) == {ADDRESS["eu-west"], ADDRESS["eu-central"]}
        watch = ResidencyWatch(cloud)
        watcher = asyncio.create_task(watch.run())
        try:
            await fault(cloud.session, cloud.fleet["eu-west"], mode="down")

            async def eu_west_gone() -> bool:
                return await cloud.answers(EU_PLACES) == {ADDRESS["eu-central"]}

            await until(eu_west_gone, within=CONVERGE, what="EU clients to lose eu-west")
            assert await cloud.answers(GLOBAL_PLACES) == everyone - {ADDRESS["eu-west"]}

            # Both EU regions down: the EU group fails closed inside Route 53's own answer logic.
            await fault(cloud.session, cloud.fleet["eu-central"], mode="down")

            async def eu_closed() -> bool:
                return await cloud.answers(EU_PLACES) == {SENTINEL["A"]}

            await until(eu_closed, within=CONVERGE, what="the EU group to fail closed")
            assert await cloud.answers(GLOBAL_PLACES) == {ADDRESS["us-east"], ADDRESS["us-west"]}

            for region in ("eu-west", "eu-central"):
                await fault(cloud.session, cloud.fleet[region], mode="ok")
            await until(lambda: cloud.zone_follows(FULL), within=CONVERGE, what="both EU regions back")
            assert await cloud.answers(GLOBAL_PLACES) == everyone
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher  # a zone the resolver refuses (Route 53 would too) fails the test here
        # Only EU addresses or the sentinel, ever; and each was seen, so the watch spanned every step.
        assert set(watch.seen) == EU_ADDRESSES, watch.seen


async def test_throttling_delays_the_zone_but_never_the_probes_and_nothing_is_lost_or_doubled(
    moto: str, tmp_path: Path
) -> None:
    async with cloud_plane(moto, tmp_path) as cloud:
        cloud.proxy.fail(Fault.THROTTLING)
        await fault(cloud.session, cloud.fleet["us-east"], mode="down")
        # The decision is made, and held by the memory provider, while Route 53 refuses every call.
        await until(lambda: cloud.planned()["global"]["us-east"] == 0, what="us-east out of the plan")

        async def failing(code: str) -> bool:
            status = await cloud.status()
            return status["consecutive_errors"] >= 2 and code in (status["last_error"] or "")

        await until(lambda: failing("Throttling"), within=CONVERGE, what="/status to show throttling")
        probed = await cloud.probes()
        cloud.proxy.fail(Fault.SERVICE_UNAVAILABLE)
        await until(lambda: failing("ServiceUnavailable"), within=CONVERGE, what="/status to show 503s")
        assert await cloud.probes() > probed  # probing never waits for the cloud
        assert cloud.proxy.faulted["ListResourceRecordSets"] >= 2  # retried, re-reading the zone
        assert await cloud.zone_follows(FULL)  # nothing got through: us-east still holds its weight

        cloud.proxy.clear()
        await until(cloud.zone_follows, within=CONVERGE, what="the zone to converge")
        assert cloud.planned()["global"]["us-east"] == 0
        listed = await cloud.listed()
        identifiers = Counter(r["SetIdentifier"] for r in listed if "SetIdentifier" in r)
        assert identifiers and max(identifiers.values()) == 1, identifiers
        assert await cloud.answers(GLOBAL_PLACES) == frozenset(ADDRESS.values()) - {ADDRESS["us-east"]}
        assert await cloud.answers(EU_PLACES) == {ADDRESS["eu-west"], ADDRESS["eu-central"]}
        await until(lambda: _recovered(cloud), within=CONVERGE, what="/status to show the provider recovered")

        await fault(cloud.session, cloud.fleet["us-east"], mode="ok")
        await until(lambda: cloud.zone_follows(FULL), within=CONVERGE, what="us-east back in the zone")
        await cloud.plane.settled(FULL)
        assert cloud.proxy.peak_rate() <= 5, cloud.proxy.stats()  # Route 53's per-account limit

        # Steady state: what was written is trusted; nothing is written, and nothing read but resyncs.
        cloud.proxy.reset_stats()
        await asyncio.sleep(2.0)  # twenty reconcile steps
        assert cloud.proxy.requests["ChangeResourceRecordSets"] == 0, cloud.proxy.stats()
        assert cloud.proxy.stats()["total"] == 0, cloud.proxy.stats()


async def _recovered(cloud: Cloud) -> bool:
    return (await cloud.status()).get("consecutive_errors") == 0
