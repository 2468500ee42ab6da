"""The drill load generator against real parts on loopback: simulated regions and the embedded DNS server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

import chaos.loadgen
from chaos.loadgen import (
    NO_REGION,
    GroupLoad,
    Ledger,
    LoadGenerator,
    LoadReport,
    LoadSettings,
    Outcome,
    Reason,
    policy_targets,
)
from chaos.loopback import free_port
from chaos.simregion import FaultSpec, SimFleet, SimRegion
from controlplane.policy import Policy
from controlplane.providers.localdns import LocalDnsProvider
from tests.builders import converge, plan
from tests.integration.daemon_helpers import DNS_NAME, EU_CLIENT, FULL, parse_metrics, policy_data

EU = {"eu-west", "eu-central"}
SIM_TTFT = 0.01  # what daemon_helpers.sim_fleet gives its regions
GLOBAL = GroupLoad("global", rate=50)
EU_BY_SOURCE = GroupLoad("eu-by-source", rate=50, source=EU_CLIENT, group="eu")
# Sent from the global group's address: only the client subnet can make the DNS see an EU client.
EU_BY_SUBNET = GroupLoad("eu-by-subnet", rate=50, subnet="127.0.1.0/24", group="eu")
REQUEST_LABELS = frozenset({("model_name", "demo-llm"), ("finished_reason", "length")})


def fleet_policy(
    fleet: SimFleet, dns_port: int, client_groups: Sequence[Mapping[str, Any]] = (), ttl: int = 5
) -> Policy:
    data = policy_data(fleet, dns_port=dns_port, memory=False)
    if client_groups:
        data["client_groups"] = [dict(g) for g in client_groups]
    data["services"][0]["ttl"] = ttl
    return Policy.model_validate(data)


@asynccontextmanager
async def dns_server(
    fleet: SimFleet, weights: Mapping[str, Mapping[str, int]], **policy: Any
) -> AsyncIterator[tuple[Policy, LocalDnsProvider]]:
    served = fleet_policy(fleet, free_port(), **policy)
    async with LocalDnsProvider(served) as provider:
        await converge(provider, plan(weights))
        yield served, provider


def settings(provider: LocalDnsProvider, policy: Policy, *groups: GroupLoad, **extra: Any) -> LoadSettings:
    # max_ttl 0: every request resolves anew, so a short run samples the weights many times.
    fields: dict[str, Any] = {"max_ttl": 0.0, "model": "demo-llm", "request_timeout": 2.0} | extra
    return LoadSettings(provider.address, DNS_NAME, groups, policy_targets(policy), **fields)


async def run(generator: LoadGenerator, seconds: float = 1.0) -> LoadReport:
    """What `generator` saw in `seconds` of load, every request it started included."""
    await generator.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await generator.stop(grace=2.0)
    assert generator.in_flight == 0
    return generator.report()


def regions_of(report: LoadReport, group: str) -> set[str]:
    return {o.region for o in report.outcomes if o.group == group}


async def served_by(session: aiohttp.ClientSession, region: SimRegion) -> float:
    """Streams the region itself counts as completed, from its own /metrics."""
    async with session.get(f"{region.endpoint}/metrics") as response:
        samples = parse_metrics(await response.text())
    return samples.get(("vllm:request_success_total", REQUEST_LABELS), 0.0)


async def test_each_group_is_sent_to_its_own_regions_and_served_there(
    fleet: SimFleet, session: aiohttp.ClientSession
) -> None:
    async with dns_server(fleet, FULL) as (policy, provider):
        report = await run(
            LoadGenerator(settings(provider, policy, GLOBAL, EU_BY_SOURCE, EU_BY_SUBNET), policy), 2.0
        )
    assert regions_of(report, "global") == set(fleet.regions), report.by_region
    assert regions_of(report, "eu-by-source") == EU
    assert regions_of(report, "eu-by-subnet") == EU
    for group in ("global", "eu-by-source", "eu-by-subnet"):
        stats = report.by_group[group]
        assert stats.successes > 20 and stats.failed == 0, (group, stats)
    # Attribution: what the generator credits each region with is what that region itself counted.
    for name, region in fleet.regions.items():
        assert report.by_region[name].successes == await served_by(session, region), name
    assert report.residency_violations == 0 and report.skipped == 0
    for stats in report.by_region.values():
        assert stats.ttft_p50 is not None and stats.ttft_p99 is not None
        assert SIM_TTFT <= stats.ttft_p50 <= stats.ttft_p99 < 2.0, stats
    assert sum(b.successes for b in report.series) == len(report.outcomes)
    assert {b.region for b in report.series} == set(fleet.regions)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (FaultSpec("down"), Reason.CONNECT_REFUSED),
        (FaultSpec("hang"), Reason.TIMEOUT),
        (FaultSpec("errors"), Reason.HTTP_STATUS),
        (FaultSpec("wrong_model"), Reason.WRONG_MODEL),
    ],
)
async def test_a_broken_region_counts_its_requests_as_failures_with_the_reason(
    fleet: SimFleet, spec: FaultSpec, reason: Reason
) -> None:
    await fleet["us-east"].set_fault(spec)
    async with dns_server(fleet, FULL) as (policy, provider):
        generator = LoadGenerator(settings(provider, policy, GLOBAL, request_timeout=0.3), policy)
        async with generator:
            await asyncio.sleep(1.0)
            # Hung requests end by their timeout: wait for those, not for the ones started since.
            await asyncio.sleep(0.4)
        report = generator.report()
    broken = report.by_region["us-east"]
    assert broken.successes == 0 and broken.failed > 5, broken
    assert set(broken.failures) == {reason}, broken
    assert broken.ttft_p50 is None
    failed = [o for o in report.outcomes if not o.ok]
    assert failed and all(o.region == "us-east" for o in failed)
    if reason is Reason.HTTP_STATUS:
        assert {o.status for o in failed} <= {500, 503}
    for name in ("us-west", "eu-west", "eu-central"):
        assert report.by_region[name].failed == 0 and report.by_region[name].successes > 0, name
    errors_over_time = [b for b in report.series if b.region == "us-east"]
    assert sum(b.failures for b in errors_over_time) == broken.failed
    assert all(b.successes == 0 for b in errors_over_time)


async def test_a_group_failing_closed_gets_no_address(fleet: SimFleet) -> None:
    async with dns_server(fleet, {"global": FULL["global"]}) as (policy, provider):
        report = await run(LoadGenerator(settings(provider, policy, GLOBAL, EU_BY_SUBNET), policy))
    assert report.by_group["eu-by-subnet"].successes == 0
    assert set(report.by_group["eu-by-subnet"].failures) == {Reason.NO_ADDRESS}
    assert report.by_region[NO_REGION].failures[Reason.NO_ADDRESS] == report.by_group["eu-by-subnet"].failed
    assert report.by_group["global"].failed == 0


async def test_a_group_sent_outside_its_jurisdictions_is_a_residency_violation(fleet: SimFleet) -> None:
    # The DNS runs a policy that lets the eu group into the US; the drill's policy does not.
    lax = (
        {"name": "eu", "sources": ["127.0.1.0/24"], "allowed_jurisdictions": ["EU", "US"]},
        {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
    )
    weights = {"global": FULL["global"], "eu": {"us-east": 50, "eu-west": 50}}
    strict = fleet_policy(fleet, free_port())
    async with dns_server(fleet, weights, client_groups=lax) as (_, provider):
        report = await run(LoadGenerator(settings(provider, strict, GLOBAL, EU_BY_SOURCE), strict))
    sent_to_us = [o for o in report.outcomes if o.group == "eu-by-source" and o.region == "us-east"]
    assert sent_to_us and all(o.violation for o in sent_to_us)
    assert report.residency_violations == len(sent_to_us)
    assert not any(o.violation for o in report.outcomes if o.region != "us-east" or o.group == "global")


def queries(provider: LocalDnsProvider, group: str) -> int:
    return sum(count for (_, asked_as, _), count in provider.stats.items() if asked_as == group)


async def test_a_client_keeps_its_answer_for_the_ttl_and_no_longer_than_the_cap(fleet: SimFleet) -> None:
    one_client = GroupLoad("global", rate=40, clients=1)
    async with dns_server(fleet, FULL, ttl=1) as (policy, provider):
        cached = await run(LoadGenerator(settings(provider, policy, one_client, max_ttl=60.0)), 1.5)
        asked = queries(provider, "global")
        # Asked at the start and once more when the 1 s TTL ran out, for some 60 requests.
        assert 2 <= asked <= 3 and len(cached.outcomes) > 30, (asked, len(cached.outcomes))
        assert len({o.address for o in cached.outcomes}) <= asked
        capped = await run(LoadGenerator(settings(provider, policy, one_client, max_ttl=0.0)), 0.5)
        assert queries(provider, "global") - asked == len(capped.outcomes) > 5


def own_tasks() -> list[asyncio.Task[Any]]:
    """Tasks running a coroutine of chaos.loadgen: the drivers and the clients."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(getattr(task.get_coro(), "cr_code", None), "co_filename", None) == chaos.loadgen.__file__
    ]


