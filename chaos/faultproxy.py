"""A fault-injecting HTTP reverse proxy for AWS APIs on loopback (in front of moto_server, say).

It answers, for a number of requests or for a while, the way AWS does when it pushes back: Route 53's
XML `Throttling` (HTTP 400), `PriorRequestNotComplete` (HTTP 400) or `ServiceUnavailable` (HTTP 503), in
the JSON shape instead for a JSON-protocol API such as Global Accelerator; or it adds latency. It counts
every request by operation name (ChangeResourceRecordSets, ListResourceRecordSets, GetChange, ...) and
keeps their arrival times, so a test or bench can assert "one ChangeResourceRecordSets per decision" and
"at most 5 requests in any second", Route 53's limit per account.

In-process: `async with FaultProxy(upstream) as proxy`, then `proxy.fail(Fault.THROTTLING, count=3)`,
`proxy.slow(0.5)`, `proxy.clear()`, `proxy.requests`, `proxy.peak_rate()`. Out of process
(`python -m chaos.faultproxy --upstream http://127.0.0.1:5000 --port 5001`), the same through
`/_faultproxy/...` on the proxy's own port (a path no AWS API uses):

    POST /_faultproxy/fault    {"fault": "throttling", "count": 3, "seconds": 2, "operations": ["..."]}
    POST /_faultproxy/latency  {"seconds": 0.5, "operations": ["..."]}
    POST /_faultproxy/clear    faults and latency off
    GET  /_faultproxy/stats    {"requests": {op: n}, "faulted": {op: n}, "total": n, "peak_rate": n}
    POST /_faultproxy/reset    the counters start again

botocore retries throttling and 5xx on its own (legacy mode: 5 attempts; standard: 3) and hides them from
the caller. A provider whose retries are decided by tenacity must build its client with
`Config(retries={"mode": "standard", "total_max_attempts": 1})`, or its backoff and its request budget
are not what it thinks.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import aiohttp
import botocore.session
from aiohttp import web
from yarl import URL

from chaos.loopback import require_loopback, serve_app, stop_app

CONTROL_PREFIX = "/_faultproxy"
# Route 53 takes at most 32,000 characters of record values per batch; its XML around 1,000 records stays
# well below this. Anything larger is not a request this proxy exists to relay.
MAX_BODY = 8 * 1024 * 1024
# Arrival times kept for peak_rate(): at 5 requests/s, hours of traffic; at worst a few MB.
MAX_TIMES = 100_000
MAX_COUNT = 1_000_000
MAX_SECONDS = 3600.0
UPSTREAM_TIMEOUT = 10.0
# Headers about one hop, never forwarded (RFC 9110 section 7.6.1); the length is recomputed per hop.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class Fault(StrEnum):
    THROTTLING = "throttling"
    PRIOR_REQUEST_NOT_COMPLETE = "prior_request_not_complete"
    SERVICE_UNAVAILABLE = "service_unavailable"


@dataclass(frozen=True, slots=True)
class _Error:
    status: int
    type: str  # Sender: the caller's fault; Receiver: the service's
    code: str  # as a REST-XML API (Route 53) names it
    json_code: str  # as a JSON-protocol API (Global Accelerator) names it
    message: str


_ERRORS = {
    Fault.THROTTLING: _Error(400, "Sender", "Throttling", "ThrottlingException", "Rate exceeded"),
    Fault.PRIOR_REQUEST_NOT_COMPLETE: _Error(
        400,
        "Sender",
        "PriorRequestNotComplete",
        "PriorRequestNotComplete",
        "The request was rejected because Route 53 was still processing a prior request.",
    ),
    Fault.SERVICE_UNAVAILABLE: _Error(
        503, "Receiver", "ServiceUnavailable", "ServiceUnavailableException", "Service Unavailable"
    ),
}


@dataclass(frozen=True, slots=True)
class _FaultWindow:
    fault: Fault
    remaining: int | None  # requests still to fail; None: no count
    until: float | None  # clock() at which it ends; None: until cleared
    operations: frozenset[str] | None  # None: every operation


@dataclass(frozen=True, slots=True)
class _Latency:
    seconds: float
    operations: frozenset[str] | None


def error_response(fault: Fault, json_protocol: bool) -> web.Response:
    """What AWS answers when it pushes back with `fault`, in the request's protocol."""
    error = _ERRORS[fault]
    request_id = str(uuid.uuid4())
    if json_protocol:
        return web.json_response(
            {"__type": error.json_code, "message": error.message},
            status=error.status,
            headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": error.json_code},
            content_type="application/x-amz-json-1.1",
        )
    body = (
        '<?xml version="1.0"?>\n'
        '<ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">'
        f"<Error><Type>{error.type}</Type><Code>{error.code}</Code>"
        f"<Message>{escape(error.message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return web.Response(
        status=error.status,
        text=body,
        content_type="text/xml",
        headers={"x-amzn-RequestId": request_id},
    )


