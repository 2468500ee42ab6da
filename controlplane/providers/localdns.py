"""The embedded authoritative DNS server: weighted, client-group-aware answers from the records it holds."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import struct
import time
from bisect import bisect_right
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import accumulate
from math import inf
from typing import Any

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
from controlplane.providers.base import LOCAL, Capabilities, PermanentProviderError, Tuning
from controlplane.providers.localdns_fast import NONE, UDP_PAYLOAD, FastTable, StatKey, resolve
from controlplane.providers.localdns_pool import WorkerPool
from controlplane.providers.records import MAX_WEIGHT, RecordKey, apply_changes, dns_name, render_records

log = logging.getLogger(__name__)

MAX_QUERY_SIZE = 512
"""The largest query this server parses; larger ones are dropped before dnspython sees them.

A query is one question and at most one OPT: header 12 + name 255 at most + type and class 4 + OPT 11 +
client subnet 24 (an IPv6 /128) + cookie 44 = 350 bytes, 384 if padded to a 128-byte block (RFC 8467), and
512 bytes was a whole UDP message before EDNS. What is bigger is no query but it costs: dnspython spends
about 0.2 s on the loop parsing a 64 KB packet of 5,000 records.
"""
LOG_INTERVAL = 60.0  # seconds between two log lines of one kind of failure a remote peer can cause
_OPCODE_MASK = 0x7800
_HEADER = struct.Struct("!6H")
_ZONE_TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped IPv6 addresses (RFC 4291 2.5.5.2)


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
        networks = [(source_network(cidr), g.name) for g in policy.client_groups for cidr in g.sources]
        return cls(
            zone=zone,
            zone_label=dns_name(settings.zone),
            soa=soa,
            ns=dns.rrset.from_text(zone, ttl, "IN", "NS", str(host)),
            ecs=settings.ecs,
            default_group=policy.default_client_group,
            networks=tuple(sorted(networks, key=lambda item: -item[0].prefixlen)),
            served=served,
            interior=frozenset(interior - served.keys()),
            pools={
                key: _Pool(tuple(r for r, _ in items), tuple(accumulate(w for _, w in items)))
                for key, items in weighted.items()
            },
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


def source_network(cidr: str) -> IpNetwork:
    """The network of `cidr`, an IPv4-mapped IPv6 one (::ffff:10.0.0.0/104) as the IPv4 network it maps.

    group_for() sees IPv4 clients as IPv4 addresses, even those a dual-stack socket reports as mapped: a
    mapped network left as IPv6 would never match anyone.
    """
    network = ipaddress.ip_network(cidr, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # every address in ::ffff:0:0/96 maps
        return ipaddress.IPv4Network((mapped, network.prefixlen - _MAPPED.prefixlen))
    return network


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


def _screen(data: bytes) -> str | None:
    """Why `data` is refused before it is parsed, from its size and raw header alone; None to parse it."""
    if len(data) < _HEADER.size:
        return "short"
    _, flags, questions, answers, authorities, additionals = _HEADER.unpack_from(data)
    if flags & dns.flags.QR:
        return "response"  # answering a response could start a loop between two servers
    if len(data) > MAX_QUERY_SIZE:
        return "oversize"
    # A query carries exactly one question and, at most, its OPT record: every other record is only
    # something for the parser to chew on.
    if questions != 1 or answers or authorities or additionals > 1:
        return "sections"
    return None


@dataclass(slots=True)
class _Throttle:
    """Lets one log line through per `interval` and counts the ones held back.

    Failures a remote peer can cause must not let it fill the disk with tracebacks.
    """

    interval: float
    clock: Callable[[], float] = time.monotonic
    _last: float = field(default=-inf, init=False)
    _held: int = field(default=0, init=False)

    def due(self) -> int | None:
        """How many lines were held back since the last one if this one may be logged, else None."""
        now = self.clock()
        if now - self._last < self.interval:
            self._held += 1
            return None
        held, self._last, self._held = self._held, now, 0
        return held


def _header_reply(data: bytes, rcode: int) -> bytes | None:
    """A bare reply built from the raw header alone, for a packet not to be parsed; None if not a query."""
    if len(data) < _HEADER.size:
        return None
    query_id, flags = struct.unpack_from("!HH", data)
    if flags & dns.flags.QR:
        return None
    return _HEADER.pack(query_id, dns.flags.QR | (flags & (_OPCODE_MASK | dns.flags.RD)) | rcode, 0, 0, 0, 0)


UDP_BATCH = 32
"""Datagrams read per wake-up of the loop: few syscalls per query under load, and a turn for the other
callbacks of the loop between two batches."""


class Responder:
    """The server itself, on sockets bound by someone else: one runs in the provider's process, or one in
    each worker process (controlplane.providers.localdns_worker).

    The table is one reference, replaced whole: a query is answered from the table it started with.
    """

    def __init__(
        self,
        table: FastTable,
        *,
        idle_timeout: float,
        query_timeout: float,
        max_connections: int,
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.stats: Counter[StatKey] = Counter()
        self.dropped: Counter[str] = Counter()
        self._idle_timeout = idle_timeout
        self._query_timeout = query_timeout
        self._max_connections = max_connections
        self._rng = rng or random.Random()
        self._failure_log = _Throttle(LOG_INTERVAL)
        self._eviction_log = _Throttle(LOG_INTERVAL)
        self._udp: socket.socket | None = None
        self._tcp: asyncio.Server | None = None
        # TCP connections still served, the one that completed a query longest ago first. They are ended by
        # closing their writer, never by cancelling their task: 3.11's streams log a traceback for that.
        self._connections: OrderedDict[asyncio.Task[Any], asyncio.StreamWriter] = OrderedDict()

    @property
    def connections(self) -> int:
        return sum(not writer.is_closing() for writer in self._connections.values())

    async def serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        """Answer on `udp` and `tcp` (a listening socket) from the running loop until close()."""
        udp.setblocking(False)
        asyncio.get_running_loop().add_reader(udp.fileno(), self._read_udp, udp)
        self._udp = udp
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)

    async def close(self) -> None:
        if self._udp is not None:
            asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in self._connections.values():
                writer.close()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    def _read_udp(self, sock: socket.socket) -> None:
        for _ in range(UDP_BATCH):
            try:
                # One byte more than any query may have: a bigger datagram is seen as oversize, never copied.
                data, peer = sock.recvfrom(MAX_QUERY_SIZE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error from a client gone away, queued on the socket: the next is independent
            reply = self.handle(data, str(peer[0]))
            if reply is not None:
                with suppress(OSError):  # a full buffer or a client gone: over UDP it asks again
                    sock.sendto(reply, peer)

    def handle(self, data: bytes, client_ip: str, *, connected: bool = False) -> bytes | None:
        """Wire in, wire out; every failure is contained here so one bad packet never stops the server.

        A packet refused unparsed is dropped silently over UDP, where a reply to a forged source would be
        reflected at a victim; over TCP (`connected`), whose handshake proves the source, a query with the
        wrong sections still gets its FORMERR.
        """
        refused = _screen(data)
        if refused == "sections" and connected:
            self.stats[(NONE, NONE, "FORMERR")] += 1
            return _header_reply(data, dns.rcode.FORMERR)
        if refused is not None:
            self.dropped[refused] += 1
            return None
        table = self.table  # one table for the whole answer, whatever replaces it meanwhile
        try:
            fast = resolve(data, client_ip, table, self._rng)
        except Exception:
            return self._servfail(data)
        if fast is not None:
            self.stats[fast[1]] += 1
            return fast[0]
        try:
            query = dns.message.from_wire(data)
        except Exception:
            self.stats[(NONE, NONE, "FORMERR")] += 1
            return _header_reply(data, dns.rcode.FORMERR)
        try:
            response, key = _resolve(query, client_ip, table.full, self._rng)
            wire = response.to_wire()
        except Exception:
            return self._servfail(data)
        self.stats[key] += 1
        return wire

    def _servfail(self, data: bytes) -> bytes | None:
        self.stats[(NONE, NONE, "SERVFAIL")] += 1
        self._log_failure("answering a query")
        return _header_reply(data, dns.rcode.SERVFAIL)

    def _log_failure(self, what: str) -> None:
        """Logs the exception being handled, with its traceback, at most once per LOG_INTERVAL."""
        held = self._failure_log.due()
        if held is not None:
            log.exception("localdns: %s failed (%d more since the last report, not logged)", what, held)

    def _admit(self, task: asyncio.Task[Any], writer: asyncio.StreamWriter) -> None:
        """Makes room for a new TCP connection by closing the one idle longest (RFC 7766 6.2.3)."""
        if self.connections >= self._max_connections:
            oldest = next(w for w in self._connections.values() if not w.is_closing())
            oldest.close()  # its task reads the end of the stream and leaves
            self.dropped["evicted"] += 1
            held = self._eviction_log.due()
            if held is not None:
                log.warning(
                    "localdns: %d TCP connections open, closing the ones idle longest (%d more since the last report)",
                    self._max_connections,
                    held,
                )
        self._connections[task] = writer

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Length-prefixed queries, answered in order, until the client goes quiet or away (RFC 7766)."""
        task = asyncio.current_task()
        assert task is not None
        self._admit(task, writer)
        try:
            client_ip = str(writer.get_extra_info("peername")[0])
            while await self._exchange(reader, writer, client_ip):
                self._connections.move_to_end(task)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # half a message, or a reset: both just end the connection
        except Exception:
            self._log_failure("serving a TCP connection")
        finally:
            self._connections.pop(task, None)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client_ip: str
    ) -> bool:
        """Reads one query and answers it; False when the connection should end instead."""
        try:
            async with asyncio.timeout(self._idle_timeout):
                (size,) = struct.unpack("!H", await reader.readexactly(2))
        except TimeoutError:
            return False  # idle: the usual end of a connection
        if size > MAX_QUERY_SIZE:
            self.dropped["oversize"] += 1  # not even read: a client sending that is no DNS client
            return False
        try:
            async with asyncio.timeout(self._query_timeout):
                reply = self.handle(await reader.readexactly(size), client_ip, connected=True)
                if reply is None:
                    return False
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except TimeoutError:
            self.dropped["slow"] += 1
            return False
        return True


