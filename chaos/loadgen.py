"""Real clients for a drill: each client group resolves the service through the DNS the plane drives, from
its own source address or EDNS client subnet, and streams completions from the address it was given.

A DNS answer holds addresses only, so the caller says which region and URL each address stands for
(`targets`): from the policy for the demo stack, or its own map for a staging stack whose regions share an
address and differ by port. The sim regions do not name themselves in their replies, which is one more
reason the map is the caller's.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import ipaddress
import random
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Self

import aiohttp
import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from controlplane import __version__
from controlplane.policy import Policy
from controlplane.stats import quantile
from probes.http import RefusedBody, make_session, refuse_encoded
from probes.inference import StreamReading, read_stream

NO_REGION = "-"
CLIENT_USER_AGENT = f"llm-failover-plane-drill-client/{__version__}"
"""The region of an outcome that never reached one (the name did not resolve, or to an unknown address)."""


class Reason(StrEnum):
    """Why a client's request failed."""

    DNS_TIMEOUT = "dns_timeout"
    DNS_ERROR = "dns_error"  # an rcode other than NOERROR, or a reply that could not be used
    NO_ADDRESS = "no_address"  # NOERROR without an address: the group fails closed
    UNKNOWN_ADDRESS = "unknown_address"  # an address the caller's targets do not name
    CONNECT_REFUSED = "connect_refused"
    CONNECT_FAILED = "connect_failed"
    DISCONNECTED = "disconnected"  # the server closed the connection before its response
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    STREAM_CUT = "stream_cut"  # the body ended, or broke, before [DONE]
    STREAM_ERROR = "stream_error"  # an error event, no token, or a chunk that is no JSON object
    TOO_LARGE = "too_large"
    WRONG_MODEL = "wrong_model"


@dataclass(frozen=True, slots=True)
class GroupLoad:
    """Clients impersonating one of the policy's client groups, `group` (default: `name`, their label in the
    report, so one group can be impersonated both by source address and by client subnet).

    The DNS server learns the group from `source` (the address the query is sent from; any of 127/8 binds
    on Linux) unless `subnet` puts an EDNS Client Subnet option in the query. `clients` stubs, each with its
    own cache, share the group's `rate` (requests per second), as many users behind one resolver would not.
    """

    name: str
    rate: float
    source: str = "127.0.0.1"
    subnet: str | None = None
    clients: int = 4
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.name)
        if self.rate <= 0 or self.clients < 1:
            raise ValueError(f"group {self.name}: rate must be positive and clients at least 1")
        if self.subnet is not None:
            ipaddress.ip_network(self.subnet)  # raises on a typo before any query goes out


@dataclass(frozen=True, slots=True)
class Target:
    """Where an answered address sends a client: the region it is and its base URL."""

    region: str
    url: str


def policy_targets(policy: Policy) -> dict[str, Target]:
    """Each region's DNS address -> the region at its endpoint, for stacks where every region has its own."""
    return {r.dns_address: Target(r.name, r.endpoint.rstrip("/")) for r in policy.regions}


@dataclass(frozen=True, slots=True)
class LoadSettings:
    dns: tuple[str, int]
    name: str  # the service's DNS name
    groups: tuple[GroupLoad, ...]
    targets: Mapping[str, Target]
    path: str = "/v1/chat/completions"
    model: str | None = None  # sent, and a stream from another model is a failure
    max_tokens: int = 4
    dns_timeout: float = 1.0
    request_timeout: float = 5.0  # from the request to the end of the stream
    max_ttl: float = 5.0  # a stub caches an answer for its TTL, but never longer than this
    max_in_flight: int = 256  # arrivals beyond it are skipped, not queued
    bucket: float = 0.1  # seconds per time-series bucket
    max_buckets: int = 6000  # the oldest bucket goes when one more is needed
    max_outcomes: int = 10_000  # raw outcomes kept, the newest
    ttft_window: int = 4096  # TTFT samples kept per region and per group for the percentiles


