"""A reverse proxy in front of moto_server that checks change batches the way Route 53 does.

moto 5.2 takes a DELETE whose values match any value the record set ever had (it checks its change
journal, not the record set), appends a second record set on a CREATE of an existing one, and refuses a
CREATE of a value it once journalled even when the same batch deletes it first. Route 53 itself refuses a
whole batch when a DELETE does not match the record set's current values exactly, deletes a record set
that is not there, or CREATEs one that exists, each judged after the batch's own earlier changes (so
DELETE X + CREATE X in one batch passes); that is what a fence built on an exact-match DELETE relies on.

For POST /2013-04-01/hostedzone/<id>/rrset the proxy parses the ChangeBatch, lists the zone from moto, and
either refuses the batch whole (HTTP 400, ErrorResponse with Code InvalidChangeBatch and Route 53's
bracketed message list, as botocore surfaces it: ClientError code InvalidChangeBatch) or forwards the
batch's net effect in a form moto applies faithfully: an UPSERT per record set the batch leaves present, a
DELETE per one it removes. Batches pass one at a time, so two clients' batches never validate against the
same state. Every other request is forwarded unchanged.

It runs on its own event loop in a thread, so it serves in-process tests and subprocess daemons alike.
Fixtures (registered where imported: `from tests.fakes.route53_strict import strict_route53_fixture,
strict_route53_server_fixture  # noqa: F401`, next to tests.fakes.moto's):
- `strict_route53_server` (session): the StrictRoute53 in front of the session's moto_server.
- `strict_route53` (function): the same URL, moto emptied before the test (it uses the `moto` fixture).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from xml.sax.saxutils import escape

import aiohttp
import pytest
from aiohttp import web

from chaos.loopback import serve_app, stop_app

NS = "https://route53.amazonaws.com/doc/2013-04-01/"
ET.register_namespace("", NS)
RRSET_PATH = re.compile(r"^/2013-04-01/hostedzone/([^/]+)/rrset/?$")
UPSTREAM_TIMEOUT = 10.0
START_TIMEOUT = 10.0
MAX_PAGES = 1000
# Hop-by-hop headers and those aiohttp sets itself for the body it sends.
_DROPPED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
)

Key = tuple[str, str, str]  # (name with its final dot, type, SetIdentifier or "")
Value = str | tuple[str, ...] | Mapping[str, "Value"]


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if _local(c.tag) == name), None)


def _absolute(name: str) -> str:
    return name.lower().rstrip(".") + "."


def rrset_of(element: ET.Element) -> dict[str, Value]:
    """A ResourceRecordSet element as the values Route 53 compares: names in one spelling, the values of
    ResourceRecords as a sorted tuple (their order does not count), an alias's zone id bare."""

    def convert(node: ET.Element) -> Value:
        tag = _local(node.tag)
        if tag == "ResourceRecords":
            values = (_child(r, "Value") for r in node)
            return tuple(sorted((v.text or "") if v is not None else "" for v in values))
        if len(node):
            return {_local(c.tag): convert(c) for c in node}
        return (node.text or "").strip()

    out = convert(element)
    assert isinstance(out, dict)
    out = dict(out)
    out["Name"] = _absolute(str(out.get("Name", "")))
    alias = out.get("AliasTarget")
    if isinstance(alias, Mapping):
        out.pop("TTL", None)  # an alias has none; moto lists one
        alias = dict(alias)
        alias["DNSName"] = _absolute(str(alias.get("DNSName", "")))
        alias["HostedZoneId"] = str(alias.get("HostedZoneId", "")).removeprefix("/hostedzone/")
        out["AliasTarget"] = alias
    return out


def key_of(rrset: Mapping[str, Value]) -> Key:
    return (str(rrset["Name"]), str(rrset.get("Type", "")), str(rrset.get("SetIdentifier", "")))


def _label(key: Key) -> str:
    name, rtype, ident = key
    return f"[name='{name}', type='{rtype}'" + (f", set-identifier='{ident}']" if ident else "]")


@dataclass(frozen=True)
class Change:
    action: str
    key: Key
    rrset: dict[str, Value]
    element: ET.Element  # the Change element as sent


def changes_of(root: ET.Element) -> list[Change]:
    batch = _child(root, "ChangeBatch")
    listed = _child(batch, "Changes") if batch is not None else None
    out = []
    for element in listed if listed is not None else ():
        action, rrset_element = _child(element, "Action"), _child(element, "ResourceRecordSet")
        if action is None or rrset_element is None:
            raise ValueError("a Change without Action or ResourceRecordSet")
        rrset = rrset_of(rrset_element)
        out.append(Change((action.text or "").strip(), key_of(rrset), rrset, element))
    return out


def refusals(changes: list[Change], zone: Mapping[Key, Mapping[str, Value]]) -> list[str]:
    """Route 53's reasons to refuse the batch, each change judged after the batch's earlier ones."""
    state = dict(zone)
    problems: list[str] = []
    for change in changes:
        now = state.get(change.key)
        label = _label(change.key)
        if change.action == "DELETE":
            if now is None:
                problems.append(f"Tried to delete resource record set {label} but it was not found")
            elif now != change.rrset:
                problems.append(
                    f"Tried to delete resource record set {label} but the values provided do not match "
                    "the current values"
                )
            state.pop(change.key, None)
        elif change.action == "CREATE" and now is not None:
            problems.append(f"Tried to create resource record set {label} but it already exists")
        else:
            state[change.key] = change.rrset
    return problems


