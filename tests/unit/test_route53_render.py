"""The Route 53 provider's pure parts: weights in Route 53's units, the layout it writes, the checks Route 53
would make (moto does not), and how changes are packed into batches."""

from __future__ import annotations

import re
from typing import Any

import pytest

from controlplane.changes import Action, Change, ChangeSet, Record, diff
from controlplane.policy import Policy
from controlplane.providers.base import PermanentProviderError
from controlplane.providers.route53 import (
    SENTINEL,
    Layout,
    Route53Provider,
    RRKey,
    RRSet,
    Unit,
    batches,
    plan_ops,
    route53_weight,
    rrkey,
    simulate,
)
from tests.builders import EU_BY_GEO_AND_GLOBAL, plan
from tests.fakes.route53_resolver import Location, resolve

ZONE = "llm.example.com"
CHAT = "chat.llm.example.com"
LAYOUT = Layout("prod", "Z1")


def policy(**regions_address: str) -> Policy:
    addresses = {"us-east": "198.51.100.1", "eu-west": "198.51.100.3", "eu-central": "198.51.100.4"}
    addresses.update(regions_address)
    jurisdiction = {"us-east": "US", "eu-west": "EU", "eu-central": "EU"}
    return Policy.model_validate(
        {
            "version": 1,
            "regions": [
                {"name": n, "endpoint": "http://10.0.0.1:8000", "address": a, "jurisdiction": jurisdiction[n]}
                for n, a in addresses.items()
            ],
            "client_groups": list(EU_BY_GEO_AND_GLOBAL),
            "default_client_group": "global",
            "services": [
                {"name": "chat", "dns_name": "Chat.LLM.example.com.", "regions": list(addresses)},
                {"name": "other", "dns_name": "chat.elsewhere.org", "regions": list(addresses)},
            ],
            "providers": {"route53": {"zone": ZONE, "owner": "prod"}},
        }
    )


def provider(p: Policy | None = None) -> Route53Provider:
    p = p or policy()
    return Route53Provider(p, p.providers.route53_list[0])


def test_every_percent_above_zero_keeps_a_nonzero_weight_within_255() -> None:
    weights = [route53_weight(p) for p in range(101)]
    assert weights[0] == 0 and weights[100] == 255
    assert all(0 < w <= 255 for w in weights[1:])
    assert weights == sorted(weights)  # more percent never means less weight


def test_render_scales_weights_normalises_addresses_and_keeps_to_its_zone() -> None:
    records = provider(policy(**{"eu-central": "2001:DB8:0::4"})).render(
        plan({"eu": {"eu-west": 1, "eu-central": 99}, "global": {"us-east": 100}})
    )
    chat = {(r.group, r.region): r for r in records}
    assert {r.name for r in records} == {CHAT}  # the other service is outside the zone
    assert chat["eu", "eu-west"].weight == 3 and chat["eu", "eu-central"].weight == 252
    assert chat["eu", "eu-central"].target == "2001:db8::4" and chat["eu", "eu-central"].rtype == "AAAA"
    assert chat["global", "eu-west"].weight == 0  # allowed, drained: present so it diffs


@pytest.mark.parametrize(
    ("address", "message"),
    [(SENTINEL["A"], "is the fail-closed sentinel"), (SENTINEL["AAAA"], "is the fail-closed sentinel")],
)
def test_a_region_at_the_sentinel_address_is_refused(address: str, message: str) -> None:
    with pytest.raises(PermanentProviderError, match=message):
        provider(policy(**{"eu-west": address})).render(
            plan({"eu": {"eu-west": 100}, "global": {"us-east": 100}})
        )


def zone_with(*rrsets: RRSet) -> dict[RRKey, RRSet]:
    apex = {"Name": f"{ZONE}.", "Type": "NS", "TTL": 172800, "ResourceRecords": [{"Value": "ns1.example."}]}
    return {rrkey(r): r for r in (apex, *rrsets)}


def planned(
    changes: ChangeSet, held: dict[RRKey, RRSet] | None = None, p: Policy | None = None
) -> dict[RRKey, RRSet]:
    _, after = plan_ops(LAYOUT, p or policy(), ZONE, zone_with() if held is None else held, changes)
    return after


def created(weights: dict[str, dict[str, int]]) -> dict[RRKey, RRSet]:
    return planned(diff("route53:llm.example.com", provider().render(plan(weights)), []))


