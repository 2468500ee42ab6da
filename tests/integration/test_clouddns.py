"""The Cloud DNS provider against the fake v1 API (tests/fakes/clouddns.py), through its production code path:
the reconciler drives it, it reaches the fake by `api_endpoint` with a static bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import pytest
from google.oauth2.credentials import Credentials

from controlplane.changes import diff
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import PermanentProviderError
from controlplane.providers.clouddns import CloudDnsProvider
from controlplane.reconciler import Outcome, Reconciler
from tests.builders import plan, policy_data
from tests.fakes.clouddns import FakeCloudDns

PROJECT, ZONE, DNS_NAME = "proj-llm", "llm-zone", "llm.example.com."
SERVICE = "chat.llm.example.com."
EU, GLOBAL = "_cp-prod-eu.chat.llm.example.com.", "_cp-prod-global.chat.llm.example.com."
ADDRESS = {
    "us-east": "192.0.2.11",
    "us-west": "192.0.2.12",
    "eu-west": "192.0.2.13",
    "eu-central": "192.0.2.14",
}
JURISDICTION = {"us-east": "US", "us-west": "US", "eu-west": "EU", "eu-central": "EU"}
GROUPS = (
    {"name": "eu", "allowed_jurisdictions": ["EU"], "geo": {"gcp_regions": ["europe-west1", "europe-west4"]}},
    {"name": "global", "allowed_jurisdictions": ["US", "EU"], "geo": {"gcp_regions": ["us-east1"]}},
)
FOREIGN = (
    {"name": "www.llm.example.com.", "type": "A", "ttl": 300, "rrdatas": ["198.51.100.1"]},
    {"name": "txt.llm.example.com.", "type": "TXT", "ttl": 300, "rrdatas": ['"v=spf1 -all"']},
    {  # a second plane's service in the same zone: its marker names another owner
        "name": "_cp-owner.embed.llm.example.com.",
        "type": "TXT",
        "ttl": 300,
        "rrdatas": ['"heritage=llm-failover-plane,owner=staging"'],
    },
    {
        "name": "embed.llm.example.com.",
        "type": "A",
        "ttl": 30,
        "routingPolicy": {"wrr": {"items": [{"weight": 1, "rrdatas": ["198.51.100.2"]}]}},
    },
)
ACTIVE = {"eu": {"eu-west": 60, "eu-central": 40}, "global": {"us-east": 50, "us-west": 50}}

JsonObject = dict[str, Any]


def cloud_policy(fake: FakeCloudDns, owner: str = "prod") -> Policy:
    regions = [
        {"name": name, "endpoint": f"http://{address}:8000", "jurisdiction": JURISDICTION[name]}
        for name, address in ADDRESS.items()
    ]
    settings = {"project": PROJECT, "managed_zone": ZONE, "api_endpoint": fake.url, "owner": owner}
    data = policy_data(
        regions,
        client_groups=GROUPS,
        service={"dns_name": SERVICE.rstrip(".")},
        providers={"cloud_dns": settings},
    )
    return Policy.model_validate(data)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCloudDns]:
    async with FakeCloudDns() as fake:  # three rrsets a page: every read must paginate
        fake.add_zone(PROJECT, ZONE, DNS_NAME)
        for rrset in FOREIGN:
            fake.seed(PROJECT, ZONE, rrset)
        yield fake


async def started(fake: FakeCloudDns, owner: str = "prod") -> CloudDnsProvider:
    policy = cloud_policy(fake, owner)
    token = Credentials(token="test")  # type: ignore[no-untyped-call]
    provider = CloudDnsProvider(
        policy, policy.providers.cloud_dns_list[0], credentials=token, change_wait=5.0
    )
    # min_interval paces a real API's writes (the reconciler's own tests cover it); here it would only slow
    # each step by a second. What was written is still trusted until resync, as in production.
    provider.tuning = replace(provider.tuning, min_interval=0.0)
    await provider.start()
    return provider


@pytest.fixture
async def provider(fake: FakeCloudDns) -> AsyncIterator[CloudDnsProvider]:
    provider = await started(fake)
    yield provider
    await provider.close()


def reconciler(provider: CloudDnsProvider, attempts: int = 3) -> Reconciler:
    return Reconciler([provider], attempts=attempts, timeout=10.0, backoff_initial=0.01, backoff_max=0.05)


async def step(rec: Reconciler, fake: FakeCloudDns, target: RoutingPlan) -> Outcome:
    [outcome] = await rec.reconcile(cloud_policy(fake), target)
    return outcome


def zone(fake: FakeCloudDns) -> dict[tuple[str, str], JsonObject]:
    return {(r["name"], r["type"]): r for r in fake.rrsets(PROJECT, ZONE)}


def weights(fake: FakeCloudDns, name: str) -> dict[str, float] | None:
    """The wrr weights by address at `name` (A), or None when it holds no addresses."""
    rrset = zone(fake).get((name, "A"))
    if rrset is None:
        return None
    return {item["rrdatas"][0]: item["weight"] for item in rrset["routingPolicy"]["wrr"]["items"]}


def at(address_weights: Mapping[str, int]) -> dict[str, float]:
    return {ADDRESS[region]: float(w) for region, w in address_weights.items()}


def foreign(fake: FakeCloudDns) -> list[JsonObject]:
    keys = {(r["name"], r["type"]) for r in FOREIGN} | {(DNS_NAME, "SOA"), (DNS_NAME, "NS")}
    return [r for r in fake.rrsets(PROJECT, ZONE) if (r["name"], r["type"]) in keys]


async def test_a_plan_through_its_life_create_shift_fail_over_fail_closed_recover_delete(
    fake: FakeCloudDns, provider: CloudDnsProvider
) -> None:
    before = foreign(fake)
    rec = reconciler(provider)

    assert (await step(rec, fake, plan(ACTIVE))).applied
    geo = zone(fake)[(SERVICE, "CNAME")]["routingPolicy"]["geo"]
    assert [(i["location"], i["rrdatas"]) for i in geo["items"]] == [
        ("europe-west1", [EU]),
        ("europe-west4", [EU]),
        ("us-east1", [GLOBAL]),
    ]
    assert geo["enableFencing"] is True
    assert weights(fake, EU) == at(ACTIVE["eu"])
    assert weights(fake, GLOBAL) == at(ACTIVE["global"])
    assert zone(fake)[("_cp-owner.chat.llm.example.com.", "TXT")]["rrdatas"] == [
        '"heritage=llm-failover-plane,owner=prod"'
    ]

    shifted = {**ACTIVE, "global": {"us-east": 80, "us-west": 20}}
    assert (await step(rec, fake, plan(shifted))).applied
    assert weights(fake, GLOBAL) == at(shifted["global"])
    assert weights(fake, EU) == at(ACTIVE["eu"])

    failed_over = {**shifted, "eu": {"eu-west": 0, "eu-central": 100}}
    assert (await step(rec, fake, plan(failed_over))).applied
    assert weights(fake, EU) == at({"eu-central": 100})  # a weight of 0 is no item at all

    closed = {**shifted, "eu": {"eu-west": 0, "eu-central": 0}}
    assert (await step(rec, fake, plan(closed))).applied
    assert weights(fake, EU) is None  # the eu group's name answers no address ...
    still = zone(fake)[(SERVICE, "CNAME")]["routingPolicy"]["geo"]["items"]
    assert [i["location"] for i in still if i["rrdatas"] == [EU]] == ["europe-west1", "europe-west4"]
    # ... and its locations keep their items, or Cloud DNS would answer them with the nearest other group

    assert (await step(rec, fake, plan(ACTIVE))).applied
    assert weights(fake, EU) == at(ACTIVE["eu"])

    assert (await step(rec, fake, RoutingPlan(0.0, ()))).applied
    assert foreign(fake) == before
    assert sorted(zone(fake)) == sorted((r["name"], r["type"]) for r in before)


async def test_an_unchanged_plan_makes_no_write_and_a_new_instance_reads_it_back_unchanged(
    fake: FakeCloudDns, provider: CloudDnsProvider
) -> None:
    rec = reconciler(provider)
    await step(rec, fake, plan(ACTIVE))
    writes = fake.calls("POST")
    assert not (await step(rec, fake, plan(ACTIVE))).changes
    fresh = await started(fake)
    try:
        # weights come back as floats with kinds stamped: read through a new instance, nothing churns
        assert not diff(fresh.name, fresh.render(plan(ACTIVE)), await fresh.current())
        assert not (await step(reconciler(fresh), fake, plan(ACTIVE))).changes
    finally:
        await fresh.close()
    assert fake.calls("POST") == writes


async def test_a_stale_deletion_is_refused_with_412_then_re_read_and_converges(
    fake: FakeCloudDns, provider: CloudDnsProvider
) -> None:
    rec = reconciler(provider)
    await step(rec, fake, plan(ACTIVE))
    other = await started(fake)  # a second replica of the same owner moves the zone on
    try:
        await step(reconciler(other), fake, plan({**ACTIVE, "eu": {"eu-west": 10, "eu-central": 90}}))
    finally:
        await other.close()
    target = {**ACTIVE, "eu": {"eu-west": 30, "eu-central": 70}}
    outcome = await step(rec, fake, plan(target))
    assert outcome.applied and outcome.error is None
    assert [r.status for r in fake.log if r.method == "POST"][-2:] == [412, 200]
    assert weights(fake, EU) == at(target["eu"])


async def test_throttling_is_retried_and_an_outage_longer_than_the_retries_converges_later(
    fake: FakeCloudDns, provider: CloudDnsProvider
) -> None:
    rec = reconciler(provider)
    fake.fail_next(2, 429)
    assert (await step(rec, fake, plan(ACTIVE))).applied
    assert weights(fake, EU) == at(ACTIVE["eu"])

    target = {**ACTIVE, "eu": {"eu-west": 0, "eu-central": 100}}
    fake.fail_next(3, 503)  # as many as the reconciler's attempts: this step fails whole
    failed = await step(rec, fake, plan(target))
    assert not failed.applied and failed.error is not None and "503" in failed.error
    assert weights(fake, EU) == at(ACTIVE["eu"])
    assert (await step(rec, fake, plan(target))).applied  # the API is back
    assert weights(fake, EU) == at({"eu-central": 100})


async def test_a_pending_change_is_polled_until_done(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    fake.pending_polls = 2
    assert (await step(reconciler(provider), fake, plan(ACTIVE))).applied
    polls = [r for r in fake.log if r.method == "GET" and "/changes/" in r.path]
    assert len(polls) == 3  # pending, pending, done
    assert weights(fake, EU) == at(ACTIVE["eu"])


@pytest.mark.parametrize(
    "squatter",
    [
        {"name": SERVICE, "type": "A", "ttl": 60, "rrdatas": ["198.51.100.9"]},
        {"name": SERVICE, "type": "TXT", "ttl": 60, "rrdatas": ['"a user\'s own TXT"']},
        {"name": EU, "type": "A", "ttl": 60, "rrdatas": ["198.51.100.9"]},
        {
            "name": "_cp-owner.chat.llm.example.com.",
            "type": "TXT",
            "ttl": 300,
            "rrdatas": ['"heritage=llm-failover-plane,owner=staging"'],
        },
    ],
    ids=["address-at-the-service", "txt-at-the-service", "address-at-a-group-name", "another-owners-marker"],
)
async def test_a_name_held_by_someone_else_is_refused_and_left_as_it_is(
    fake: FakeCloudDns, provider: CloudDnsProvider, squatter: JsonObject
) -> None:
    fake.seed(PROJECT, ZONE, squatter)
    before = fake.rrsets(PROJECT, ZONE)
    outcome = await step(reconciler(provider), fake, plan(ACTIVE))
    assert not outcome.applied and outcome.error is not None and "PermanentProviderError" in outcome.error
    assert fake.calls("POST") == 0
    assert fake.rrsets(PROJECT, ZONE) == before


async def test_another_owners_service_in_the_zone_is_not_read_as_ours(fake: FakeCloudDns) -> None:
    staging = await started(fake, owner="staging")
    try:
        # staging's marker at embed is in the zone, but none of its rrsets are of the layout it would write
        assert await staging.current() == []
        prod = await started(fake)
        try:
            assert await prod.current() == []
        finally:
            await prod.close()
    finally:
        await staging.close()


async def test_a_policy_without_this_instance_is_refused_in_place(
    fake: FakeCloudDns, provider: CloudDnsProvider
) -> None:
    data = cloud_policy(fake).model_dump(mode="json", exclude_none=True)
    data["providers"]["cloud_dns"]["managed_zone"] = "other-zone"
    with pytest.raises(PermanentProviderError, match="no longer configures"):
        provider.update_policy(Policy.model_validate(data))
    data["providers"]["cloud_dns"] |= {"managed_zone": ZONE, "owner": "staging"}
    with pytest.raises(PermanentProviderError, match="owner"):
        provider.update_policy(Policy.model_validate(data))
