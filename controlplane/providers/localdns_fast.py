"""The embedded DNS server's fast path: every answer it can give precomputed as wire bytes, so a query is
answered from its header and question alone.

Answers are a function of (name, type, client group, plan), and the plan changes a few times a second at
most: FastTable.build() renders each once per table, resolve() parses only the 12-byte header, the question
and the OPT record's options, then joins the query's own header fields and question with the precomputed
sections. What it does not fully understand it leaves (None) to the full, dnspython path, which answers or
refuses it as before.
"""

from __future__ import annotations

import random
import socket
import struct
from bisect import bisect_right
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

if TYPE_CHECKING:
    from controlplane.providers.localdns import AnswerTable

StatKey = tuple[str, str, str]
"""(name, client group, rcode) of one answered query; "-" where a part does not apply.

Names are a served record name or the zone, never the raw query name, so a scan of random names cannot
grow the counter. The rcode is the DNS rcode's name, except "NODATA" for NOERROR with an empty answer.
"""
NONE = "-"
# Advertised EDNS payload (DNS flag day 2020): avoids IP fragmentation. Every answer this server builds
# (one question, at most one A/AAAA or SOA, one OPT) fits in 512 bytes, so it never needs to truncate.
UDP_PAYLOAD = 1232
_HEADER = struct.Struct("!6H")
_TYPE_CLASS = struct.Struct("!HH")
_OPT = struct.Struct("!HHBBHH")  # type, payload, extended rcode, version, flags, rdata length
_ECS_HEAD = struct.Struct("!HBB")  # family, source prefix length, scope prefix length
_NOT_A_QUERY = 0x8000 | 0x7800  # QR, or an opcode other than QUERY
_ZONE_TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
_IN = 1
_OPT_TYPE = 41
_ECS_CODE = 8
_COOKIE_CODE = 10  # ignored, as the full path does: this server sets no cookies
_FAMILIES = {1: (socket.AF_INET, 4), 2: (socket.AF_INET6, 16)}
GROUP_CACHE = 65_536
"""Client addresses whose group is remembered per table; beyond, the memory is cleared (a scan of sources or
subnets must not grow it without bound)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The sections after the question of one response, and what its header says of them."""

    flags: int  # AA and the rcode
    answers: int
    authorities: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Weighted:
    """One answer per region, picked by weight (positive weights only)."""

    answers: tuple[Answer, ...]
    cumulative: tuple[int, ...]

    def pick(self, rng: random.Random) -> Answer:
        return self.answers[bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]


@dataclass(frozen=True, slots=True)
class Served:
    """A served name: its answers by (type, client group); NODATA with the SOA for any other pair."""

    label: str
    answers: dict[tuple[int, str], Answer | Weighted]
    nodata: Answer


@dataclass(frozen=True, slots=True)
class Fixed:
    """A name that exists without being served (the apex, a name between it and a served one)."""

    by_type: dict[int, Answer]  # NOERROR with data
    nodata: Answer


@dataclass(frozen=True, slots=True)
class FastTable:
    """The full table and every answer of it rendered, keyed by lowercased wire name."""

    full: AnswerTable
    zone: bytes
    names: dict[bytes, Served | Fixed]
    nxdomain: Answer  # any other name in the zone
    refused: Answer  # a name outside it
    _groups: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def build(cls, full: AnswerTable) -> FastTable:
        names: dict[bytes, Served | Fixed] = {}
        groups: dict[dns.name.Name, dict[tuple[int, str], Answer | Weighted]] = {n: {} for n in full.served}
        for (name, rdtype, group), pool in full.pools.items():
            answers = tuple(_render(name, answer=pool_rrset) for pool_rrset in pool.rrsets)
            groups[name][(rdtype, group)] = Weighted(answers, pool.cumulative)
        for name, label in full.served.items():
            names[_key(name)] = Served(label, groups[name], _render(name, authority=full.soa))
        for name in full.interior:
            names[_key(name)] = Fixed({}, _render(name, authority=full.soa))
        zone = full.zone
        apex: dict[int, Answer] = {
            dns.rdatatype.SOA: _render(zone, answer=full.soa),
            dns.rdatatype.NS: _render(zone, answer=full.ns),
        }
        names[_key(zone)] = Fixed(apex, _render(zone, authority=full.soa))
        # Its SOA written out whole: a compression pointer would depend on where the zone sits in a name
        # that is not known in advance.
        soa = BytesIO()
        full.soa.to_wire(soa)
        nxdomain = Answer(dns.flags.AA | dns.rcode.NXDOMAIN, 0, 1, soa.getvalue())
        return cls(full, _key(zone), names, nxdomain, Answer(dns.rcode.REFUSED, 0, 0, b""))

    def group(self, address: str) -> str:
        group = self._groups.get(address)
        if group is None:
            if len(self._groups) >= GROUP_CACHE:
                self._groups.clear()
            group = self._groups[address] = self.full.group_for(address)
        return group


def _key(name: dns.name.Name) -> bytes:
    return name.to_digestable()  # its wire form, lowercased


def _render(
    name: dns.name.Name,
    *,
    answer: dns.rrset.RRset | None = None,
    authority: dns.rrset.RRset | None = None,
) -> Answer:
    """The sections after the question of an authoritative response about `name`, without EDNS.

    Compression pointers in them point into the question at offset 12, where every query asking for this
    name in any case carries it, byte for byte the same length.
    """
    response = dns.message.make_response(dns.message.make_query(name, dns.rdatatype.A))
    response.flags |= dns.flags.AA
    if answer is not None:
        response.answer.append(answer)
    if authority is not None:
        response.authority.append(authority)
    wire = response.to_wire()
    question_end = 12 + len(_key(name)) + 4
    _, _, _, answers, authorities, _ = _HEADER.unpack_from(wire)
    return Answer(dns.flags.AA, answers, authorities, wire[question_end:])