def test_all_zero_weights_fail_closed_to_the_sentinel_in_route53s_answer() -> None:
    """Route 53 answers every record of an all-zero weighted set; the sentinel member takes the group's
    answer instead, so an EU client gets an address that is no region -- never a US one."""
    zone = created({"eu": {"eu-west": 0, "eu-central": 0}, "global": {"us-east": 100}})
    listed = list(zone.values())
    paris = resolve(listed, CHAT, Location("EU", "FR"))
    assert paris.addresses == {SENTINEL["A"]}
    assert resolve(listed, CHAT, Location("NA", "US")).addresses == {"198.51.100.1"}
    assert resolve(listed, CHAT, Location()).addresses == {"198.51.100.1"}  # unlocated: the default


def test_a_group_with_no_region_of_a_type_answers_the_sentinel_not_the_default() -> None:
    """The geolocation tree is per type: without an EU AAAA record, an EU client's AAAA query would fall
    to `*` and get the default group's (US) IPv6 address."""
    p = policy(**{"us-east": "2001:db8::1"})
    records = provider(p).render(plan({"eu": {"eu-west": 100}, "global": {"us-east": 100}}))
    zone = planned(diff("route53:llm.example.com", records, []), p=p)
    london = resolve(list(zone.values()), CHAT, Location("EU", "GB"), "AAAA")
    assert london.addresses == {SENTINEL["AAAA"]}


def test_the_layout_names_and_identifiers() -> None:
    zone = created({"eu": {"eu-west": 100}, "global": {"us-east": 100}})
    names = {k[0] for k in zone}
    assert {f"_cp.{CHAT}.", f"eu.prod._cp.{CHAT}.", f"global.prod._cp.{CHAT}.", f"{CHAT}."} <= names
    (marker,) = (r for r in zone.values() if r["Type"] == "TXT")
    (value,) = (v["Value"] for v in marker["ResourceRecords"])
    assert re.fullmatch(r'"heritage=llm-failover-plane,owner=prod,layout=[0-9a-f]{16}"', value)
    assert "SetIdentifier" not in marker  # one exact-match DELETE + CREATE swaps it: a compare-and-set
    geo = {r["SetIdentifier"].split(":")[2]: r for r in zone.values() if "GeoLocation" in r}
    assert set(geo) == {"geo-continent-EU", "geo-country-GB", "geo-default"}
    assert geo["geo-default"]["GeoLocation"] == {"CountryCode": "*"}
    assert geo["geo-country-GB"]["AliasTarget"]["DNSName"] == f"eu.prod._cp.{CHAT}."
    identifiers = [r["SetIdentifier"] for r in zone.values() if "SetIdentifier" in r]
    assert len(identifiers) == len(set(identifiers))  # unique in the zone, not only per name


def weighted(name: str, ident: str, weight: Any, value: str = "198.51.100.9") -> RRSet:
    return {
        "Name": name,
        "Type": "A",
        "TTL": 30,
        "SetIdentifier": ident,
        "Weight": weight,
        "ResourceRecords": [{"Value": value}],
    }


@pytest.mark.parametrize(
    ("ops", "held", "message"),
    [
        ([("CREATE", weighted("w.llm.example.com.", "x", 256))], (), "weight 256 outside 0..255"),
        ([("CREATE", weighted("w.llm.example.com.", "x", True))], (), "weight True outside"),
        ([("CREATE", weighted("w.example.org.", "x", 1))], (), "outside the zone"),
        (
            [("CREATE", weighted("w.llm.example.com.", "x", 1))] * 2,
            (),
            r"CREATE \('w.llm.example.com.', 'A', 'x'\): exists",
        ),
        (
            [("DELETE", weighted("w.llm.example.com.", "x", 2))],
            (weighted("w.llm.example.com.", "x", 1),),
            "no record set held exactly so",
        ),
        (
            [("CREATE", weighted("w.llm.example.com.", "x", 1))],
            (
                {
                    "Name": "w.llm.example.com.",
                    "Type": "A",
                    "TTL": 1,
                    "ResourceRecords": [{"Value": "192.0.2.9"}],
                },
            ),
            "mixed routing policies",
        ),
        (
            [
                (
                    "CREATE",
                    {
                        "Name": "w.llm.example.com.",
                        "Type": "A",
                        "SetIdentifier": "g",
                        "GeoLocation": {"CountryCode": "*"},
                        "AliasTarget": {
                            "HostedZoneId": "Z1",
                            "DNSName": "nowhere.llm.example.com.",
                            "EvaluateTargetHealth": False,
                        },
                    },
                )
            ],
            (),
            "alias to nowhere.llm.example.com., which holds no A",
        ),
        ([("CREATE", weighted("w.llm.example.com.", "x", 1, "2001:db8::1"))], (), "is not an A address"),
    ],
)
def test_simulate_refuses_what_route53_refuses(ops: list[Any], held: tuple[RRSet, ...], message: str) -> None:
    _, problems = simulate(zone_with(*held), ops, ZONE)
    assert any(re.search(message, p) for p in problems), problems