@dataclass(frozen=True, slots=True)
class Outcome:
    """One client request; `at` is when the client started (resolving), in seconds since the load began."""

    at: float
    group: str
    address: str | None
    region: str  # NO_REGION when none was reached
    reason: Reason | None  # None: a full stream from the expected model
    status: int | None = None  # the HTTP status of an HTTP_STATUS failure
    ttft: float | None = None  # from sending the request to the first content token
    violation: bool = False  # sent to a region the group's jurisdictions do not allow

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True, slots=True)
class Stats:
    successes: int
    failures: Mapping[Reason, int]
    ttft_p50: float | None
    ttft_p99: float | None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def total(self) -> int:
        return self.successes + self.failed


@dataclass(frozen=True, slots=True)
class Bucket:
    """Requests started in [start, start + bucket) that went to `region`."""

    start: float
    region: str
    successes: int
    failures: int


@dataclass(frozen=True, slots=True)
class LoadReport:
    by_region: Mapping[str, Stats]
    by_group: Mapping[str, Stats]
    series: tuple[Bucket, ...]  # by start, then region
    outcomes: tuple[Outcome, ...]  # the newest max_outcomes, oldest first
    residency_violations: int
    skipped: int  # arrivals not sent because max_in_flight requests were running


@dataclass(slots=True)
class _Tally:
    window: int
    successes: int = 0
    failures: Counter[Reason] = field(default_factory=Counter)
    ttfts: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.ttfts = deque(maxlen=self.window)

    def add(self, outcome: Outcome) -> None:
        if outcome.reason is None:
            self.successes += 1
        else:
            self.failures[outcome.reason] += 1
        if outcome.ttft is not None:
            self.ttfts.append(outcome.ttft)

    def stats(self) -> Stats:
        return Stats(
            self.successes,
            MappingProxyType(dict(self.failures)),
            quantile(self.ttfts, 0.50),
            quantile(self.ttfts, 0.99),
        )


