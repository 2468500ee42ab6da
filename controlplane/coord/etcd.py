"""An async etcd v3 client over etcd's JSON gateway (/v3/...) with aiohttp: keys, transactions, leases and
watches, endpoints tried in turn. No authentication or TLS client certificates this round: the endpoints
are trusted loopback or private addresses (a later round adds credentials)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp

MAX_BODY = 1 << 20  # a unary answer, and each line of a watch stream
# A watch silent for this many timeouts asks its member whether it still answers: a stopped (SIGSTOP) or
# cut-off member keeps the connection open and says nothing, which would leave the watch waiting forever.
WATCH_IDLE_TIMEOUTS = 2.5


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Compare:
    key: bytes
    target: Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
    result: Literal["EQUAL", "NOT_EQUAL", "LESS", "GREATER"]
    value: int | bytes


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[tuple[KeyValue, ...], ...]  # per op: the Get's kvs, () for Put and Delete


class EtcdError(Exception):
    """Anything etcd (or the way to it) failed at."""


class EtcdUnavailable(EtcdError):
    """Transient: no endpoint answered in time, connections refused or broken, 5xx (no leader, ...)."""


class EtcdRequestError(EtcdError):
    """Permanent: etcd refused the request (4xx: lease not found, bad request) or answered what is not etcd's
    JSON (malformed, over MAX_BODY)."""


class _NotSent(Exception):
    """The connection failed before the request went out: any request may go to the next endpoint."""


Op = Put | Delete | Get

_COMPARE_FIELD = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision", "LEASE": "lease"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise EtcdRequestError(f"expected base64 text, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise EtcdRequestError(f"bad base64 in etcd's answer: {exc}") from None


def _int(value: Any) -> int:
    """etcd's int64 fields come as JSON strings (numbers from other gateways); absent means 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EtcdRequestError(f"expected an integer, got {type(value).__name__}")
    try:
        return int(value)
    except ValueError:
        raise EtcdRequestError(f"expected an integer, got {str(value)[:40]!r}") from None


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise EtcdRequestError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) every key starting with prefix (etcd's clientv3.GetPrefixRangeEnd);
    an empty prefix (or all 0xff) means every key, which etcd spells as range_end "\\0"."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _range_fields(key: bytes, prefix: bool) -> dict[str, str]:
    fields = {"key": _b64(key)}
    if prefix:
        fields["range_end"] = _b64(prefix_end(key))
    return fields


def _kv(raw: Any) -> KeyValue:
    item = _object(raw, "kv")
    return KeyValue(
        key=_unb64(item.get("key", "")),
        value=_unb64(item.get("value", "")),
        create_revision=_int(item.get("create_revision")),
        mod_revision=_int(item.get("mod_revision")),
        version=_int(item.get("version")),
        lease=_int(item.get("lease")),
    )


def _kvs(answer: Mapping[str, Any]) -> tuple[KeyValue, ...]:
    raw = answer.get("kvs", [])
    if not isinstance(raw, list):
        raise EtcdRequestError("kvs: expected a list")
    return tuple(_kv(item) for item in raw)


def _revision(answer: Mapping[str, Any]) -> int:
    return _int(_object(answer.get("header", {}), "header").get("revision"))


def _compare_json(compare: Compare) -> dict[str, str]:
    fields = {"key": _b64(compare.key), "target": compare.target, "result": compare.result}
    if compare.target == "VALUE":
        if not isinstance(compare.value, bytes):
            raise TypeError("a VALUE compare takes bytes")
        fields["value"] = _b64(compare.value)
    else:
        if isinstance(compare.value, bytes | bool):
            raise TypeError(f"a {compare.target} compare takes an int")
        fields[_COMPARE_FIELD[compare.target]] = str(compare.value)
    return fields


def _op_json(op: Op) -> dict[str, Any]:
    match op:
        case Put(key, value, lease):
            put: dict[str, str] = {"key": _b64(key), "value": _b64(value)}
            if lease:
                put["lease"] = str(lease)
            return {"request_put": put}
        case Delete(key, prefix):
            return {"request_delete_range": _range_fields(key, prefix)}
        case Get(key, prefix):
            return {"request_range": _range_fields(key, prefix)}


def _error_message(answer: Mapping[str, Any]) -> str:
    inner = answer.get("error")
    if isinstance(inner, dict):  # a stream's error: {"error": {"grpc_code": .., "message": ..}}
        return str(inner.get("message", inner))[:160]
    return str(answer.get("message", inner))[:160]


def _error_text(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        return _error_message(answer)
    return body[:160].decode("utf-8", "replace")


def _decode(body: bytes) -> Mapping[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise EtcdRequestError(f"malformed JSON from etcd: {exc}") from None
    return _object(answer, "etcd's answer")


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    while chunk := await resp.content.read(MAX_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_BODY:
            resp.close()  # the rest is unread: this connection must not go back to the pool
            raise EtcdRequestError(f"etcd's answer is over {MAX_BODY} bytes")
    return bytes(body)


async def _lines(resp: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    """The newline-delimited messages of a gateway stream, each capped at MAX_BODY."""
    pending = bytearray()
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line = bytes(pending[:end])
            del pending[: end + 1]
            if line.strip():
                yield line
        if len(pending) > MAX_BODY:
            raise EtcdRequestError(f"a watch message over {MAX_BODY} bytes")


def _make_session() -> aiohttp.ClientSession:
    # Timeouts are the client's own asyncio.timeout; environment proxies are never used for etcd.
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
        headers={"Accept-Encoding": "identity"},
    )


class EtcdClient:
    """etcd v3 through its JSON gateway. Each request to one endpoint runs under `timeout`; a call tries the
    endpoints in turn, starting from the last one that answered, so a dead member costs one timeout once
    rather than on every call. A call fails after at most len(endpoints) timeouts.

    A txn is not retried on another endpoint once its request may have reached a member (a timeout, a 5xx,
    a connection broken mid-answer): it may have been applied, and a second try would report the compare's
    failure for what was the first try's success. It raises EtcdUnavailable and the next call starts from
    the next endpoint. Reads, puts, deletes and lease calls are retried: a repeat leaves the same keys (a put's
    revision moves on, a repeated delete may count 0, a lease granted twice expires unused)."""

    def __init__(
        self, endpoints: Sequence[str], *, timeout: float = 2.0, session: aiohttp.ClientSession | None = None
    ) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self._endpoints = tuple(url.rstrip("/") for url in endpoints)
        self._timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._current = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            if not self._owns_session:
                raise RuntimeError("EtcdClient used after close()")
            self._session = _make_session()
        return self._session

    def _order(self) -> list[int]:
        count = len(self._endpoints)
        return [(self._current + step) % count for step in range(count)]

    async def _post_once(self, url: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        async with asyncio.timeout(self._timeout):
            try:
                resp = await self._http().post(url, json=payload)
            except aiohttp.ClientConnectorError as exc:
                raise _NotSent(str(exc)) from exc
            async with resp:
                body = await _read_capped(resp)
        if resp.status >= 500:
            raise EtcdUnavailable(f"{url}: {resp.status} {_error_text(body)}")
        if resp.status >= 400:
            raise EtcdRequestError(f"{url}: {resp.status} {_error_text(body)}")
        if resp.status != 200:
            raise EtcdRequestError(f"{url}: unexpected status {resp.status}")
        return _decode(body)

    async def _call(
        self, path: str, payload: Mapping[str, Any], *, retry_sent: bool = True
    ) -> Mapping[str, Any]:
        problems: list[str] = []
        for index in self._order():
            url = self._endpoints[index] + path
            try:
                answer = await self._post_once(url, payload)
            except _NotSent as exc:
                problems.append(f"{url}: {exc}")
                continue
            except (TimeoutError, aiohttp.ClientError, EtcdUnavailable) as exc:
                problem = (
                    f"{url}: timed out after {self._timeout:g}s"
                    if isinstance(exc, TimeoutError)
                    else str(exc)
                )
                problems.append(problem or type(exc).__name__)
                if not retry_sent:
                    self._current = (index + 1) % len(self._endpoints)
                    raise EtcdUnavailable(f"outcome unknown: {problem}") from exc
                continue
            self._current = index
            return answer
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(problems))

    async def get(self, key: bytes) -> KeyValue | None:
        kvs = _kvs(await self._call("/v3/kv/range", _range_fields(key, False)))
        return kvs[0] if kvs else None

    async def range(self, prefix: bytes) -> tuple[int, tuple[KeyValue, ...]]:
        answer = await self._call("/v3/kv/range", _range_fields(prefix, True))
        return _revision(answer), _kvs(answer)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return _revision(await self._call("/v3/kv/put", _op_json(Put(key, value, lease))["request_put"]))

    async def delete(self, key: bytes, prefix: bool = False) -> int:
        return _int((await self._call("/v3/kv/deleterange", _range_fields(key, prefix))).get("deleted"))

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        payload = {
            "compare": [_compare_json(item) for item in compare],
            "success": [_op_json(op) for op in success],
            "failure": [_op_json(op) for op in failure],
        }
        answer = await self._call("/v3/kv/txn", payload, retry_sent=False)
        succeeded = bool(answer.get("succeeded", False))
        ops = success if succeeded else failure
        raw = answer.get("responses", [])
        if not isinstance(raw, list) or len(raw) != len(ops):
            raise EtcdRequestError(f"txn: {len(ops)} responses expected")
        responses = tuple(
            _kvs(_object(_object(item, "txn response").get("response_range", {}), "response_range"))
            if isinstance(op, Get)
            else ()
            for op, item in zip(ops, raw, strict=True)
        )
        return TxnResult(succeeded=succeeded, revision=_revision(answer), responses=responses)

    async def grant(self, ttl: int) -> int:
        lease = _int((await self._call("/v3/lease/grant", {"TTL": str(ttl)})).get("ID"))
        if lease == 0:
            raise EtcdRequestError("lease grant answered no ID")
        return lease

    async def keepalive(self, lease: int) -> int:
        """The lease's remaining TTL in seconds; 0 once it has expired or was revoked (etcd answers a keepalive
        for a lease it no longer has with no TTL, not with an error)."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        # The gateway streams keepalive answers one per line; a single request gets a single line.
        if "error" in answer:
            raise EtcdUnavailable(f"keepalive: {_error_message(answer)}")
        return _int(_object(answer.get("result"), "keepalive result").get("TTL"))

    async def revoke(self, lease: int) -> None:
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncGenerator[tuple[str, KeyValue], None]:
        """Every PUT and DELETE under `prefix` from `start_revision` on, as (type, kv); a DELETE's kv has the
        key and its mod_revision only. Ends with EtcdUnavailable when the stream breaks or its member stops
        answering (resume from the last mod_revision + 1), EtcdRequestError when etcd cancels the watch
        (start_revision compacted away)."""
        request = {"create_request": {**_range_fields(prefix, True), "start_revision": str(start_revision)}}
        resp, endpoint = await self._open_watch(request)
        lines = _lines(resp)
        try:
            while True:
                line = await self._next_line(endpoint, lines, prefix)
                for event in self._events(line):
                    yield event
        finally:
            await lines.aclose()
            resp.close()

    async def _open_watch(self, request: Mapping[str, Any]) -> tuple[aiohttp.ClientResponse, str]:
        """The stream's response, once etcd accepted the watch, and the endpoint that serves it."""
        problems: list[str] = []
        for index in self._order():
            url = self._endpoints[index] + "/v3/watch"
            try:
                async with asyncio.timeout(self._timeout):
                    resp = await self._http().post(url, json=request)
                    if resp.status != 200:
                        body = await resp.content.read(MAX_BODY)
                        resp.close()
            except (TimeoutError, aiohttp.ClientError) as exc:
                problems.append(f"{url}: {'timed out' if isinstance(exc, TimeoutError) else exc}")
                continue
            if 400 <= resp.status < 500:
                raise EtcdRequestError(f"{url}: {resp.status} {_error_text(body)}")
            if resp.status != 200:
                problems.append(f"{url}: {resp.status} {_error_text(body)}")
                continue
            self._current = index
            return resp, self._endpoints[index]
        raise EtcdUnavailable("no etcd endpoint answered a watch: " + "; ".join(problems))

    async def _next_line(self, endpoint: str, lines: AsyncIterator[bytes], prefix: bytes) -> bytes:
        # The read runs as a task that is waited on, never cancelled by a timer: cancelling it mid-line
        # would drop the half read, so silence is answered by asking the member instead.
        reading = asyncio.ensure_future(anext(lines))
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=self._timeout * WATCH_IDLE_TIMEOUTS)
                if done:
                    break
                await self._member_answers(endpoint, prefix)
            return reading.result()
        except StopAsyncIteration:
            raise EtcdUnavailable("the watch stream ended") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise EtcdUnavailable(f"the watch stream broke: {exc or type(exc).__name__}") from exc
        finally:
            if not reading.done():
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)

    async def _member_answers(self, endpoint: str, prefix: bytes) -> None:
        url = endpoint + "/v3/kv/range"
        try:
            await self._post_once(url, {**_range_fields(prefix, False), "count_only": True})
        except (_NotSent, TimeoutError, aiohttp.ClientError, EtcdError) as exc:
            problem = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise EtcdUnavailable(f"the watch's member does not answer: {problem}") from exc

    @staticmethod
    def _events(line: bytes) -> list[tuple[str, KeyValue]]:
        message = _decode(line)
        if "error" in message:
            raise EtcdUnavailable(f"the watch stream failed: {_error_text(line)}")
        result = _object(message.get("result", {}), "watch result")
        if result.get("canceled"):
            reason = result.get("cancel_reason") or f"compacted at {_int(result.get('compact_revision'))}"
            raise EtcdRequestError(f"etcd cancelled the watch: {reason}")
        events = result.get("events", [])
        if not isinstance(events, list):
            raise EtcdRequestError("watch events: expected a list")
        out: list[tuple[str, KeyValue]] = []
        for raw in events:
            event = _object(raw, "watch event")
            kind = event.get("type", "PUT")
            if kind not in ("PUT", "DELETE"):
                raise EtcdRequestError(f"unknown watch event type {str(kind)[:20]!r}")
            out.append((kind, _kv(event.get("kv", {}))))
        return out