def net_changes(changes: list[Change], zone: Mapping[Key, object]) -> list[ET.Element]:
    """The Change elements that bring moto to the batch's end state: an UPSERT of the last value written
    to each record set left present, the batch's first DELETE of each one removed."""
    last: dict[Key, Change | None] = {}
    first_delete: dict[Key, Change] = {}
    for change in changes:
        last[change.key] = None if change.action == "DELETE" else change
        if change.action == "DELETE":
            first_delete.setdefault(change.key, change)
    out = []
    for key, final in last.items():
        if final is not None:
            element = copy.deepcopy(final.element)
            action = _child(element, "Action")
            assert action is not None
            action.text = "UPSERT"
            out.append(element)
        elif key in zone:
            out.append(first_delete[key].element)
    return out


def _error(message: str, request_id: str) -> web.Response:
    body = (
        f'<?xml version="1.0"?>\n<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type>'
        f"<Code>InvalidChangeBatch</Code><Message>{escape(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return web.Response(status=400, body=body.encode(), content_type="text/xml")


class StrictRoute53:
    """The proxy; `url` is the endpoint_url to give a client in place of moto's. `accepted` holds the
    (action, name) changes of every batch it passed on, `refused` the message of every batch it refused,
    in order."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = 0
        self.accepted: list[list[tuple[str, str]]] = []
        self.refused: list[str] = []
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._batches: asyncio.Lock | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="strict-route53", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError(f"the strict Route 53 proxy did not start within {START_TIMEOUT:g}s")
        if self._failed is not None:
            self._thread.join()
            raise RuntimeError("the strict Route 53 proxy did not start") from self._failed
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # handed to the starting thread, which raises it
            self._failed = exc
            self._ready.set()
            loop.run_until_complete(self._stop())
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._stop())
            loop.close()

    async def _start(self) -> None:
        self._batches = asyncio.Lock()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT), auto_decompress=False
        )
        app = web.Application(client_max_size=4 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.port = await serve_app(app, self.host, 0, shutdown_timeout=0.5)

    async def _stop(self) -> None:
        await stop_app(self._runner, drop_connections=True)
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        match = RRSET_PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return await self._forward(request, body)
        assert self._batches is not None
        async with self._batches:
            try:
                root = ET.fromstring(body)
                changes = changes_of(root)
            except (ET.ParseError, ValueError):
                return await self._forward(request, body)  # moto answers what Route 53 would
            zone = await self._zone(match.group(1), request)
            if zone is None:  # no such zone: moto says so
                return await self._forward(request, body)
            problems = refusals(changes, zone)
            if problems:
                message = "[" + ", ".join(problems) + "]"
                self.refused.append(message)
                return _error(message, f"strict-{next(self._ids)}")
            self.accepted.append([(c.action, c.key[0]) for c in changes])
            net = net_changes(changes, zone)
            batch = _child(root, "ChangeBatch")
            listed = _child(batch, "Changes") if batch is not None else None
            if not net or listed is None:
                return await self._forward(request, body)
            for element in list(listed):
                listed.remove(element)
            listed.extend(net)
            return await self._forward(request, ET.tostring(root, xml_declaration=True, encoding="utf-8"))

    async def _zone(self, zone_id: str, request: web.Request) -> dict[Key, dict[str, Value]] | None:
        """Every record set of the zone as moto holds it, every page."""
        zone: dict[Key, dict[str, Value]] = {}
        params: dict[str, str] = {}
        for _ in range(MAX_PAGES):
            status, text = await self._get(f"/2013-04-01/hostedzone/{zone_id}/rrset", params, request)
            if status != 200:
                return None
            root = ET.fromstring(text)
            listed = _child(root, "ResourceRecordSets")
            for element in listed if listed is not None else ():
                rrset = rrset_of(element)
                zone[key_of(rrset)] = rrset
            truncated = _child(root, "IsTruncated")
            if truncated is None or (truncated.text or "").strip() != "true":
                return zone
            params = {}
            for tag, param in (
                ("NextRecordName", "name"),
                ("NextRecordType", "type"),
                ("NextRecordIdentifier", "identifier"),
            ):
                found = _child(root, tag)
                if found is not None and found.text:
                    params[param] = found.text
        raise RuntimeError(f"zone {zone_id}: more than {MAX_PAGES} pages")

    async def _get(self, path: str, params: Mapping[str, str], request: web.Request) -> tuple[int, bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        async with self._session.get(self.upstream + path, params=params, headers=headers) as reply:
            return reply.status, await reply.read()

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as reply:
            content = await reply.read()
            back = {k: v for k, v in reply.headers.items() if k.lower() not in _DROPPED}
            return web.Response(status=reply.status, body=content, headers=back)


@pytest.fixture(scope="session", name="strict_route53_server")
def strict_route53_server_fixture(moto_server: str) -> Iterator[StrictRoute53]:
    with StrictRoute53(moto_server) as proxy:
        yield proxy


@pytest.fixture(name="strict_route53")
def strict_route53_fixture(moto: str, strict_route53_server: StrictRoute53) -> str:
    strict_route53_server.accepted.clear()
    strict_route53_server.refused.clear()
    return strict_route53_server.url