Route = tuple[str, tuple[str, ...], str]  # (HTTP method, path segments with "{...}" for a variable, name)


@functools.cache
def route53_routes() -> tuple[Route, ...]:
    """Every Route 53 operation's method and path, from botocore's own service model (blocking: ~0.1 s)."""
    model = botocore.session.get_session().get_service_model("route53")
    routes: list[Route] = []
    for name in model.operation_names:
        http = model.operation_model(name).http
        path = http["requestUri"].split("?", 1)[0]
        routes.append((http["method"], tuple(path.strip("/").split("/")), name))
    # Literal segments before variables: /hostedzonecount must not read as /hostedzone/{Id}.
    routes.sort(key=lambda route: -sum(not part.startswith("{") for part in route[1]))
    return tuple(routes)


def operation_name(method: str, path: str, target: str | None, routes: Iterable[Route]) -> str:
    """The AWS operation a request calls: from X-Amz-Target (JSON protocols) or the REST path."""
    if target:
        return target.rsplit(".", 1)[-1]
    segments = tuple(path.split("?", 1)[0].strip("/").split("/"))
    for route_method, pattern, name in routes:
        if (
            route_method == method
            and len(pattern) == len(segments)
            and all(p == s or (p.startswith("{") and s) for p, s in zip(pattern, segments, strict=True))
        ):
            return name
    return "Unknown"


