"""The Route 53 provider against a real moto_server: the lifecycle of a service's records, what it leaves
alone, how Route 53 itself would answer clients in a given place, and throttling through a fault proxy."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from fractions import Fraction
from typing import Any

import boto3
import pytest

from chaos.faultproxy import Fault, FaultProxy
from controlplane.changes import Record, diff
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import PermanentProviderError, TransientProviderError
from controlplane.providers.route53 import SENTINEL, Route53Provider
from controlplane.reconciler import Reconciler
from tests.builders import EU_BY_GEO_AND_GLOBAL, plan
from tests.fakes.moto import listing, route53_client
from tests.fakes.route53_resolver import Location, resolve

pytestmark = pytest.mark.needs_binary("moto_server")

ZONE = "llm.example.com"
CHAT = "chat.llm.example.com"
REGIONS = (
    {"name": "us-east", "endpoint": "http://198.51.100.1:8000", "jurisdiction": "US"},
    {"name": "us-west", "endpoint": "http://198.51.100.2:8000", "jurisdiction": "US"},
    {"name": "eu-west", "endpoint": "http://198.51.100.3:8000", "jurisdiction": "EU"},
    # An IPv6 region: its group's AAAA tree must keep residency as the A tree does.
    {"name": "eu-central", "endpoint": "http://[2001:db8::4]:8000", "jurisdiction": "EU"},
)
PLACES = {
    "eu": (Location("EU", "FR"), Location("EU", "GB")),
    "global": (Location("NA", "US"), Location("AS", "JP"), Location()),
}
FAST = {"request_interval": 0.01, "insync_poll": 0.05}  # moto is local: no need for Route 53's pace


def cloud_policy(url: str, *services: str, owner: str = "prod") -> Policy:
    return Policy.model_validate(
        {
            "version": 1,
            "regions": list(REGIONS),
            "client_groups": list(EU_BY_GEO_AND_GLOBAL),
            "default_client_group": "global",
            "services": [
                {"name": s, "dns_name": f"{s}.{ZONE}", "ttl": 30, "regions": [r["name"] for r in REGIONS]}
                for s in services
            ],
            "providers": {"route53": {"zone": ZONE, "endpoint_url": url, "owner": owner}},
        }
    )


def provider(policy: Policy, **options: Any) -> Route53Provider:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    return Route53Provider(policy, policy.providers.route53_list[0], session=session, **(FAST | options))


@pytest.fixture
def zone(moto: str) -> str:
    return route53_client(moto).create_hosted_zone(Name=ZONE, CallerReference="test")["HostedZone"]["Id"]


def change(url: str, zone_id: str, *rrsets: Mapping[str, Any]) -> None:
    route53_client(url).change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": dict(r)} for r in rrsets]},  # type: ignore[typeddict-item]
    )


def chat_plan(eu: Mapping[str, int], world: Mapping[str, int], *, eu_closed: bool = False) -> RoutingPlan:
    base = plan({"eu": eu, "global": world})
    if not eu_closed:
        return base
    closed = GroupPlan("chat", "eu", GroupMode.FAIL_CLOSED, tuple(RouteWeight(r, 0, "down") for r in eu))
    return RoutingPlan(0.0, tuple(closed if g.group == "eu" else g for g in base.groups))


async def converge(p: Route53Provider, target: RoutingPlan) -> None:
    changes = diff(p.name, p.render(target), await p.current())
    await p.apply(changes)
    # Read back: what Route 53 holds is exactly what was rendered, so the next diff is empty.
    assert not diff(p.name, p.render(target), await p.current())


def expected(records: list[Record], group: str, rtype: str) -> dict[frozenset[str], Fraction]:
    """Route 53's answer to a client of `group` for `rtype`: the live regions by weight, else the sentinel."""
    live = [r for r in records if r.group == group and r.rtype == rtype and r.weight > 0]
    total = sum(r.weight for r in live)
    if not live:
        return {frozenset({SENTINEL[rtype]}): Fraction(1)}
    return {frozenset({r.target}): Fraction(r.weight, total) for r in live}


