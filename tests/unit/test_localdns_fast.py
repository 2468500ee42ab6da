"""The fast path against the full one: the same response to every query it takes, the rest left alone."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import dns.edns
import dns.message
import dns.opcode
import dns.rdataclass
import pytest

from controlplane.providers.localdns import AnswerTable, answer
from controlplane.providers.localdns_fast import FastTable, resolve
from controlplane.providers.records import render_records
from tests.builders import demo_policy, plan

PLAN = plan(
    {
        "global": {"us-east": 50, "us-west": 30, "eu-west": 20, "eu-central": 0},
        "eu": {"eu-west": 75, "eu-central": 25},
    }
)
SERVICES = [
    {
        "name": "chat",
        "dns_name": "chat.llm.internal",
        "regions": ["us-east", "us-west", "eu-west", "eu-central"],
    },
    {"name": "deep", "dns_name": "chat.eu.llm.internal", "regions": ["eu-west", "eu-central"]},
]
NAMES = ["chat.llm.internal", "CHAT.Llm.Internal", "eu.llm.internal", "chat.eu.llm.internal", "llm.internal"]
NAMES += ["nope.llm.internal", "x.chat.llm.internal", "Xllm.internal", "example.com", "."]
TYPES = ["A", "AAAA", "SOA", "NS", "MX", "TXT"]
SUBNETS = [
    None,
    dns.edns.ECSOption("127.0.1.0", 24),
    dns.edns.ECSOption("10.1.0.0", 16),
    dns.edns.ECSOption("127.0.1.128", 25),
    dns.edns.ECSOption("0.0.0.0", 0),
    dns.edns.ECSOption("fd00::", 48),
]
CLIENTS = ["127.0.0.1", "127.0.1.5", "::ffff:127.0.1.5"]


def table(ecs: bool = True) -> FastTable:
    policy = demo_policy(services=SERVICES, localdns={"ecs": ecs})
    return FastTable.build(AnswerTable.build(policy, render_records(policy, PLAN), serial=7))


def fast_and_full(wire: bytes, client: str, fast: FastTable, seed: int) -> tuple[bytes, dns.message.Message]:
    got = resolve(wire, client, fast, random.Random(seed))
    assert got is not None, dns.message.from_wire(wire)
    return got[0], answer(dns.message.from_wire(wire), client, fast.full, random.Random(seed))


@pytest.mark.parametrize("ecs", [True, False])
def test_every_query_it_takes_gets_the_full_paths_response(ecs: bool) -> None:
    fast = table(ecs)
    checked = 0
    for name in NAMES:
        for rdtype in TYPES:
            for subnet in [*SUBNETS, "edns", "cookie"]:
                for client in CLIENTS:
                    if subnet == "edns":
                        query = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
                    elif subnet == "cookie":
                        cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
                        query = dns.message.make_query(name, rdtype, use_edns=0, options=[cookie])
                    else:
                        assert not isinstance(subnet, str)
                        options = [subnet] if subnet else None
                        query = dns.message.make_query(
                            name, rdtype, use_edns=0 if subnet else None, options=options
                        )
                    query.flags &= ~dns.flags.RD if checked % 2 else ~0
                    wire = query.to_wire()
                    got, expected = fast_and_full(wire, client, fast, seed=checked)
                    # Alike but for case: the fast answer's owner names point at the question as asked.
                    same = dns.message.from_wire(got).to_text().lower() == expected.to_text().lower()
                    assert same, (name, rdtype, subnet, client)
                    # The question comes back as asked, case included: resolvers using 0x20 check it.
                    asked = 12 + len(query.question[0].name.to_wire()) + 4
                    assert got[12:asked] == wire[12:asked]
                    checked += 1
    assert checked == len(NAMES) * len(TYPES) * (len(SUBNETS) + 2) * len(CLIENTS)


def test_weighted_picks_draw_as_the_full_path_does() -> None:
    fast = table()
    wire = dns.message.make_query("chat.llm.internal", "A").to_wire()
    for seed in range(200):
        got, expected = fast_and_full(wire, "127.0.0.1", fast, seed)
        assert dns.message.from_wire(got).answer == expected.answer


def raw(change: Callable[[bytes], bytes], **make: object) -> bytes:
    return change(dns.message.make_query("chat.llm.internal", "A", **make).to_wire())  # type: ignore[arg-type]


def query_with(change: Callable[[dns.message.Message], object]) -> bytes:
    query = dns.message.make_query("chat.llm.internal", "A", use_edns=0)
    change(query)
    return query.to_wire()


def ecs_wire(family: int, source: int, address: bytes) -> bytes:
    option = struct.pack("!HBB", family, source, 0) + address
    query = dns.message.make_query("chat.llm.internal", "A", use_edns=0).to_wire()
    return query[:-2] + struct.pack("!HHH", 4 + len(option), 8, len(option)) + option


@pytest.mark.parametrize(
    "wire",
    [
        query_with(lambda q: q.set_opcode(dns.opcode.NOTIFY)),
        query_with(lambda q: q.use_edns(1)),
        query_with(lambda q: q.use_edns(0, pad=128)),  # padding: an option it does not know
        query_with(lambda q: q.use_edns(0, options=[dns.edns.ECSOption("10.0.0.0", 8)] * 2)),
        query_with(lambda q: setattr(q.question[0], "rdclass", dns.rdataclass.CH)),
        query_with(lambda q: q.question.clear()),
        dns.message.make_query("llm.internal", "AXFR").to_wire(),
        raw(lambda w: w + b"\0"),  # trailing junk
        raw(lambda w: w[:-1]),  # cut short
        raw(lambda w: w[:12] + b"\xc0\x0c" + w[-4:]),  # a compression pointer for a name
        ecs_wire(1, 24, b"\x0a\x00\x00\x01"),  # more address bytes than the prefix needs
        ecs_wire(1, 23, b"\x0a\x00\x01"),  # a bit set past the prefix
        ecs_wire(1, 33, b"\x0a\x00\x00\x00\x00"),  # longer than an IPv4 address
        ecs_wire(3, 8, b"\x0a"),  # an unknown family
    ],
    ids=[
        "notify",
        "edns1",
        "padding",
        "two-subnets",
        "chaos-class",
        "no-question",
        "axfr",
        "trailing",
        "short",
        "pointer",
        "subnet-long",
        "subnet-bits",
        "subnet-prefix",
        "subnet-family",
    ],
)
def test_what_it_does_not_take_is_left_to_the_full_path(wire: bytes) -> None:
    assert resolve(wire, "127.0.0.1", table(), random.Random(0)) is None


def test_client_groups_are_remembered_per_table_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("controlplane.providers.localdns_fast.GROUP_CACHE", 4)
    fast = table()
    wire = dns.message.make_query("chat.llm.internal", "A").to_wire()
    for i in range(10):
        assert resolve(wire, f"10.0.0.{i}", fast, random.Random(0)) is not None
        assert len(fast._groups) <= 4
    for client in ("127.0.1.5", "10.0.0.1", "127.0.1.6"):
        got = resolve(wire, client, fast, random.Random(0))
        assert got is not None and got[1][1] == fast.full.group_for(client)
