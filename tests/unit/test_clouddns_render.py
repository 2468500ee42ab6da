"""The Cloud DNS provider's pure parts: the records a plan renders to, the rrsets they become and are read back
from, and the one atomic change that gets a zone there."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controlplane.changes import Record
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import PermanentProviderError
from controlplane.providers.clouddns import (
    ZoneState,
    build_rrsets,
    essence,
    marker_owner,
    parse_zone,
    plan_change,
    render_cloud,
)
from tests.builders import plan, policy_data

JsonObject = dict[str, Any]
ZONE = "llm.example.com."
EU_GEO = {"gcp_regions": ["europe-west1", "europe-west4"]}
GLOBAL_GEO = {"gcp_regions": ["us-east1"]}
EU_NAME, GLOBAL_NAME = "_cp-prod-eu.chat.llm.example.com", "_cp-prod-global.chat.llm.example.com"
ACTIVE = {"eu": {"eu-west": 60, "eu-central": 40}, "global": {"us-east": 50, "us-west": 50}}
ADDRESS = {
    "us-east": "192.0.2.11",
    "us-west": "192.0.2.12",
    "eu-west": "192.0.2.13",
    "eu-central": "192.0.2.14",
}
JURISDICTION = {"us-east": "US", "us-west": "US", "eu-west": "EU", "eu-central": "EU"}


def cloud_policy(
    eu_geo: dict[str, Any] | None = EU_GEO,
    global_geo: dict[str, Any] | None = GLOBAL_GEO,
    addresses: dict[str, str] = ADDRESS,
    eu: str = "eu",
) -> Policy:
    regions = [
        {"name": n, "endpoint": f"http://{a}:8000", "jurisdiction": JURISDICTION[n]}
        for n, a in addresses.items()
    ]
    groups: list[dict[str, Any]] = [
        {"name": eu, "allowed_jurisdictions": ["EU"]},
        {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
    ]
    for group, geo in zip(groups, (eu_geo, global_geo), strict=True):
        if geo is not None:
            group["geo"] = geo
    data = policy_data(regions, client_groups=groups, service={"dns_name": "chat.llm.example.com"})
    return Policy.model_validate(data)


def geo(group: str, location: str) -> Record:
    return Record(
        "chat.llm.example.com", group, location, f"_cp-prod-{group}.chat.llm.example.com", 100, 30, "CNAME"
    )


def address(group: str, region: str, weight: int) -> Record:
    return Record(f"_cp-prod-{group}.chat.llm.example.com", group, region, ADDRESS[region], weight, 30, "A")


GEO_RECORDS = [geo("eu", "europe-west1"), geo("eu", "europe-west4"), geo("global", "us-east1")]


def as_stored(rrset: JsonObject) -> JsonObject:
    """An rrset the way the API returns it: kinds stamped, weights as floats."""
    stored = copy.deepcopy(rrset)
    stored["kind"] = "dns#resourceRecordSet"
    routing = stored.get("routingPolicy")
    if routing is not None:
        routing["kind"] = "dns#rRSetRoutingPolicy"
        for item in (routing.get("wrr") or {}).get("items", []):
            item["weight"] = float(item["weight"])
            item["kind"] = "dns#rRSetRoutingPolicyWrrPolicyWrrPolicyItem"
    return stored


def zone_holding(policy: Policy, records: list[Record], *extra: JsonObject) -> ZoneState:
    rrsets = [as_stored(r) for by_key in build_rrsets(records, "prod").values() for r in by_key.values()]
    return parse_zone([*rrsets, *extra], "prod", policy)


def test_a_plan_renders_fenced_locations_and_positive_weights_at_each_groups_name() -> None:
    records = render_cloud(cloud_policy(), "prod", plan({**ACTIVE, "global": {"us-east": 100, "us-west": 0}}))
    assert records == sorted(
        [
            *GEO_RECORDS,
            address("eu", "eu-west", 60),
            address("eu", "eu-central", 40),
            address(
                "global", "us-east", 100
            ),  # us-west's 0 is no item: Cloud DNS gives 0 no documented meaning
        ]
    )


def test_only_services_below_the_instances_zone_are_rendered() -> None:
    policy = cloud_policy()
    assert render_cloud(policy, "prod", plan(ACTIVE), ZONE) == render_cloud(policy, "prod", plan(ACTIVE))
    assert render_cloud(policy, "prod", plan(ACTIVE), "other.example.com.") == []


def test_a_group_failing_closed_keeps_its_locations_and_answers_no_address() -> None:
    closed = RoutingPlan(
        0.0,
        (
            GroupPlan(
                "chat",
                "eu",
                GroupMode.FAIL_CLOSED,
                (RouteWeight("eu-west", 0, "down"), RouteWeight("eu-central", 0, "down")),
            ),
            *plan({"global": ACTIVE["global"]}).groups,
        ),
    )
    records = render_cloud(cloud_policy(), "prod", closed)
    assert [r for r in records if r.group == "eu"] == [geo("eu", "europe-west1"), geo("eu", "europe-west4")]
    rrsets = build_rrsets(records, "prod")["chat.llm.example.com"]
    assert (EU_NAME + ".", "A") not in rrsets and (GLOBAL_NAME + ".", "A") in rrsets


def test_a_group_without_gcp_regions_is_not_cloud_dns_s_but_the_default_group_must_have_them() -> None:
    records = render_cloud(cloud_policy(eu_geo=None), "prod", plan(ACTIVE))
    assert {r.group for r in records} == {"global"}
    with pytest.raises(PermanentProviderError, match=r"default client group 'global' needs geo\.gcp_regions"):
        render_cloud(cloud_policy(global_geo=None), "prod", plan(ACTIVE))


def test_names_cloud_dns_cannot_hold_and_regions_it_cannot_tell_apart_are_refused() -> None:
    long = "e" * 60  # a valid group name, but _cp-prod-<60> is a 69-character label
    with pytest.raises(PermanentProviderError, match="longer than 63"):
        render_cloud(cloud_policy(eu=long), "prod", plan({long: ACTIVE["eu"]}))
    shared = {**ADDRESS, "eu-central": ADDRESS["eu-west"]}
    with pytest.raises(PermanentProviderError, match="share an address"):
        render_cloud(cloud_policy(addresses=shared), "prod", plan(ACTIVE))


def test_what_is_written_reads_back_as_the_same_records_through_the_apis_own_spelling() -> None:
    policy = cloud_policy()
    records = render_cloud(policy, "prod", plan(ACTIVE))
    zone = zone_holding(policy, records)
    assert list(zone.records) == records
    assert not plan_change(zone, records, "prod", ZONE)


def test_a_change_deletes_exactly_what_was_read_and_compare_and_sets_the_marker() -> None:
    policy = cloud_policy()
    records = render_cloud(policy, "prod", plan(ACTIVE))
    zone = zone_holding(policy, records)
    shifted = render_cloud(policy, "prod", plan({**ACTIVE, "eu": {"eu-west": 10, "eu-central": 90}}))
    change = plan_change(zone, shifted, "prod", ZONE)
    marker = ("_cp-owner.chat.llm.example.com.", "TXT")
    held = zone.owned["chat.llm.example.com"]
    assert list(change.deletions) == [held[(EU_NAME + ".", "A")], held[marker]]  # as stored, kinds and all
    assert [(r["name"], r["type"]) for r in change.additions] == [(EU_NAME + ".", "A"), marker]
    assert change.additions[0]["routingPolicy"]["wrr"]["items"] == [
        {"weight": 90, "rrdatas": [ADDRESS["eu-central"]]},
        {"weight": 10, "rrdatas": [ADDRESS["eu-west"]]},
    ]
    gone = plan_change(zone, [], "prod", ZONE)
    assert not gone.additions and sorted(map(str, gone.deletions)) == sorted(map(str, held.values()))


@pytest.mark.parametrize(
    ("squatter", "reason"),
    [
        ({"name": "chat.llm.example.com.", "type": "A", "rrdatas": ["198.51.100.9"]}, "a CNAME cannot share"),
        ({"name": EU_NAME + ".", "type": "A", "rrdatas": ["198.51.100.9"]}, "exists and is not this plane's"),
        (
            {
                "name": "_cp-owner.chat.llm.example.com.",
                "type": "TXT",
                "rrdatas": ['"heritage=x,owner=prod"'],
            },
            "_cp-owner.chat.llm.example.com TXT exists and is not this plane's",
        ),
        (
            {
                "name": "_cp-owner.chat.llm.example.com.",
                "type": "TXT",
                "rrdatas": ['"heritage=llm-failover-plane,owner=staging"'],
            },
            "owned by 'staging'",
        ),
    ],
    ids=["address-at-the-service", "address-at-a-group-name", "foreign-txt-at-the-marker", "another-owner"],
)
def test_a_name_held_by_anyone_else_refuses_the_change(squatter: JsonObject, reason: str) -> None:
    policy = cloud_policy()
    zone = parse_zone([{**squatter, "ttl": 60}], "prod", policy)
    assert zone.records == ()
    with pytest.raises(PermanentProviderError, match=reason):
        plan_change(zone, render_cloud(policy, "prod", plan(ACTIVE)), "prod", ZONE)


def test_a_service_outside_the_zone_or_at_its_apex_is_refused() -> None:
    records = render_cloud(cloud_policy(), "prod", plan(ACTIVE))
    empty = parse_zone([], "prod", cloud_policy())
    with pytest.raises(PermanentProviderError, match=r"is not below the zone other\.example\.com"):
        plan_change(empty, records, "prod", "other.example.com.")
    with pytest.raises(PermanentProviderError, match=r"chat\.llm\.example\.com is not below the zone"):
        plan_change(empty, records, "prod", "chat.llm.example.com.")


def test_the_marker_is_read_only_with_this_planes_heritage() -> None:
    assert marker_owner(['"heritage=llm-failover-plane,owner=prod"']) == "prod"
    assert marker_owner(['"v=spf1 -all"', '"heritage=llm-failover-plane,owner=b"']) == "b"
    assert marker_owner(['"heritage=external-dns,owner=prod"']) is None
    assert marker_owner(['"heritage=llm-failover-plane"']) is None


def test_rrsets_compare_as_the_api_compares_a_deletion() -> None:
    sent = {"ttl": 30, "rrdatas": ["b", "a"], "routingPolicy": {"geo": {"enableFencing": False, "items": []}}}
    stored = {
        "kind": "k",
        "ttl": 30.0,
        "rrdatas": ["a", "b"],
        "routingPolicy": {"kind": "k", "geo": {"items": []}},
    }
    assert essence(sent) == essence(stored)
    assert essence({**sent, "ttl": 31}) != essence(stored)