def test_a_change_set_planned_against_another_state_is_refused() -> None:
    zone = created({"eu": {"eu-west": 100}, "global": {"us-east": 100}})
    stale = Record(CHAT, "eu", "eu-west", "198.51.100.3", 7, 30, "A")
    update = ChangeSet("route53:llm.example.com", (Change(Action.UPDATE, stale, stale),))
    with pytest.raises(PermanentProviderError, match="not held as the change set expects"):
        planned(update, zone)


def test_a_foreign_record_at_our_name_and_type_is_refused_but_another_type_is_not() -> None:
    changes = diff("route53:llm.example.com", provider().render(plan({"eu": {"eu-west": 100}})), [])
    txt = {"Name": f"{CHAT}.", "Type": "TXT", "TTL": 60, "ResourceRecords": [{"Value": '"mine"'}]}
    planned(changes, zone_with(txt))
    simple = {"Name": f"{CHAT}.", "Type": "A", "TTL": 60, "ResourceRecords": [{"Value": "203.0.113.1"}]}
    with pytest.raises(PermanentProviderError, match=r"foreign record \('chat.llm.example.com.', 'A', ''\)"):
        planned(changes, zone_with(simple))


def kinds(units: list[Unit]) -> list[str]:
    return [
        "marker" if r["Type"] == "TXT" else "geo" if "GeoLocation" in r else "set"
        for u in units
        for _, r in u.ops
    ]


def test_phases_claim_the_marker_first_fill_sets_before_aliases_and_release_the_marker_last() -> None:
    changes = diff("route53:llm.example.com", provider().render(plan({"eu": {"eu-west": 100}})), [])
    units, zone = plan_ops(LAYOUT, policy(), ZONE, zone_with(), changes)
    order = kinds(units)
    assert order[0] == "marker" and order.index("geo") > max(i for i, k in enumerate(order) if k == "set")
    removal = diff("route53:llm.example.com", [], [c.after for c in changes.changes if c.after])
    units, after = plan_ops(LAYOUT, policy(), ZONE, zone, removal)
    order = kinds(units)
    assert order[-1] == "marker" and order.index("set") > max(i for i, k in enumerate(order) if k == "geo")
    assert after == zone_with()  # nothing of ours is left


def op(name: str, values: int = 1, length: int = 10, action: str = "CREATE") -> tuple[str, RRSet]:
    return (action, {"Name": name, "Type": "TXT", "ResourceRecords": [{"Value": "x" * length}] * values})


def test_batches_split_at_1000_records() -> None:
    units = [Unit(1, (op(f"n{i}."),)) for i in range(2500)]
    sizes = [len(b) for b in batches(units)]
    assert sizes == [1000, 1000, 500]


def test_batches_count_upserts_twice_and_never_split_a_unit() -> None:
    upserts = [Unit(1, (op(f"n{i}.", action="UPSERT"),)) for i in range(600)]
    assert [len(b) for b in batches(upserts)] == [500, 100]
    pairs = [Unit(1, (op(f"d{i}.", action="DELETE"), op(f"d{i}."))) for i in range(600)]
    out = batches(pairs)
    assert [len(b) for b in out] == [1000, 200]
    assert all(b[0][0] == "DELETE" for b in out)  # a DELETE and its CREATE stay together


def test_batches_split_at_32000_characters() -> None:
    units = [Unit(1, (op(f"n{i}.", length=1000),)) for i in range(70)]
    assert [len(b) for b in batches(units)] == [32, 32, 6]
    upserts = [Unit(1, (op(f"n{i}.", length=1000, action="UPSERT"),)) for i in range(20)]
    assert [len(b) for b in batches(upserts)] == [16, 4]


def test_a_unit_over_a_limit_alone_is_refused() -> None:
    with pytest.raises(PermanentProviderError, match="over Route 53's 1000 / 32000 per request"):
        batches([Unit(1, (op("big.", values=1001),))])