def resolve(
    data: bytes, client_ip: str, table: FastTable, rng: random.Random
) -> tuple[bytes, StatKey] | None:
    """The response to the query `data` from `client_ip` and its statistics key; None for the full path.

    Taken here: opcode QUERY, one question of class IN (not a zone transfer), no records besides at most one
    OPT of version 0 whose options are client subnets (one, well formed) and cookies, and nothing after.
    """
    size = len(data)
    if size < 17:
        return None
    query_id, flags, questions, answers, authorities, additionals = _HEADER.unpack_from(data)
    if flags & _NOT_A_QUERY or questions != 1 or answers or authorities or additionals > 1:
        return None
    end = 12
    while True:  # the question's name: labels only, a compression pointer is no query's business
        if end >= size:
            return None
        length = data[end]
        if length == 0:
            break
        if length > 63:
            return None
        end += length + 1
    end += 1
    question_end = end + 4
    if end - 12 > 255 or question_end > size:
        return None
    rdtype, rdclass = _TYPE_CLASS.unpack_from(data, end)
    if rdclass != _IN or rdtype in _ZONE_TRANSFERS:
        return None
    subnet: tuple[int, int, bytes] | None = None  # family, source prefix length, address bytes
    if additionals:
        parsed = _options(data, question_end)
        if parsed is None:
            return None
        edns, subnet = True, parsed[0]
    elif question_end != size:
        return None
    else:
        edns = False
    full = table.full
    if not full.ecs:
        subnet = None
    name = data[12:end].lower()
    entry = table.names.get(name)
    scope = 0
    if isinstance(entry, Served):
        located = subnet is not None and subnet[1] > 0
        if located:
            assert subnet is not None
            family, source, address = subnet
            af, width = _FAMILIES[family]
            group = table.group(socket.inet_ntop(af, address.ljust(width, b"\0")))
            scope = source
        else:
            group = table.group(client_ip)
        choice = entry.answers.get((rdtype, group))
        if choice is None:
            answer, key = entry.nodata, (entry.label, group, "NODATA")
        else:
            answer = choice.pick(rng) if isinstance(choice, Weighted) else choice
            key = (entry.label, group, "NOERROR")
    elif isinstance(entry, Fixed):
        data_answer = entry.by_type.get(rdtype)
        if data_answer is None:
            answer, key = entry.nodata, (full.zone_label, NONE, "NODATA")
        else:
            answer, key = data_answer, (full.zone_label, NONE, "NOERROR")
    elif _in_zone(name, table.zone):
        answer, key = table.nxdomain, (full.zone_label, NONE, "NXDOMAIN")
    else:
        # Refused before any client subnet is looked at, as on the full path: no option echoed.
        answer, key, subnet = table.refused, (NONE, NONE, "REFUSED"), None
    opt = b""
    if edns:
        options = b""
        if subnet is not None:
            family, source, address = subnet
            options = struct.pack("!HH", _ECS_CODE, 4 + len(address)) + _ECS_HEAD.pack(family, source, scope)
            options += address
        opt = b"\0" + _OPT.pack(_OPT_TYPE, UDP_PAYLOAD, 0, 0, 0, len(options)) + options
    header = _HEADER.pack(
        query_id,
        dns.flags.QR | (flags & dns.flags.RD) | answer.flags,
        1,
        answer.answers,
        answer.authorities,
        1 if edns else 0,
    )
    return header + data[12:question_end] + answer.body + opt, key


def _options(data: bytes, at: int) -> tuple[tuple[int, int, bytes] | None] | None:
    """The client subnet (or None) of the OPT record at `at`, the packet's last record; None to fall back."""
    size = len(data)
    if at + 11 > size or data[at] != 0:
        return None
    rdtype, _, _, version, _, length = _OPT.unpack_from(data, at + 1)
    at += 11
    if rdtype != _OPT_TYPE or version != 0 or at + length != size:
        return None
    subnet: tuple[int, int, bytes] | None = None
    while at < size:
        if at + 4 > size:
            return None
        code, length = struct.unpack_from("!HH", data, at)
        at += 4
        if at + length > size:
            return None
        if code == _ECS_CODE:
            if subnet is not None or length < 4:
                return None
            family, source, _ = _ECS_HEAD.unpack_from(data, at)
            address = data[at + 4 : at + length]
            known = _FAMILIES.get(family)
            # Only the canonical form (RFC 7871 6): just the prefix's bytes, the bits past it zero.
            if known is None or source > known[1] * 8 or len(address) != (source + 7) // 8:
                return None
            if source % 8 and address[-1] & (0xFF >> (source % 8)):
                return None
            subnet = (family, source, address)
        elif code != _COOKIE_CODE:
            return None
        at += length
    return (subnet,)


def _in_zone(name: bytes, zone: bytes) -> bool:
    """Whether the wire name `name` is `zone` or below it: its tail, starting on a label boundary."""
    start = len(name) - len(zone)
    if start < 0 or not name.endswith(zone):
        return False
    at = 0
    while at < start:
        at += name[at] + 1
    return at == start
