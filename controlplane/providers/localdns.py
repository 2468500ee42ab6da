"""The embedded authoritative DNS server: weighted, client-group-aware answers from the records it holds."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import struct
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from itertools import accumulate
from types import MappingProxyType
from typing import Any, cast

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from controlplane.changes import ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import LocalDnsProvider as LocalDnsSettings
from controlplane.policy import Policy
from controlplane.providers.base import Capabilities, PermanentProviderError
from controlplane.providers.memory import MAX_WEIGHT, RecordKey, apply_changes, dns_name, render_records

log = logging.getLogger(__name__)

StatKey = tuple[str, str, str]
"""(name, client group, rcode) of one answered query; "-" where a part does not apply.

Names are a served record name or the zone, never the raw query name, so a scan of random names cannot
grow the counter. The rcode is the DNS rcode's name, except "NODATA" for NOERROR with an empty answer.
"""
NONE = "-"
# Advertised EDNS payload (DNS flag day 2020): avoids IP fragmentation. Every answer this server builds
# (one question, at most one A/AAAA or SOA, one OPT) fits in 512 bytes, so it never needs to truncate.
UDP_PAYLOAD = 1232
_OPCODE_MASK = 0x7800
_HEADER = struct.Struct("!6H")
_ZONE_TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class _Pool:
    """One client group's weighted answers for one (name, type): positive weights only."""

    rrsets: tuple[dns.rrset.RRset, ...]  # shared by every response: never mutated
    cumulative: tuple[int, ...]

    def pick(self, rng: random.Random) -> dns.rrset.RRset:
        return self.rrsets[bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]