def regrouped(p: Policy, **changes: Any) -> Policy:
    """`p` with the eu group's geo and the policy's own fields replaced as given."""
    data = p.model_dump(mode="json")
    geo = changes.pop("eu_geo", None)
    if geo is not None:
        data["client_groups"][0]["geo"] = geo
    return Policy.model_validate(data | changes)


def held_records(zone: dict[RRKey, RRSet]) -> list[Record]:
    """What current() would return for `zone`."""
    return sorted(
        r
        for rrset in zone.values()
        if LAYOUT.owns(rrset) and (r := LAYOUT.parse_member(rrset) or LAYOUT.parse_marker(rrset))
    )


WEIGHTS = {"eu": {"eu-west": 100}, "global": {"us-east": 100}}
CH = {"continents": ["EU"], "countries": ["GB", "CH"]}


@pytest.mark.parametrize(
    "edit",
    [
        {"eu_geo": CH},
        {"eu_geo": {"countries": ["GB"]}},
        {"default_client_group": "eu"},
    ],
)
def test_an_edit_of_structure_alone_changes_only_the_services_layout_record(edit: dict[str, Any]) -> None:
    before = provider().render(plan(WEIGHTS))
    after = provider(regrouped(policy(), **edit)).render(plan(WEIGHTS))
    changes = diff("route53:llm.example.com", after, before)
    assert [(c.action, c.record.name, c.record.region) for c in changes.changes] == [
        (Action.UPDATE, CHAT, "_layout")
    ]


def test_the_layout_record_ignores_weights_and_is_what_current_reads_back() -> None:
    drained = provider().render(plan({"eu": {"eu-west": 0}, "global": {"us-east": 100}}))
    live = provider().render(plan(WEIGHTS))
    assert [r for r in drained if r.region == "_layout"] == [r for r in live if r.region == "_layout"]
    assert held_records(created(WEIGHTS)) == sorted(live)  # an unchanged plan diffs to nothing


def test_a_new_layout_is_stamped_on_the_marker_after_the_tree_it_names() -> None:
    zone = created(WEIGHTS)
    p = regrouped(policy(), eu_geo=CH)
    changes = diff("route53:llm.example.com", provider(p).render(plan(WEIGHTS)), held_records(zone))
    units, after = plan_ops(LAYOUT, p, ZONE, zone, changes)
    # The new tree first, then the marker: if a later batch failed, the old stamp brings the rest next time.
    assert kinds(units) == ["geo", "marker"]
    assert [action for u in units for action, _ in u.ops] == ["CREATE", "UPSERT"]
    assert resolve(list(after.values()), CHAT, Location("EU", "CH")).addresses == {"198.51.100.3"}
    assert held_records(after) == sorted(provider(p).render(plan(WEIGHTS)))


def test_a_layout_rendered_under_another_policy_is_refused() -> None:
    zone = created(WEIGHTS)
    changes = diff(
        "route53:llm.example.com",
        provider(regrouped(policy(), eu_geo=CH)).render(plan(WEIGHTS)),
        held_records(zone),
    )
    with pytest.raises(PermanentProviderError, match=r"the change set leaves layout=[0-9a-f]+, its records"):
        planned(changes, zone)  # the provider's own policy still has the old geo


def old_marker(owner: str) -> RRSet:
    value = f'"heritage=llm-failover-plane,owner={owner}"'
    return {"Name": f"_cp.{CHAT}.", "Type": "TXT", "TTL": 300, "ResourceRecords": [{"Value": value}]}


def test_a_marker_without_layout_is_ours_with_its_layout_unknown_but_another_owners_is_refused() -> None:
    zone = created(WEIGHTS)
    zone[rrkey(old_marker("prod"))] = old_marker("prod")
    unknown = Record(CHAT, "*", "_layout", "layout=unknown", 0, 300, "TXT")
    assert unknown in held_records(zone)
    changes = diff("route53:llm.example.com", provider().render(plan(WEIGHTS)), held_records(zone))
    assert [c.before for c in changes.changes] == [unknown]
    assert held_records(planned(changes, zone)) == sorted(provider().render(plan(WEIGHTS)))

    fresh = diff("route53:llm.example.com", provider().render(plan(WEIGHTS)), [])
    with pytest.raises(PermanentProviderError, match="is owned by 'staging'"):
        planned(fresh, zone_with(old_marker("staging")))