async def test_stop_leaves_no_task_behind_even_with_requests_hanging(fleet: SimFleet) -> None:
    await fleet["us-east"].set_fault(FaultSpec("hang"))
    async with dns_server(fleet, {"global": {"us-east": 100}}) as (policy, provider):
        generator = LoadGenerator(settings(provider, policy, GLOBAL, request_timeout=30.0), policy)
        await generator.start()
        await asyncio.sleep(0.5)
        assert generator.in_flight > 5 and own_tasks()
        async with asyncio.timeout(5):
            await generator.stop()
    assert generator.in_flight == 0
    assert own_tasks() == []
    assert generator.report().outcomes == ()  # cancelled requests are not counted as anything


def test_the_ledger_keeps_bounded_outcomes_and_buckets() -> None:
    bounded = LoadSettings(
        ("127.0.0.1", 53), DNS_NAME, (GLOBAL,), {}, bucket=0.1, max_buckets=3, max_outcomes=5, ttft_window=4
    )
    ledger = Ledger(bounded)
    for i in range(50):
        ledger.add(Outcome(i * 0.05, "global", "127.0.0.41", "us-east", None, ttft=float(i)))
    ledger.add(Outcome(0.0, "global", None, NO_REGION, Reason.DNS_TIMEOUT))  # late and out of order
    report = ledger.report()
    assert len(report.outcomes) == 5 and report.outcomes[-1].reason is Reason.DNS_TIMEOUT
    assert [b.start for b in report.series] == pytest.approx([2.2, 2.3, 2.4])
    assert report.by_region["us-east"].successes == 50
    assert report.by_region["us-east"].ttft_p50 == 48.0  # of the newest four samples: 46..49