@dataclass(frozen=True, slots=True)
class AnswerTable:
    """Everything answer() needs, built once per apply or policy change so a query is a lookup and a pick."""

    zone: dns.name.Name
    zone_label: str
    soa: dns.rrset.RRset
    ns: dns.rrset.RRset
    ecs: bool
    default_group: str
    networks: tuple[tuple[IpNetwork, str], ...]  # most specific prefix first
    served: Mapping[dns.name.Name, str]  # served name -> its record name
    interior: frozenset[dns.name.Name]  # names between the zone and a served name: they exist, empty
    pools: Mapping[tuple[dns.name.Name, int, str], _Pool]  # (name, rdtype, group)

    @classmethod
    def build(cls, policy: Policy, records: Iterable[Record], serial: int = 1) -> AnswerTable:
        """Index `records` for the policy's zone; records the policy no longer allows are left out."""
        settings = _settings(policy)
        zone = dns.name.from_text(settings.zone)
        # Negative answers and the SOA are cached no longer than the shortest record TTL, so a name that
        # comes back (a group failing open again) is seen as quickly as a weight change.
        ttl = min(s.ttl for s in policy.services)
        host = dns.name.from_text("ns", origin=zone)
        soa = dns.rrset.from_text(
            zone, ttl, "IN", "SOA", f"{host} hostmaster.{zone} {serial} 3600 600 86400 {ttl}"
        )
        served = {dns.name.from_text(s.dns_name): dns_name(s.dns_name) for s in policy.services}
        interior: set[dns.name.Name] = set()
        for name in served:
            parent = name.parent()
            while parent != zone and parent.is_subdomain(zone):
                interior.add(parent)
                parent = parent.parent()
        # Residency is enforced again here: held records may predate a policy that narrowed a group.
        allowed = {
            (dns_name(s.dns_name), g.name): {r.name for r in policy.allowed_regions(s, g)}
            for s in policy.services
            for g in policy.client_groups
        }
        weighted: defaultdict[tuple[dns.name.Name, int, str], list[tuple[dns.rrset.RRset, int]]]
        weighted = defaultdict(list)
        for record in sorted(records):  # sorted: a seeded rng picks alike whatever order changes came in
            permitted = allowed.get((dns_name(record.name), record.group), set())
            address = _ip(record.target)
            if record.weight <= 0 or record.region not in permitted or address is None:
                continue
            name = dns.name.from_text(record.name)
            rdtype = dns.rdatatype.A if address.version == 4 else dns.rdatatype.AAAA
            rrset = dns.rrset.from_text(name, record.ttl, "IN", rdtype, str(address))
            weighted[(name, rdtype, record.group)].append((rrset, record.weight))
        networks = [
            (ipaddress.ip_network(cidr, strict=False), g.name)
            for g in policy.client_groups
            for cidr in g.sources
        ]
        return cls(
            zone=zone,
            zone_label=dns_name(settings.zone),
            soa=soa,
            ns=dns.rrset.from_text(zone, ttl, "IN", "NS", str(host)),
            ecs=settings.ecs,
            default_group=policy.default_client_group,
            networks=tuple(sorted(networks, key=lambda item: -item[0].prefixlen)),
            served=MappingProxyType(served),
            interior=frozenset(interior - served.keys()),
            pools=MappingProxyType(
                {
                    key: _Pool(tuple(r for r, _ in items), tuple(accumulate(w for _, w in items)))
                    for key, items in weighted.items()
                }
            ),
        )

    def group_for(self, address: str) -> str:
        """The client group of `address`: the most specific matching source prefix, else the default."""
        ip = _ip(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
        if ip is not None:
            for network, group in self.networks:
                if ip in network:
                    return group
        return self.default_group


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _settings(policy: Policy) -> LocalDnsSettings:
    settings = policy.providers.localdns
    if settings is None:
        raise PermanentProviderError("policy has no providers.localdns section")
    return settings


def _client_subnet(query: dns.message.Message) -> dns.edns.ECSOption | None:
    return next((o for o in query.options if isinstance(o, dns.edns.ECSOption)), None)


def answer(
    query: dns.message.Message, client_ip: str, table: AnswerTable, rng: random.Random
) -> dns.message.Message:
    """The response to `query` from `client_ip` (pure but for drawing from `rng`)."""
    return _resolve(query, client_ip, table, rng)[0]


def _resolve(
    query: dns.message.Message, client_ip: str, table: AnswerTable, rng: random.Random
) -> tuple[dns.message.Message, StatKey]:
    response = dns.message.make_response(query, our_payload=UDP_PAYLOAD)
    if query.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)
        return response, (NONE, NONE, "BADVERS")
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response, (NONE, NONE, "NOTIMP")
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response, (NONE, NONE, "FORMERR")
    question = query.question[0]
    qname, rdtype = question.name, question.rdtype
    if (
        question.rdclass != dns.rdataclass.IN
        or rdtype in _ZONE_TRANSFERS
        or not qname.is_subdomain(table.zone)
    ):
        response.set_rcode(dns.rcode.REFUSED)
        return response, (NONE, NONE, "REFUSED")
    response.flags |= dns.flags.AA
    ecs = _client_subnet(query) if table.ecs else None
    # A source prefix of 0 is the client asking not to be located (RFC 7871 7.1.2): use the source address.
    located = ecs is not None and ecs.srclen > 0
    label = table.served.get(qname)
    if ecs is not None:
        # The scope says how widely a resolver may reuse the answer: per subnet for served names only.
        scope = ecs.srclen if label is not None and located else 0
        options: list[dns.edns.Option] = [dns.edns.ECSOption(ecs.address, ecs.srclen, scope)]
        response.use_edns(0, 0, UDP_PAYLOAD, query.payload, options=options)
    if label is not None:
        group = table.group_for(ecs.address if ecs is not None and located else client_ip)
        pool = table.pools.get((qname, rdtype, group))
        if pool is None:
            # Fail-closed, not yet applied, or a type we hold nothing of: the name exists, the data does not.
            response.authority.append(table.soa)
            return response, (label, group, "NODATA")
        response.answer.append(pool.pick(rng))
        return response, (label, group, "NOERROR")
    if qname == table.zone and rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
        response.answer.append(table.soa if rdtype == dns.rdatatype.SOA else table.ns)
        return response, (table.zone_label, NONE, "NOERROR")
    response.authority.append(table.soa)
    if qname == table.zone or qname in table.interior:
        return response, (table.zone_label, NONE, "NODATA")
    response.set_rcode(dns.rcode.NXDOMAIN)
    return response, (table.zone_label, NONE, "NXDOMAIN")