def bind(listen: str, port: int) -> tuple[socket.socket, socket.socket]:
    """The UDP socket and the listening TCP socket of (listen, port); PermanentProviderError if taken."""
    bound: list[socket.socket] = []
    try:
        for kind, name in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
            try:
                family, _, proto, _, address = socket.getaddrinfo(listen, port, type=kind)[0]
                sock = socket.socket(family, kind, proto)
                bound.append(sock)
                if kind == socket.SOCK_STREAM:
                    # A restart binds again at once, whatever connections of the last run wait in TIME_WAIT.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                if kind == socket.SOCK_STREAM:
                    sock.listen(socket.SOMAXCONN)
            except OSError as exc:
                raise PermanentProviderError(
                    f"localdns: cannot listen on {name} {listen}:{port}: {exc}"
                ) from exc
    except PermanentProviderError:
        for sock in bound:
            sock.close()
        raise
    udp, tcp = bound
    return udp, tcp


class LocalDnsProvider:
    """A provider whose world is its own authoritative DNS server on UDP and TCP.

    With `workers` = 0 the server answers on the provider's own event loop; with more, each worker process
    answers on the sockets the provider bound (the kernel spreads queries among them), fed every new table
    and restarted when it dies, so a query flood never delays a probe and a probe stall never delays an answer.
    """

    name: str = "localdns"
    capabilities: Capabilities = Capabilities(
        client_groups=True, weights=True, max_weight=MAX_WEIGHT, in_process=True
    )
    tuning: Tuning = LOCAL

    def __init__(
        self,
        policy: Policy,
        *,
        idle_timeout: float = 10.0,
        query_timeout: float = 2.0,
        max_connections: int = 128,
        rng: random.Random | None = None,
        workers: int = 0,
    ) -> None:
        """`idle_timeout`: a TCP connection waiting that long for its next query is closed; `query_timeout`:
        so is one taking longer to send a query (slow drip) or to take its reply; `max_connections`: open TCP
        connections at most (per worker), the one idle longest is closed to admit another (descriptors are
        finite and shared with the probes and the admin API); `rng` only serves in process."""
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, not {workers}")
        self._settings = _settings(policy)
        self._policy = policy
        self._records: dict[RecordKey, Record] = {}
        self._serial = 1
        self._workers = workers
        self._worker_settings = {
            "idle_timeout": idle_timeout,
            "query_timeout": query_timeout,
            "max_connections": max_connections,
        }
        self._responder = Responder(
            FastTable.build(AnswerTable.build(policy, (), self._serial)),
            idle_timeout=idle_timeout,
            query_timeout=query_timeout,
            max_connections=max_connections,
            rng=rng,
        )
        self._pool: WorkerPool | None = None
        self._serving = False

    @property
    def stats(self) -> Counter[StatKey]:
        """Queries answered so far by (name, client group, rcode); a copy, safe to keep.

        From workers, as they last reported (every REPORT_INTERVAL); a worker that died loses what it
        answered since its last report.
        """
        if self._pool is not None:
            return self._pool.stats
        return Counter(self._responder.stats)

    @property
    def dropped(self) -> Counter[str]:
        """What was dropped unanswered, by reason; a copy.

        Packets refused before parsing: "short" (no header), "response", "oversize" (over MAX_QUERY_SIZE),
        "sections" (not one question, or records besides one OPT). TCP connections closed early: "slow"
        (a query or its reply took over query_timeout), "evicted" (idle longest when the cap was reached).
        """
        if self._pool is not None:
            return self._pool.dropped
        return Counter(self._responder.dropped)

    @property
    def connections(self) -> int:
        """TCP connections open now."""
        if self._pool is not None:
            return self._pool.connections
        return self._responder.connections

    @property
    def restarts(self) -> int:
        """Worker processes restarted after they died."""
        return self._pool.restarts if self._pool is not None else 0

    @property
    def worker_pids(self) -> list[int]:
        return self._pool.pids if self._pool is not None else []

    @property
    def table(self) -> AnswerTable:
        return self._responder.table.full

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
        if self._pool is not None:
            await self._pool.settle()

    def update_policy(self, policy: Policy) -> None:
        """Adopt a new zone, group mapping or TTLs at once; raises and keeps the old policy if it is unusable."""
        settings = _settings(policy)
        if self._serving and (settings.listen, settings.port, settings.workers) != (
            self._settings.listen,
            self._settings.port,
            self._settings.workers,
        ):
            raise PermanentProviderError(
                f"{self.name}: a new listen address, port or worker count needs a restart"
            )
        self._commit(policy, self._records)
        self._settings = settings

    def _commit(self, policy: Policy, records: dict[RecordKey, Record]) -> None:
        # Built whole before it replaces the table, and no await in between: a query sees the old or the new.
        table = FastTable.build(AnswerTable.build(policy, records.values(), self._serial + 1))
        self._policy, self._records, self._responder.table = policy, records, table
        self._serial += 1
        if self._pool is not None:
            self._pool.publish(table)

    # ------------------------------------------------------------------ server

    async def start(self) -> None:
        if self._serving:
            raise RuntimeError(f"{self.name} is already serving")
        udp, tcp = bind(self._settings.listen, self._settings.port)
        try:
            if self._workers:
                self._pool = WorkerPool(
                    udp, tcp, self._workers, lambda: self._responder.table, self._worker_settings
                )
                await self._pool.start()
            else:
                await self._responder.serve(udp, tcp)
        except BaseException:
            udp.close()
            tcp.close()
            self._pool = None
            raise
        self._serving = True

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self._responder.close()
        self._serving = False

    async def __aenter__(self) -> LocalDnsProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _handle(self, data: bytes, client_ip: str) -> bytes | None:
        """One UDP query answered in process, for benchmarks."""
        return self._responder.handle(data, client_ip)