def check_answers(url: str, zone_id: str, p: Route53Provider, target: RoutingPlan) -> None:
    """Each client place gets exactly its group's weighted answer in Route 53's own logic, for A and AAAA;
    an EU client never sees a non-EU address, even when the EU group fails closed."""
    listed = listing(url, zone_id)
    records = [r for r in p.render(target) if r.name == CHAT]
    eu_addresses = {r.target for r in records if r.group == "eu"} | set(SENTINEL.values())
    for group, places in PLACES.items():
        for where in places:
            for rtype in ("A", "AAAA"):
                answer = resolve(listed, CHAT, where, rtype)
                assert answer.distribution == expected(records, group, rtype), (group, where, rtype)
                if group == "eu":
                    assert answer.addresses <= eu_addresses


def foreign(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record set but owner prod's (its SetIdentifiers and its markers)."""
    marker = re.compile(r'"heritage=llm-failover-plane,owner=prod,layout=[0-9a-f]+"')
    return sorted(
        (
            r
            for r in listed
            if not r.get("SetIdentifier", "").startswith("cp:prod:")
            and not (r["Type"] == "TXT" and marker.fullmatch(r["ResourceRecords"][0]["Value"]))
        ),
        key=repr,
    )


async def test_lifecycle_keeps_residency_and_leaves_foreign_records_byte_identical(
    moto: str, zone: str
) -> None:
    # Another team's plane (owner staging) runs "api" in the same zone; users keep their own records,
    # some at our service name; one record even mimics our identifiers, with the wrong digest.
    staging = provider(cloud_policy(moto, "api", owner="staging"))
    await staging.start()
    await converge(staging, plan({"eu": {"eu-west": 100}, "global": {"us-east": 100}}, service="api"))
    change(
        moto,
        zone,
        {"Name": f"other.{ZONE}", "Type": "A", "TTL": 60, "ResourceRecords": [{"Value": "203.0.113.9"}]},
        {"Name": CHAT, "Type": "TXT", "TTL": 60, "ResourceRecords": [{"Value": '"site-verification=abc"'}]},
        {"Name": CHAT, "Type": "MX", "TTL": 60, "ResourceRecords": [{"Value": "10 mail.example.com"}]},
        {
            "Name": f"w.{ZONE}",
            "Type": "A",
            "TTL": 60,
            "SetIdentifier": "cp:prod:us-east:0000000000",
            "Weight": 7,
            "ResourceRecords": [{"Value": "203.0.113.7"}],
        },
    )
    before = foreign(listing(moto, zone))
    assert len(before) > 6  # the apex NS/SOA, the four above and staging's api records

    policy = cloud_policy(moto, "chat", "embed")
    p = provider(policy)
    await p.start()
    embed = plan({"eu": {"eu-west": 100}, "global": {"us-east": 100}}, service="embed")
    steps = {
        "create": chat_plan({"eu-west": 50, "eu-central": 50}, {"us-east": 50, "us-west": 30, "eu-west": 20}),
        "shift": chat_plan({"eu-west": 80, "eu-central": 20}, {"us-east": 20, "us-west": 60, "eu-west": 20}),
        "fail over": chat_plan(
            {"eu-west": 0, "eu-central": 100}, {"us-east": 0, "us-west": 99, "eu-west": 1}
        ),
        "fail closed": chat_plan(
            {"eu-west": 0, "eu-central": 0}, {"us-east": 0, "us-west": 100}, eu_closed=True
        ),
        "recover": chat_plan(
            {"eu-west": 60, "eu-central": 40}, {"us-east": 40, "us-west": 40, "eu-west": 20}
        ),
    }
    for step, target in steps.items():
        both = RoutingPlan(0.0, target.groups + embed.groups)
        await converge(p, both)
        check_answers(moto, zone, p, both)
        assert foreign(listing(moto, zone)) == before, step

    # chat leaves the policy: its records, geolocation tree and marker go; embed and the rest stay.
    alone = cloud_policy(moto, "embed")
    p.update_policy(alone)
    await converge(p, embed)
    listed = listing(moto, zone)
    assert foreign(listed) == before
    assert [r for r in listed if r["Name"].endswith(f"{CHAT}.") and r not in before] == []
    assert any(r["Name"] == f"_cp.embed.{ZONE}." for r in listed)
    assert {r.name for r in await p.current()} == {f"embed.{ZONE}"}
    await p.close()
    await staging.close()


def with_eu_countries(policy: Policy, *countries: str) -> Policy:
    data = policy.model_dump(mode="json")
    for group in data["client_groups"]:
        if group["name"] == "eu":
            group["geo"] = {"countries": list(countries)}
    return Policy.model_validate(data)


def check_places(
    url: str, zone_id: str, p: Route53Provider, target: RoutingPlan, groups: Mapping[str, Location]
) -> None:
    """Each client place gets its group's weighted answer (A and AAAA) in Route 53's own logic."""
    listed = listing(url, zone_id)
    records = [r for r in p.render(target) if r.name == CHAT]
    for group, where in groups.items():
        for rtype in ("A", "AAAA"):
            answer = resolve(listed, CHAT, where, rtype)
            assert answer.distribution == expected(records, group, rtype), (group, where, rtype)


ZURICH, LONDON = Location("EU", "CH"), Location("EU", "GB")
# The same plan under both policies: a hot reload that only moves places between groups changes no region
# record, only the geolocation tree.
SAME = chat_plan({"eu-west": 50, "eu-central": 50}, {"us-east": 50, "us-west": 50})


async def test_a_geo_edit_alone_is_a_change_and_moves_clients_to_their_new_group(
    moto: str, zone: str
) -> None:
    before = with_eu_countries(cloud_policy(moto, "chat"), "FR", "GB")
    after = with_eu_countries(before, "FR", "CH")  # CH joins the eu group, GB leaves it
    p = provider(before)
    await p.start()
    await converge(p, SAME)
    check_places(moto, zone, p, SAME, {"eu": LONDON, "global": ZURICH})
    reconciler = Reconciler([p])
    (steady,) = await reconciler.reconcile(before, SAME, dry_run=True)  # the zone is read and known
    assert not steady.changes

    # A hot reload: the daemon hands the provider the new policy and reconciles the same plan. The
    # reconciler applies only a non-empty diff: the marker's layout must make it one.
    p.update_policy(after)
    (reload,) = await reconciler.reconcile(after, SAME)
    assert reload.applied and reload.error is None
    assert [c.record.region for c in reload.changes.changes] == ["_layout"]  # no region record moved
    check_places(moto, zone, p, SAME, {"eu": ZURICH, "global": LONDON})
    assert not diff(p.name, p.render(SAME), await p.current())
    await p.close()


async def test_a_marker_written_before_it_carried_a_layout_is_ours_and_rewritten(
    moto: str, zone: str
) -> None:
    before = with_eu_countries(cloud_policy(moto, "chat"), "FR", "GB")
    old = provider(before)
    await old.start()
    await converge(old, SAME)
    await old.close()
    marker = {
        "Name": f"_cp.{CHAT}.",
        "Type": "TXT",
        "TTL": 300,
        "ResourceRecords": [{"Value": '"heritage=llm-failover-plane,owner=prod"'}],
    }
    route53_client(moto).change_resource_record_sets(
        HostedZoneId=zone, ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": marker}]}
    )
    # The upgrade comes with a geo edit: the old marker says nothing of the tree beside it.
    after = with_eu_countries(before, "FR", "CH")
    p = provider(after)
    await p.start()
    assert Record(CHAT, "*", "_layout", "layout=unknown", 0, 300, "TXT") in await p.current()
    (upgrade,) = await Reconciler([p]).reconcile(after, SAME)
    assert upgrade.applied and upgrade.error is None
    check_places(moto, zone, p, SAME, {"eu": ZURICH, "global": LONDON})
    assert not diff(p.name, p.render(SAME), await p.current())
    await p.close()


async def test_a_foreign_record_at_our_name_and_type_is_never_overwritten(moto: str, zone: str) -> None:
    simple = {"Name": f"{CHAT}.", "Type": "A", "TTL": 60, "ResourceRecords": [{"Value": "203.0.113.5"}]}
    change(moto, zone, simple)
    before = listing(moto, zone)
    p = provider(cloud_policy(moto, "chat"))
    await p.start()
    with pytest.raises(PermanentProviderError, match=r"foreign record \('chat.llm.example.com.', 'A', ''\)"):
        await converge(p, chat_plan({"eu-west": 100}, {"us-east": 100}))
    assert listing(moto, zone) == before
    await p.close()


async def test_a_service_claimed_by_another_owner_is_refused(moto: str, zone: str) -> None:
    staging = provider(cloud_policy(moto, "chat", owner="staging"))
    await staging.start()
    await converge(staging, chat_plan({"eu-west": 100}, {"us-east": 100}))
    before = listing(moto, zone)
    p = provider(cloud_policy(moto, "chat"))
    await p.start()
    assert await p.current() == []  # staging's records are not ours
    with pytest.raises(PermanentProviderError, match=r"chat\.llm\.example\.com is owned by 'staging'"):
        await converge(p, chat_plan({"eu-west": 100}, {"us-east": 100}))
    assert listing(moto, zone) == before
    await p.close()
    await staging.close()


async def test_the_zone_is_found_by_name_or_id_and_a_missing_one_is_refused(moto: str, zone: str) -> None:
    by_id = Policy.model_validate(
        cloud_policy(moto, "chat").model_dump(mode="json")
        | {
            "providers": {
                "route53": {
                    "hosted_zone_id": zone.removeprefix("/hostedzone/"),
                    "endpoint_url": moto,
                    "owner": "prod",
                }
            }
        }
    )
    p = provider(by_id)
    await p.start()
    assert p.render(chat_plan({"eu-west": 100}, {"us-east": 100}))  # the zone's name came from its id
    await p.close()
    missing = Policy.model_validate(
        cloud_policy(moto, "chat").model_dump(mode="json")
        | {"providers": {"route53": {"zone": "llm.example.org", "endpoint_url": moto, "owner": "prod"}}}
    )
    with pytest.raises(PermanentProviderError, match=r"0 hosted zones named llm\.example\.org\."):
        await provider(missing).start()


@pytest.fixture
async def proxy(moto: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(moto) as proxy:
        yield proxy


@pytest.mark.parametrize("fault", list(Fault))
async def test_pushback_is_transient(moto: str, zone: str, proxy: FaultProxy, fault: Fault) -> None:
    p = provider(cloud_policy(proxy.url, "chat"))
    await p.start()
    proxy.fail(fault, count=1)
    with pytest.raises(TransientProviderError, match="ListResourceRecordSets"):
        await p.current()
    assert await p.current() == []  # the next call goes through
    await p.close()


async def test_an_unchanged_plan_costs_nothing_and_calls_stay_under_route53s_rate(
    moto: str, zone: str, proxy: FaultProxy
) -> None:
    policy = cloud_policy(proxy.url, "chat")
    p = provider(policy, request_interval=0.25)  # production pacing
    await p.start()
    reconciler = Reconciler([p])
    target = chat_plan({"eu-west": 50, "eu-central": 50}, {"us-east": 100})
    (first,) = await reconciler.reconcile(policy, target)
    assert first.applied and first.error is None
    assert proxy.requests["ChangeResourceRecordSets"] == 1  # one decision, one write
    proxy.reset_stats()
    for _ in range(3):
        (again,) = await reconciler.reconcile(policy, target)
        assert not again.changes and again.error is None
    assert proxy.stats()["total"] == 0  # what was written is trusted: not even a read
    reconciler.forget(p.name)  # a resync: the zone is read, and still nothing is written
    (resync,) = await reconciler.reconcile(policy, target)
    assert not resync.changes
    assert proxy.requests["ListResourceRecordSets"] == 1 and proxy.requests["ChangeResourceRecordSets"] == 0
    assert proxy.peak_rate() <= 5
    await p.close()


async def test_throttling_is_retried_and_the_zone_converges_once_it_ends(
    moto: str, zone: str, proxy: FaultProxy
) -> None:
    policy = cloud_policy(proxy.url, "chat")
    p = provider(policy)
    await p.start()
    reconciler = Reconciler([p], backoff_initial=0.01, backoff_max=0.05)
    target = chat_plan({"eu-west": 50, "eu-central": 50}, {"us-east": 100})
    proxy.fail(Fault.THROTTLING)
    (throttled,) = await reconciler.reconcile(policy, target)
    assert throttled.error is not None and "Throttling" in throttled.error
    # Throttled writes too: the reads go through, each ChangeResourceRecordSets is refused.
    proxy.fail(Fault.THROTTLING, operations=["ChangeResourceRecordSets"])
    (refused,) = await reconciler.reconcile(policy, target)
    assert not refused.applied
    assert proxy.faulted["ChangeResourceRecordSets"] >= 1
    proxy.clear()
    deadline = time.monotonic() + 10
    while (await reconciler.reconcile(policy, target))[0].changes or not await p.current():
        assert time.monotonic() < deadline, "never converged"
        await asyncio.sleep(p.tuning.min_interval / 2)
    listed = listing(moto, zone)
    keys = [(r["Name"], r["Type"], r.get("SetIdentifier")) for r in listed]
    assert len(keys) == len(set(keys))  # nothing created twice
    assert not diff(p.name, p.render(target), await p.current())
    check_answers(moto, zone, p, target)
    await p.close()
