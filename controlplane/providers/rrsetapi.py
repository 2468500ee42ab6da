"""What the DNS providers that write rrsets through a JSON HTTP API share (Cloud DNS, PowerDNS): the TXT
ownership marker, the zone as last read, and one timed, capped request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from controlplane.changes import Record
from controlplane.providers.base import PermanentProviderError, TransientProviderError
from controlplane.providers.records import dns_name

HERITAGE = "heritage=llm-failover-plane"
MARKER_LABEL = "_cp-owner"  # the marker's name is the same for every owner, so another owner's marker is seen
MARKER_TTL = 300
ADDRESS_TYPES = ("A", "AAAA")
MAX_BODY = 16 * 1024 * 1024  # one answer of the API (a page of rrsets); more is refused, not held in memory
PARSE_OFF_LOOP = 64 * 1024  # response bytes above which JSON is parsed in a thread

JsonObject = dict[str, Any]
Key = tuple[str, str]  # (absolute name, type) of an rrset, as the APIs key them


def absolute(name: str) -> str:
    return dns_name(name) + "."


def marker_name(service_name: str) -> str:
    return f"{MARKER_LABEL}.{dns_name(service_name)}"


def marker_text(owner: str) -> str:
    """The marker's TXT data, quoted as both APIs write it."""
    return f'"{HERITAGE},owner={owner}"'


def marker_owner(texts: Iterable[str]) -> str | None:
    """The owner a marker's TXT data names, or None when it is no marker of this plane's."""
    for data in texts:
        fields = dict(part.partition("=")[::2] for part in data.strip('"').split(","))
        if f"heritage={fields.get('heritage')}" == HERITAGE and fields.get("owner"):
            return fields["owner"]
    return None


@dataclass(frozen=True, slots=True)
class ZoneState:
    """A zone as last read or written: every rrset (to see foreign ones), and what this owner holds."""

    rrsets: Mapping[Key, JsonObject]
    owned: Mapping[str, Mapping[Key, JsonObject]]  # service name -> its owned rrsets, marker included
    foreign_markers: Mapping[str, str]  # service name -> the other owner its marker names ("": a foreign TXT)
    records: tuple[Record, ...]


async def read_capped(content: aiohttp.StreamReader, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise PermanentProviderError(f"{what}: the answer is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    within: float,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    body: JsonObject | None = None,
) -> tuple[int, Any, bytes]:
    """(status, the answer's JSON or None, its bytes); no answer in time, or a broken connection, is a
    TransientProviderError. A big answer is parsed off the event loop."""
    try:
        async with asyncio.timeout(within):
            async with session.request(method, url, params=params, json=body, headers=headers) as response:
                status, raw = response.status, await read_capped(response.content, what)
    except TimeoutError:
        raise TransientProviderError(f"{what}: timed out after {within:g}s") from None
    except aiohttp.ClientError as exc:
        raise TransientProviderError(f"{what}: {type(exc).__name__}: {exc}") from None
    try:
        data = await asyncio.to_thread(json.loads, raw) if len(raw) > PARSE_OFF_LOOP else json.loads(raw)
    except ValueError:
        data = None
    return status, data, raw
