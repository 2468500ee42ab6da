"""answer() and AnswerTable without sockets: group mapping, weighted picks, and every kind of reply."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from controlplane.changes import Record
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.localdns import AnswerTable, answer
from controlplane.providers.records import render_records
from tests.builders import DEMO_ADDRESS, demo_data, demo_policy, plan

EU = {DEMO_ADDRESS["eu-west"], DEMO_ADDRESS["eu-central"]}
PLAN = plan(
    {
        "global": {"us-east": 50, "us-west": 30, "eu-west": 20, "eu-central": 0},
        "eu": {"eu-west": 75, "eu-central": 25},
    }
)


def table_for(routing: RoutingPlan = PLAN, policy: Policy | None = None) -> AnswerTable:
    policy = policy or demo_policy()
    return AnswerTable.build(policy, render_records(policy, routing))


def ask(
    table: AnswerTable,
    name: str = "chat.llm.internal",
    rdtype: str = "A",
    client: str = "127.0.0.1",
    subnet: dns.edns.ECSOption | None = None,
    seed: int = 0,
) -> dns.message.Message:
    query = dns.message.make_query(
        name, rdtype, use_edns=0 if subnet else None, options=[subnet] if subnet else None
    )
    return answer(query, client, table, random.Random(seed))


def addresses(response: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in response.answer for rd in rrset]


def picks(table: AnswerTable, tries: int = 100, **query: Any) -> set[str]:
    """Every address `table` answers `query` (ask's keywords) with over `tries` seeds."""
    return {addresses(ask(table, seed=seed, **query))[0] for seed in range(tries)}


def test_group_is_the_most_specific_matching_prefix() -> None:
    groups = [
        {"name": "eu", "sources": ["127.0.1.0/24"], "allowed_jurisdictions": ["EU"]},
        {"name": "eu-west-only", "sources": ["127.0.1.128/25"], "allowed_jurisdictions": ["EU"]},
        {"name": "lab", "sources": ["127.0.0.0/8", "::1/128"], "allowed_jurisdictions": ["US", "EU"]},
        {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
    ]
    table = AnswerTable.build(demo_policy(client_groups=groups), [])
    assert table.group_for("127.0.1.5") == "eu"
    assert table.group_for("127.0.1.200") == "eu-west-only"
    assert table.group_for("127.9.9.9") == "lab"
    assert table.group_for("::ffff:127.0.1.5") == "eu"  # IPv4 client on a dual-stack socket
    assert table.group_for("::1") == "lab"
    assert table.group_for("10.0.0.1") == "global"
    assert table.group_for("not an address") == "global"


def test_an_ipv4_mapped_source_matches_ipv4_clients() -> None:
    groups = [
        {"name": "eu", "sources": ["::ffff:10.20.0.0/112"], "allowed_jurisdictions": ["EU"]},
        {"name": "lab", "sources": ["::ffff:10.20.1.0/120"], "allowed_jurisdictions": ["EU"]},
        {"name": "v6", "sources": ["::/0"], "allowed_jurisdictions": ["EU"]},
        {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
    ]
    table = AnswerTable.build(demo_policy(client_groups=groups), [])
    assert table.group_for("10.20.1.1") == "lab"  # the longer mapped prefix still wins
    assert table.group_for("::ffff:10.20.9.9") == "eu"
    assert table.group_for("10.21.0.1") == "global"  # ::/0 is IPv6 clients only, as before
    assert table.group_for("2001:db8::1") == "v6"


def test_a_query_gets_exactly_one_authoritative_record_with_the_record_ttl() -> None:
    response = ask(table_for())
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert len(response.answer) == 1 and len(response.answer[0]) == 1
    assert response.answer[0].ttl == 5 and not response.authority


def test_picks_follow_the_weights_and_never_a_weight_zero_region() -> None:
    table, rng = table_for(), random.Random(7)
    query = dns.message.make_query("chat.llm.internal", "A")
    counts = Counter(addresses(answer(query, "127.0.0.1", table, rng))[0] for _ in range(10_000))
    assert DEMO_ADDRESS["eu-central"] not in counts
    for region, weight in (("us-east", 50), ("us-west", 30), ("eu-west", 20)):
        assert abs(counts[DEMO_ADDRESS[region]] / 10_000 - weight / 100) < 0.03


def test_a_client_group_only_ever_gets_its_allowed_regions() -> None:
    assert picks(table_for(), tries=200, client="127.0.1.5") == EU


def test_name_matching_ignores_case() -> None:
    assert addresses(ask(table_for(), name="CHAT.Llm.Internal"))


def test_fail_closed_is_nodata_with_the_soa() -> None:
    table = table_for(plan({"global": {"us-east": 0, "us-west": 0}, "eu": {"eu-west": 100}}))
    response = ask(table)
    assert response.rcode() == dns.rcode.NOERROR and not response.answer
    assert response.authority[0].rdtype == dns.rdatatype.SOA
    assert addresses(ask(table, client="127.0.1.5")) == [DEMO_ADDRESS["eu-west"]]


def test_before_any_apply_a_served_name_exists_but_holds_nothing() -> None:
    response = ask(AnswerTable.build(demo_policy(), []))
    assert response.rcode() == dns.rcode.NOERROR and not response.answer and response.authority


def test_other_types_of_a_served_name_are_nodata() -> None:
    for rdtype in ("AAAA", "TXT", "MX"):
        response = ask(table_for(), rdtype=rdtype)
        assert response.rcode() == dns.rcode.NOERROR and not response.answer
        assert response.authority[0].rdtype == dns.rdatatype.SOA


def test_ipv6_regions_answer_aaaa() -> None:
    data = demo_data()
    data["regions"][0]["address"] = "fd00::11"
    policy = Policy.model_validate(data)
    table = table_for(plan({"global": {"us-east": 100}}), policy)
    assert addresses(ask(table, rdtype="AAAA")) == ["fd00::11"]
    assert ask(table, rdtype="A").answer == []


def test_zone_apex_answers_soa_and_ns() -> None:
    table = table_for()
    soa = ask(table, name="llm.internal", rdtype="SOA")
    assert soa.answer[0].rdtype == dns.rdatatype.SOA and soa.flags & dns.flags.AA
    assert ask(table, name="llm.internal", rdtype="NS").answer[0][0].to_text() == "ns.llm.internal."
    apex_a = ask(table, name="llm.internal")
    assert apex_a.rcode() == dns.rcode.NOERROR and not apex_a.answer and apex_a.authority


def test_each_table_has_a_new_soa_serial() -> None:
    policy = demo_policy()
    first, second = AnswerTable.build(policy, [], serial=1), AnswerTable.build(policy, [], serial=2)
    assert first.soa[0].serial == 1 and second.soa[0].serial == 2


def test_unserved_names_in_the_zone_are_nxdomain_with_the_soa() -> None:
    for name in ("nope.llm.internal", "x.chat.llm.internal"):
        response = ask(table_for(), name=name)
        assert response.rcode() == dns.rcode.NXDOMAIN and response.flags & dns.flags.AA
        assert response.authority[0].rdtype == dns.rdatatype.SOA


def test_names_between_the_zone_and_a_served_name_exist() -> None:
    services = [{"name": "chat", "dns_name": "chat.eu.llm.internal", "regions": ["eu-west"]}]
    policy = demo_policy(services=services)
    response = ask(table_for(plan({"eu": {"eu-west": 100}}), policy), name="eu.llm.internal")
    assert response.rcode() == dns.rcode.NOERROR and not response.answer


def test_outside_the_zone_and_zone_transfers_are_refused() -> None:
    for name, rdtype in (("example.com", "A"), ("local", "SOA"), ("llm.internal", "AXFR")):
        response = ask(table_for(), name=name, rdtype=rdtype)
        assert response.rcode() == dns.rcode.REFUSED and not response.flags & dns.flags.AA


def test_client_subnet_picks_the_group_and_is_echoed_with_its_scope() -> None:
    response = ask(table_for(), client="127.0.0.1", subnet=dns.edns.ECSOption("127.0.1.0", 24))
    assert addresses(response)[0] in EU
    (echo,) = response.options
    assert isinstance(echo, dns.edns.ECSOption)
    assert (echo.address, echo.srclen, echo.scopelen) == ("127.0.1.0", 24, 24)


def test_client_subnet_outranks_the_source_address() -> None:
    seen = picks(table_for(), client="127.0.1.5", subnet=dns.edns.ECSOption("10.1.0.0", 16))
    assert DEMO_ADDRESS["us-east"] in seen


def test_an_untailored_answer_has_scope_zero() -> None:
    response = ask(table_for(), name="nope.llm.internal", subnet=dns.edns.ECSOption("127.0.1.0", 24))
    (echo,) = response.options
    assert isinstance(echo, dns.edns.ECSOption) and echo.scopelen == 0


def test_a_zero_length_subnet_falls_back_to_the_source_address() -> None:
    response = ask(table_for(), client="127.0.1.5", subnet=dns.edns.ECSOption("0.0.0.0", 0))
    assert addresses(response)[0] in EU
    (echo,) = response.options
    assert isinstance(echo, dns.edns.ECSOption) and echo.scopelen == 0


def test_client_subnet_is_ignored_when_disabled() -> None:
    table = table_for(policy=demo_policy(localdns={"ecs": False}))
    response = ask(table, client="127.0.0.1", subnet=dns.edns.ECSOption("127.0.1.0", 24), seed=3)
    assert response.options == ()
    assert DEMO_ADDRESS["us-east"] in picks(table, subnet=dns.edns.ECSOption("127.0.1.0", 24))


def test_residency_holds_even_for_records_the_policy_no_longer_allows() -> None:
    # Records rendered while "eu" could reach the US, answered under a policy where it cannot.
    records = [Record("chat.llm.internal", "eu", "us-east", DEMO_ADDRESS["us-east"], 100, 5)]
    table = AnswerTable.build(demo_policy(), records)
    assert ask(table, client="127.0.1.5").answer == []


@pytest.mark.parametrize(
    ("make", "rcode"),
    [
        (lambda q: q.use_edns(1), dns.rcode.BADVERS),
        (lambda q: q.set_opcode(dns.opcode.NOTIFY), dns.rcode.NOTIMP),
        (lambda q: q.question.clear(), dns.rcode.FORMERR),
    ],
)
def test_unsupported_queries_get_their_rcode(
    make: Callable[[dns.message.Message], object], rcode: dns.rcode.Rcode
) -> None:
    query = dns.message.make_query("chat.llm.internal", "A")
    make(query)
    assert answer(query, "127.0.0.1", table_for(), random.Random(0)).rcode() == rcode