class Ledger:
    """Outcomes folded into counts as they come, in memory bounded by the settings whatever the run's length."""

    def __init__(self, settings: LoadSettings) -> None:
        self._settings = settings
        self._regions: dict[str, _Tally] = {}
        self._groups: dict[str, _Tally] = {}
        self._series: dict[int, Counter[tuple[str, bool]]] = {}
        self._indices: list[int] = []  # a heap of the series' keys
        self._outcomes: deque[Outcome] = deque(maxlen=settings.max_outcomes)
        self.violations = 0
        self.skipped = 0

    def add(self, outcome: Outcome) -> None:
        window = self._settings.ttft_window
        self._regions.setdefault(outcome.region, _Tally(window)).add(outcome)
        self._groups.setdefault(outcome.group, _Tally(window)).add(outcome)
        self._outcomes.append(outcome)
        self.violations += outcome.violation
        index = int(outcome.at // self._settings.bucket)
        bucket = self._series.get(index)
        if bucket is None:
            bucket = self._series[index] = Counter()
            # Outcomes end out of order (a hung request after many quick ones), so the oldest bucket is
            # found on a heap rather than by the order buckets were made in.
            heapq.heappush(self._indices, index)
            while len(self._series) > self._settings.max_buckets:
                del self._series[heapq.heappop(self._indices)]
        bucket[(outcome.region, outcome.ok)] += 1

    def report(self) -> LoadReport:
        width = self._settings.bucket
        series = tuple(
            Bucket(index * width, region, counts[(region, True)], counts[(region, False)])
            for index, counts in sorted(self._series.items())
            for region in sorted({r for r, _ in counts})
        )
        return LoadReport(
            MappingProxyType({name: t.stats() for name, t in sorted(self._regions.items())}),
            MappingProxyType({name: t.stats() for name, t in sorted(self._groups.items())}),
            series,
            tuple(self._outcomes),
            self.violations,
            self.skipped,
        )


@dataclass(slots=True)
class _Stub:
    """One client's resolver cache: the last answer until its (capped) TTL runs out."""

    addresses: tuple[str, ...] = ()
    expires: float = float("-inf")


class _Failed(Exception):
    def __init__(self, reason: Reason, status: int | None = None) -> None:
        super().__init__(reason.value)
        self.reason, self.status = reason, status


class LoadGenerator:
    """Sends each group's clients at their rate until stop(); report() at any time."""

    def __init__(
        self, settings: LoadSettings, policy: Policy | None = None, rng: random.Random | None = None
    ):
        """With `policy`, a request sent to a region the group may not use counts as a residency violation."""
        self._settings = settings
        self._allowed = _allowed_regions(policy, settings) if policy is not None else None
        self._rng = rng or random.Random()
        self._ledger = Ledger(settings)
        self._session: aiohttp.ClientSession | None = None
        self._drivers: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._crash: BaseException | None = None
        self._started = 0.0

    @property
    def started_at(self) -> float:
        """The event loop's time (time.monotonic) at start(), from which every Outcome.at counts."""
        return self._started

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def report(self) -> LoadReport:
        return self._ledger.report()

    async def start(self) -> None:
        if self._session is not None:
            raise RuntimeError("the load generator is already running")
        self._session = make_session(self._settings.max_in_flight, CLIENT_USER_AGENT)
        self._started = asyncio.get_running_loop().time()
        self._drivers = [asyncio.create_task(self._drive(group)) for group in self._settings.groups]

    async def stop(self, grace: float = 0.0) -> None:
        """Stop sending; requests still running after `grace` seconds are cancelled and not counted."""
        for driver in self._drivers:
            driver.cancel()
        await asyncio.gather(*self._drivers, return_exceptions=True)
        self._drivers = []
        if self._in_flight and grace > 0:
            await asyncio.wait(set(self._in_flight), timeout=grace)
        running = set(self._in_flight)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._crash is not None:
            raise RuntimeError("a load generator client crashed") from self._crash

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _drive(self, group: GroupLoad) -> None:
        """Open-loop arrivals: a slow region does not slow the clients down, as real users would not wait."""
        loop = asyncio.get_running_loop()
        stubs = [_Stub() for _ in range(group.clients)]
        interval = 1.0 / group.rate
        due = loop.time()
        sent = 0
        while True:
            if len(self._in_flight) >= self._settings.max_in_flight:
                self._ledger.skipped += 1
            else:
                task = asyncio.create_task(self._client(group, stubs[sent % len(stubs)]))
                self._in_flight.add(task)
                task.add_done_callback(self._finished)
            sent += 1
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None and self._crash is None:
            self._crash = task.exception()

    async def _client(self, group: GroupLoad, stub: _Stub) -> None:
        at = asyncio.get_running_loop().time() - self._started
        address: str | None = None
        target: Target | None = None
        ttft: float | None = None
        try:
            address = await self._resolve(group, stub)
            target = self._settings.targets.get(address)
            if target is None:
                raise _Failed(Reason.UNKNOWN_ADDRESS)
            ttft = await self._complete(target.url + self._settings.path)
            failure = None
        except _Failed as exc:
            failure = exc
        region = target.region if target is not None else NO_REGION
        violation = (
            self._allowed is not None
            and target is not None
            and target.region not in self._allowed[group.group]
        )
        self._ledger.add(
            Outcome(
                at,
                group.name,
                address,
                region,
                failure.reason if failure else None,
                failure.status if failure else None,
                ttft,
                violation,
            )
        )

    async def _resolve(self, group: GroupLoad, stub: _Stub) -> str:
        loop = asyncio.get_running_loop()
        if loop.time() >= stub.expires:
            stub.addresses, ttl = await self._query(group)
            stub.expires = loop.time() + min(ttl, self._settings.max_ttl)
        if not stub.addresses:
            raise _Failed(Reason.NO_ADDRESS)
        return self._rng.choice(stub.addresses)

    async def _query(self, group: GroupLoad) -> tuple[tuple[str, ...], float]:
        """The A addresses answered and how long they may be cached; a NODATA is cached like an answer."""
        options: list[dns.edns.Option] | None = None
        if group.subnet is not None:
            network = ipaddress.ip_network(group.subnet)
            options = [dns.edns.ECSOption(str(network.network_address), network.prefixlen)]
        query = dns.message.make_query(
            self._settings.name, "A", use_edns=0 if options else None, options=options
        )
        host, port = self._settings.dns
        timeout = self._settings.dns_timeout
        try:
            async with asyncio.timeout(timeout):
                response = await dns.asyncquery.udp(
                    query, host, port=port, source=group.source, timeout=timeout
                )
        except (TimeoutError, dns.exception.Timeout):
            raise _Failed(Reason.DNS_TIMEOUT) from None
        except (OSError, dns.exception.DNSException):
            raise _Failed(Reason.DNS_ERROR) from None
        if response.rcode() != dns.rcode.NOERROR:
            raise _Failed(Reason.DNS_ERROR)
        answers = [r for r in response.answer if r.rdtype == dns.rdatatype.A]
        if not answers:
            # A negative answer lives as long as the SOA's TTL (RFC 2308 5).
            return (), min((float(r.ttl) for r in response.authority), default=0.0)
        return tuple(str(item.address) for r in answers for item in r), float(min(r.ttl for r in answers))

    async def _complete(self, url: str) -> float:
        """Streams one completion from `url`; its TTFT, or _Failed with why not."""
        assert self._session is not None
        payload: dict[str, Any] = {
            "messages": [{"role": "user", "content": "Say ok."}],
            "max_tokens": self._settings.max_tokens,
            "stream": True,
        }
        if self._settings.model:
            payload["model"] = self._settings.model
        stream = StreamReading()
        answered = False
        started = time.perf_counter()
        try:
            async with (
                asyncio.timeout(self._settings.request_timeout),
                self._session.post(url, json=payload, allow_redirects=False) as resp,
            ):
                if resp.status != 200:
                    raise _Failed(Reason.HTTP_STATUS, resp.status)
                answered = True
                refuse_encoded(resp)
                await read_stream(resp.content, stream)
        except TimeoutError:
            raise _Failed(Reason.TIMEOUT) from None
        except RefusedBody:
            raise _Failed(Reason.TOO_LARGE) from None
        except aiohttp.ClientConnectorError as exc:
            refused = exc.os_error.errno == errno.ECONNREFUSED
            raise _Failed(Reason.CONNECT_REFUSED if refused else Reason.CONNECT_FAILED) from None
        except ValueError:  # a chunk that is no JSON object (JSONDecodeError is a ValueError)
            raise _Failed(Reason.STREAM_ERROR) from None
        except (aiohttp.ClientError, OSError):
            raise _Failed(Reason.STREAM_CUT if answered else Reason.DISCONNECTED) from None
        if stream.error is not None or stream.first_at is None:
            raise _Failed(Reason.STREAM_ERROR)
        if not stream.done:
            raise _Failed(Reason.STREAM_CUT)
        if self._settings.model and stream.model != self._settings.model:
            raise _Failed(Reason.WRONG_MODEL)
        return stream.first_at - started


def _allowed_regions(policy: Policy, settings: LoadSettings) -> dict[str, frozenset[str]]:
    """Each impersonated policy group -> the regions of the service it resolves that it may be sent to."""
    wanted = settings.name.rstrip(".").lower()
    service = next((s for s in policy.services if s.dns_name.rstrip(".").lower() == wanted), None)
    if service is None:
        raise ValueError(f"the policy has no service named {settings.name}")
    groups = {g.name: g for g in policy.client_groups}
    unknown = sorted({g.group for g in settings.groups} - groups.keys())
    if unknown:
        raise ValueError(f"the policy has no client groups {unknown}")
    return {
        g.group: frozenset(r.name for r in policy.allowed_regions(service, groups[g.group]))
        for g in settings.groups
    }