def _header_reply(data: bytes, rcode: int) -> bytes | None:
    """A bare reply built from the raw header, for a packet dnspython cannot parse; None if not a query."""
    if len(data) < _HEADER.size:
        return None
    query_id, flags = struct.unpack_from("!HH", data)
    if flags & dns.flags.QR:
        return None
    return _HEADER.pack(query_id, dns.flags.QR | (flags & (_OPCODE_MASK | dns.flags.RD)) | rcode, 0, 0, 0, 0)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handle: Callable[[bytes, str], bytes | None]) -> None:
        self._handle = handle
        self._transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport; 3.11's selector transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self._handle(data, str(addr[0]))
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors from clients that went away: nothing to do, the next datagram is independent."""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class LocalDnsProvider:
    """A provider whose world is its own authoritative DNS server on UDP and TCP."""

    name: str = "localdns"
    capabilities: Capabilities = Capabilities(client_groups=True, weights=True, max_weight=MAX_WEIGHT)

    def __init__(
        self, policy: Policy, *, idle_timeout: float = 10.0, rng: random.Random | None = None
    ) -> None:
        self._settings = _settings(policy)
        self._policy = policy
        self._idle_timeout = idle_timeout
        self._rng = rng or random.Random()
        self._records: dict[RecordKey, Record] = {}
        self._serial = 1
        self._table = AnswerTable.build(policy, (), self._serial)
        self._stats: Counter[StatKey] = Counter()
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: _UdpProtocol | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def stats(self) -> Counter[StatKey]:
        """Queries answered so far by (name, client group, rcode); a copy, safe to keep."""
        return Counter(self._stats)

    @property
    def table(self) -> AnswerTable:
        return self._table

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) this server listens on, UDP and TCP alike."""
        return self._settings.listen, self._settings.port

    # ------------------------------------------------------------------ provider

    def render(self, plan: RoutingPlan) -> list[Record]:
        return render_records(self._policy, plan)

    async def current(self) -> list[Record]:
        return sorted(self._records.values())

    async def apply(self, changes: ChangeSet) -> None:
        records = apply_changes(self.name, self._records, changes)
        not_ip = sorted({c.after.target for c in changes.changes if c.after and _ip(c.after.target) is None})
        if not_ip:
            raise PermanentProviderError(f"{self.name}: can only answer with IP addresses, not {not_ip}")
        self._commit(self._policy, records)

    def update_policy(self, policy: Policy) -> None:
        """Adopt a new zone, group mapping or TTLs at once; raises and keeps the old policy if it is unusable."""
        settings = _settings(policy)
        if self._udp is not None and (settings.listen, settings.port) != (
            self._settings.listen,
            self._settings.port,
        ):
            raise PermanentProviderError(f"{self.name}: a new listen address or port needs a restart")
        self._commit(policy, self._records)
        self._settings = settings

    def _commit(self, policy: Policy, records: dict[RecordKey, Record]) -> None:
        # Built before anything is assigned, and no await in between: a query sees the old state or the new.
        table = AnswerTable.build(policy, records.values(), self._serial + 1)
        self._policy, self._records, self._table = policy, records, table
        self._serial += 1

    # ------------------------------------------------------------------ server

    async def start(self) -> None:
        if self._udp is not None:
            raise RuntimeError(f"{self.name} is already serving")
        listen, port = self._settings.listen, self._settings.port
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self._handle), local_addr=(listen, port)
            )
        except OSError as exc:
            raise PermanentProviderError(f"{self.name}: cannot listen on udp {listen}:{port}: {exc}") from exc
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, listen, port, reuse_address=True)
        except OSError as exc:
            transport.close()
            await protocol.closed
            raise PermanentProviderError(f"{self.name}: cannot listen on tcp {listen}:{port}: {exc}") from exc
        self._udp, self._udp_protocol = transport, protocol

    async def close(self) -> None:
        if self._udp is not None and self._udp_protocol is not None:
            self._udp.close()
            await self._udp_protocol.closed
            self._udp = self._udp_protocol = None
        if self._tcp is not None:
            self._tcp.close()
            for task in self._connections:
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> LocalDnsProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _handle(self, data: bytes, client_ip: str) -> bytes | None:
        """Wire in, wire out; every failure is contained here so one bad packet never stops the server."""
        try:
            query = dns.message.from_wire(data)
        except Exception:
            reply = _header_reply(data, dns.rcode.FORMERR)
            if reply is not None:
                self._stats[(NONE, NONE, "FORMERR")] += 1
            return reply
        if query.flags & dns.flags.QR:
            return None  # a response sent to a server: answering it could start a loop between two servers
        try:
            response, key = _resolve(query, client_ip, self._table, self._rng)
            wire = response.to_wire()
        except Exception:
            log.exception("%s: answering a query failed", self.name)
            self._stats[(NONE, NONE, "SERVFAIL")] += 1
            return _header_reply(data, dns.rcode.SERVFAIL)
        self._stats[key] += 1
        return wire

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Length-prefixed queries, answered in order, until the client goes quiet or away (RFC 7766)."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        client_ip = str(writer.get_extra_info("peername")[0])
        try:
            while True:
                async with asyncio.timeout(self._idle_timeout):
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    reply = self._handle(await reader.readexactly(size), client_ip)
                    if reply is None:
                        break
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # idle, half a message, or a reset: all just end the connection
        finally:
            self._connections.discard(task)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