def peak_rate(times: Iterable[float], window: float = 1.0) -> int:
    """The most arrivals within any `window` seconds (half-open, as a per-second limit counts them)."""
    ordered = sorted(times)
    best = start = 0
    for end, now in enumerate(ordered):
        while ordered[start] <= now - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _operations(value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("operations: must be a list of operation names")
    return frozenset(value)


def _bounded(value: object, name: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name}: must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


class FaultProxy:
    """The proxy: listens on host:port (0: the OS picks; `url` is the real one after start())."""

    def __init__(
        self,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        upstream_timeout: float = UPSTREAM_TIMEOUT,
    ) -> None:
        require_loopback(host, "host")
        require_loopback(urlsplit(upstream).hostname or "", "upstream")
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = port
        self.upstream_timeout = upstream_timeout
        self.requests: Counter[str] = Counter()  # every proxied request, faulted or not, by operation
        self.faulted: Counter[str] = Counter()
        self._clock = clock
        self._times: deque[float] = deque(maxlen=MAX_TIMES)
        self._fault: _FaultWindow | None = None
        self._latency: _Latency | None = None
        self._routes: tuple[Route, ...] = ()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._routes = await asyncio.to_thread(route53_routes)
        # No decompression: bodies go through as they came, Content-Encoding and all.
        self._session = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit=32))
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(f"{CONTROL_PREFIX}/fault", self._post_fault)
        app.router.add_post(f"{CONTROL_PREFIX}/latency", self._post_latency)
        app.router.add_post(f"{CONTROL_PREFIX}/clear", self._post_clear)
        app.router.add_post(f"{CONTROL_PREFIX}/reset", self._post_reset)
        app.router.add_get(f"{CONTROL_PREFIX}/stats", self._get_stats)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner, self.port = await serve_app(app, self.host, self.port, shutdown_timeout=1.0)

    async def stop(self) -> None:
        await stop_app(self._runner)
        if self._session is not None:
            await self._session.close()
        self._runner = self._session = None

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ control

    def fail(
        self,
        fault: Fault,
        count: int | None = None,
        seconds: float | None = None,
        operations: Iterable[str] | None = None,
    ) -> None:
        """Answer `fault` to the next `count` requests and/or for `seconds` (neither: until clear()),
        to the named operations only if given."""
        if count is not None and not 1 <= count <= MAX_COUNT:
            raise ValueError(f"count: must be from 1 to {MAX_COUNT}, got {count!r}")
        if seconds is not None and not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds: must be more than 0 and at most {MAX_SECONDS:g}, got {seconds!r}")
        until = None if seconds is None else self._clock() + seconds
        self._fault = _FaultWindow(
            Fault(fault), count, until, None if operations is None else frozenset(operations)
        )

    def slow(self, seconds: float, operations: Iterable[str] | None = None) -> None:
        """Delay every request (or the named operations') by `seconds` before answering; 0 ends it."""
        if not 0 <= seconds <= MAX_SECONDS:
            raise ValueError(f"seconds: must be from 0 to {MAX_SECONDS:g}, got {seconds!r}")
        ops = None if operations is None else frozenset(operations)
        self._latency = _Latency(seconds, ops) if seconds else None

    def clear(self) -> None:
        self._fault = self._latency = None

    def reset_stats(self) -> None:
        self.requests.clear()
        self.faulted.clear()
        self._times.clear()

    def peak_rate(self, window: float = 1.0) -> int:
        """The most requests the upstream API was sent (or refused) within any `window` seconds."""
        return peak_rate(self._times, window)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "faulted": dict(self.faulted),
            "total": sum(self.requests.values()),
            "peak_rate": self.peak_rate(),
        }

    def _take_fault(self, operation: str) -> Fault | None:
        window = self._fault
        if window is None or (window.operations is not None and operation not in window.operations):
            return None
        if window.until is not None and self._clock() >= window.until:
            self._fault = None
            return None
        if window.remaining is not None:
            left = window.remaining - 1
            self._fault = _FaultWindow(window.fault, left, window.until, window.operations) if left else None
        return window.fault

    def _delay(self, operation: str) -> float:
        latency = self._latency
        if latency is None or (latency.operations is not None and operation not in latency.operations):
            return 0.0
        return latency.seconds

    # ------------------------------------------------------------------ HTTP

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target")
        operation = operation_name(request.method, request.path, target, self._routes)
        self.requests[operation] += 1
        self._times.append(self._clock())
        fault = self._take_fault(operation)
        delay = self._delay(operation)
        if delay:
            await asyncio.sleep(delay)
        if fault is not None:
            self.faulted[operation] += 1
            return error_response(fault, json_protocol=target is not None)
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        try:
            async with (
                asyncio.timeout(self.upstream_timeout),
                self._session.request(
                    request.method,
                    URL(self.upstream + request.raw_path, encoded=True),
                    headers=headers,
                    data=io.BytesIO(body),  # aiohttp warns that raw bytes this large could block the loop
                    allow_redirects=False,
                ) as upstream,
            ):
                payload = await upstream.content.read(MAX_BODY + 1)
                status, upstream_headers = upstream.status, upstream.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            return web.Response(status=502, text=f"fault proxy: upstream failed: {exc!r}")
        if len(payload) > MAX_BODY:
            return web.Response(status=502, text=f"fault proxy: upstream answer over {MAX_BODY} bytes")
        reply_headers = {k: v for k, v in upstream_headers.items() if k.lower() not in _HOP_BY_HOP}
        return web.Response(status=status, body=payload, headers=reply_headers)

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="body: must be a JSON object") from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="body: must be a JSON object")
        return data

    async def _post_fault(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        try:
            count = _bounded(data.get("count"), "count", 1, MAX_COUNT)
            if count is not None and count != int(count):
                raise ValueError(f"count: must be an integer, got {count!r}")
            fault = data.get("fault")
            names = [f.value for f in Fault]
            if not isinstance(fault, str) or fault not in names:
                raise ValueError(f"fault: must be one of {names}, got {fault!r}")
            self.fail(
                Fault(fault),
                count=None if count is None else int(count),
                seconds=_bounded(data.get("seconds"), "seconds", 0, MAX_SECONDS),
                operations=_operations(data.get("operations")),
            )
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response(self.stats())

    async def _post_latency(self, request: web.Request) -> web.Response:
        data = await self._json(request)
        try:
            seconds = _bounded(data.get("seconds"), "seconds", 0, MAX_SECONDS)
            self.slow(seconds or 0.0, _operations(data.get("operations")))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response(self.stats())

    async def _post_clear(self, request: web.Request) -> web.Response:
        self.clear()
        return web.json_response(self.stats())

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response(self.stats())

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


async def _serve(proxy: FaultProxy) -> None:
    async with proxy:
        print(json.dumps({"url": proxy.url, "upstream": proxy.upstream}), flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chaos.faultproxy", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the API to relay to, e.g. http://127.0.0.1:5000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: the OS picks (printed at start)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(FaultProxy(args.upstream, args.host, args.port)))


if __name__ == "__main__":
    main()
