"""The PowerDNS provider: per service name, one LUA record that picks the client's group by its network
(source address or ECS) and an address by weight, owned through a TXT marker, in one zone of a PowerDNS
authoritative server, written through its HTTP API."""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from controlplane.changes import ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy, PowerDnsSettings
from controlplane.providers.base import (
    Capabilities,
    Fence,
    PermanentProviderError,
    TransientProviderError,
    Tuning,
)
from controlplane.providers.localdns import source_network
from controlplane.providers.records import MAX_WEIGHT, apply_changes, dns_name, render_records
from controlplane.providers.rrsetapi import (
    ADDRESS_TYPES,
    MARKER_LABEL,
    MARKER_TTL,
    JsonObject,
    Key,
    ZoneState,
    absolute,
    marker_name,
    marker_owner,
    marker_text,
    request_json,
)

log = logging.getLogger(__name__)

# What may stand between the single quotes of the Lua this provider writes: names, addresses, networks.
_SAFE = re.compile(r"^[A-Za-z0-9._:/-]+$")
_ITEM = re.compile(r"\{(\d+),'([^']*)','([^']*)'\}")
_GROUP = re.compile(r"\['([^']*)'\]=\{((?:\{\d+,'[^']*','[^']*'\},?)*)\}")
_CONTENT = re.compile(r'^(A|AAAA) "(.*)"$', re.DOTALL)


# ---------------------------------------------------------------- names


def _below(name: str, zone: str) -> bool:
    return dns_name(name).endswith("." + dns_name(zone))


# ---------------------------------------------------------------- plan -> Lua (pure)


def _lua_string(text: str) -> str:
    if not _SAFE.match(text):
        raise PermanentProviderError(f"{text!r} cannot be written into a LUA record")
    return f"'{text}'"


def lua_program(policy: Policy, records: Iterable[Record]) -> str:
    """The Lua that answers one name for one address type with `records` (all of that name and type).

    The client's group is the one whose `sources` hold the client's address, the most specific prefix first,
    else the default group, as the embedded server decides; `bestwho` is the ECS address when the query
    carries one (edns-subnet-processing) and the source address otherwise. The group's positive weights are
    picked from by weight; a group with none (failing closed, or no record of this type) gets an empty
    answer, NODATA. Weight-0 items stay in the text, so what is held reads back whole.
    """
    by_group: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_group[record.group].append(record)
    table = ",".join(
        f"[{_lua_string(group)}]={{"
        + ",".join(
            f"{{{r.weight},{_lua_string(r.target)},{_lua_string(r.region)}}}"
            for r in sorted(items, key=lambda r: r.region)
        )
        + "}"
        for group, items in sorted(by_group.items())
    )
    networks = sorted(
        ((source_network(cidr), g.name) for g in policy.client_groups for cidr in g.sources),
        key=lambda item: -item[0].prefixlen,
    )
    branches = " else".join(
        f"if netmask({{{_lua_string(str(network))}}}) then g={_lua_string(group)}"
        for network, group in networks
    )
    choose = f" {branches} end" if branches else ""
    return (
        f";local w={{{table}}} local g={_lua_string(policy.default_client_group)}{choose}"
        " local o={} for _,e in ipairs(w[g] or {}) do if e[1]>0 then o[#o+1]={e[1],e[2]} end end"
        " if #o==0 then return {} end return pickwrandom(o)"
    )


def parse_program(name: str, rtype: str, ttl: int, program: str) -> list[Record]:
    """The records a program of lua_program's holds; [] when it is no such program."""
    head, sep, _ = program.partition("} local g=")
    if not head.startswith(";local w={") or not sep:
        return []
    return [
        Record(name, group, region, target, int(weight), ttl, rtype)
        for group, items in _GROUP.findall(head.removeprefix(";local w={"))
        for weight, target, region in _ITEM.findall(items)
    ]


# ---------------------------------------------------------------- records <-> rrsets (pure)


def render_powerdns(policy: Policy, plan: RoutingPlan, zone: str) -> list[Record]:
    """The records PowerDNS should hold for `plan`: every (service below `zone`, group, allowed region),
    weight 0 included, as the embedded server holds them."""
    names = {dns_name(s.dns_name) for s in policy.services if _below(s.dns_name, zone)}
    return [r for r in render_records(policy, plan) if r.name in names]


def build_rrsets(policy: Policy, records: Iterable[Record], owner: str) -> dict[str, dict[Key, JsonObject]]:
    """The rrsets, marker included, that hold `records`: per service name, keyed as the API keys them."""
    by_name: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        by_name[record.name][record.rtype].append(record)
    out: dict[str, dict[Key, JsonObject]] = {}
    for name, by_type in by_name.items():
        contents = [f'{rtype} "{lua_program(policy, items)}"' for rtype, items in sorted(by_type.items())]
        ttl = min(r.ttl for items in by_type.values() for r in items)
        marker = absolute(marker_name(name))
        out[name] = {
            (absolute(name), "LUA"): _rrset(absolute(name), "LUA", ttl, contents),
            (marker, "TXT"): _rrset(marker, "TXT", MARKER_TTL, [marker_text(owner)]),
        }
    return out


def _rrset(name: str, rtype: str, ttl: int, contents: Iterable[str]) -> JsonObject:
    return {
        "name": name,
        "type": rtype,
        "ttl": ttl,
        "records": [{"content": c, "disabled": False} for c in sorted(contents)],
    }


def _contents(rrset: Mapping[str, Any]) -> list[str]:
    return sorted(str(r.get("content", "")) for r in rrset.get("records") or [] if not r.get("disabled"))


def same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two rrsets serve alike (what the server adds, such as comments, aside)."""
    return int(a.get("ttl", 0)) == int(b.get("ttl", 0)) and _contents(a) == _contents(b)


def parse_zone(rrsets: Iterable[JsonObject], owner: str, policy: Policy) -> ZoneState:
    """Split a zone's rrsets into what `owner` holds, as Records, and the rest (never touched).

    A held program that the policy would now write otherwise (its client groups' sources changed, or
    someone edited it) reads as holding nothing, so the next diff writes it again."""
    by_key = {(str(r["name"]).lower(), str(r["type"])): r for r in rrsets}
    owned: dict[str, dict[Key, JsonObject]] = {}
    foreign: dict[str, str] = {}
    for (name, rtype), rrset in by_key.items():
        first, _, service = dns_name(name).partition(".")
        if rtype != "TXT" or first != MARKER_LABEL or not service:
            continue
        who = marker_owner(_contents(rrset))
        if who != owner:
            foreign[service] = who or ""
            continue
        owned[service] = {(name, rtype): rrset}
        lua = by_key.get((absolute(service), "LUA"))
        if lua is not None:
            owned[service][(absolute(service), "LUA")] = lua
    served = {dns_name(s.dns_name) for s in policy.services}
    records: list[Record] = []
    for service, held in owned.items():
        lua = held.get((absolute(service), "LUA"))
        if lua is None:
            continue
        found = [
            record
            for content in _contents(lua)
            if (match := _CONTENT.match(content))
            for record in parse_program(service, match[1], int(lua.get("ttl", 0)), match[2])
        ]
        if service in served and not same(
            build_rrsets(policy, found, owner).get(service, {}).get((absolute(service), "LUA"), {}), lua
        ):
            continue
        records += found
    return ZoneState(by_key, owned, foreign, tuple(sorted(records)))


def plan_patch(
    zone: ZoneState, records: Iterable[Record], policy: Policy, owner: str, zone_name: str
) -> list[JsonObject]:
    """The rrsets of one PATCH (REPLACE and DELETE) that make the zone hold `records` for `owner`; refuses,
    listing every problem, anything that would touch a foreign rrset or a name outside the zone."""
    desired = build_rrsets(policy, records, owner)
    patch: list[JsonObject] = []
    problems: list[str] = []
    ours = {key for held in zone.owned.values() for key in held}
    for service in sorted(desired.keys() | zone.owned.keys()):
        want, have = desired.get(service, {}), zone.owned.get(service, {})
        changed = [k for k in sorted(want) if k not in have or not same(want[k], have[k])]
        gone = sorted(have.keys() - want.keys())
        if not changed and not gone:
            continue
        other = zone.foreign_markers.get(service)
        if other is not None:
            problems.append(
                f"{service} is owned by {other or 'a TXT record not of this plane'!r} (its marker)"
            )
        if not _below(service, zone_name):
            problems.append(f"{service} is not below the zone {dns_name(zone_name)}")
        for name, rtype in zone.rrsets.keys() - ours:
            if name == absolute(service) and rtype in ("LUA", "CNAME", *ADDRESS_TYPES):
                problems.append(f"{service} {rtype} exists and is not this plane's")
        patch += [{**want[k], "changetype": "REPLACE"} for k in changed]
        patch += [{"name": name, "type": rtype, "changetype": "DELETE"} for name, rtype in gone]
    if problems:
        raise PermanentProviderError("change refused: " + "; ".join(problems[:10]))
    return patch


def lua_enabled(config: Iterable[Mapping[str, Any]], metadata: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the server answers a zone's LUA records: its enable-lua-records is on, or the zone's
    ENABLE-LUA-RECORDS metadata is 1 (measured on 4.7.3: a metadata 0 does not turn a server-wide yes off)."""
    setting = next((str(c.get("value")) for c in config if c.get("name") == "enable-lua-records"), "no")
    return setting in ("yes", "true", "1") or any(
        item.get("kind") == "ENABLE-LUA-RECORDS" and list(item.get("metadata") or []) == ["1"]
        for item in metadata
    )


# ---------------------------------------------------------------- the provider (I/O)


class PowerDnsProvider:
    """One zone of one PowerDNS server; see docs/providers/powerdns.md for the records it writes."""

    capabilities = Capabilities(client_groups=True, weights=True, max_weight=MAX_WEIGHT)

    def __init__(self, policy: Policy, settings: PowerDnsSettings, *, request_timeout: float = 5.0) -> None:
        self.name = settings.instance_name
        # A server of one's own: no write rate to respect, and reading a zone is cheap.
        self.tuning = Tuning(
            timeout=15.0, min_interval=0.0, resync=10.0, max_delete_share=settings.max_delete_share
        )
        self._policy = policy
        self._settings = settings
        self._request_timeout = request_timeout
        self._zone_id = quote(absolute(settings.zone), safe="")
        self._base = f"{settings.api_url.rstrip('/')}/api/v1/servers/{quote(settings.server_id, safe='')}"
        self._key: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._zone: ZoneState | None = None
        # Set by the daemon when replicas coordinate: PowerDNS has no conditional write, so the fence is
        # asked right before each one.
        self.fence: Fence | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        key = os.environ.get(self._settings.api_key_env)
        if not key:
            raise PermanentProviderError(
                f"{self.name}: the environment variable {self._settings.api_key_env} (api_key_env) is not set"
            )
        self._key = key
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        await self._call("GET", f"/zones/{self._zone_id}", params={"rrsets": "false"})
        config = await self._call("GET", "/config")
        metadata = await self._call("GET", f"/zones/{self._zone_id}/metadata")
        if not lua_enabled(_list(config), _list(metadata)):
            raise PermanentProviderError(
                f"{self.name}: the server does not answer LUA records in zone {self._settings.zone}: set "
                "enable-lua-records=yes in its pdns.conf (or the zone's ENABLE-LUA-RECORDS metadata to 1) "
                "and restart it"
            )
        if not any(_below(s.dns_name, self._settings.zone) for s in self._policy.services):
            log.warning("%s: no service of the policy is below %s", self.name, self._settings.zone)

    def update_policy(self, policy: Policy) -> None:
        settings = next((s for s in policy.providers.powerdns_list if s.instance_name == self.name), None)
        if settings is None:
            raise PermanentProviderError(f"{self.name}: the policy no longer configures this instance")
        if settings != self._settings:
            raise PermanentProviderError(f"{self.name}: new settings need a new instance")
        self._policy = policy
        self._zone = None  # held programs are judged against the policy's client groups

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ the Provider contract

    def render(self, plan: RoutingPlan) -> list[Record]:
        return render_powerdns(self._policy, plan, self._settings.zone)

    async def current(self) -> list[Record]:
        self._zone = await self._read()
        return list(self._zone.records)

    async def apply(self, changes: ChangeSet) -> None:
        zone = self._zone or await self._read()
        after = apply_changes(self.name, {r.key: r for r in zone.records}, changes)
        owner = self._settings.owner
        patch = plan_patch(zone, after.values(), self._policy, owner, self._settings.zone)
        if not patch:
            return
        if self.fence is not None:
            self.fence()
        self._zone = None  # until the change is known to be done, what the zone holds is not known
        await self._call("PATCH", f"/zones/{self._zone_id}", body={"rrsets": patch})
        rrsets = dict(zone.rrsets)
        for rrset in patch:
            key = (rrset["name"], rrset["type"])
            if rrset["changetype"] == "DELETE":
                rrsets.pop(key, None)
            else:
                rrsets[key] = {k: v for k, v in rrset.items() if k != "changetype"}
        # The packet and query caches would go on answering the old program for up to their TTL.
        for name in sorted({rrset["name"] for rrset in patch}):
            await self._call("PUT", "/cache/flush", params={"domain": name})
        self._zone = parse_zone(rrsets.values(), owner, self._policy)

    # ------------------------------------------------------------ the HTTP API

    async def _read(self) -> ZoneState:
        zone = await self._call("GET", f"/zones/{self._zone_id}")
        if not isinstance(zone, dict):
            raise TransientProviderError(f"{self.name}: the zone read back as no JSON object")
        return parse_zone(_list(zone.get("rrsets")), self._settings.owner, self._policy)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: JsonObject | None = None,
    ) -> Any:
        if self._session is None or self._key is None:
            raise PermanentProviderError(f"{self.name}: not started")
        what = f"{self.name}: {method} {path}"
        status, data, raw = await request_json(
            self._session,
            method,
            self._base + path,
            what=what,
            within=self._request_timeout,
            headers={"X-API-Key": self._key},
            params=params,
            body=body,
        )
        if status >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            text = str(error) if error else raw[:300].decode("utf-8", "replace").strip()
            message = f"{what}: {status} {text[:300]}"
            raise TransientProviderError(message) if status >= 500 else PermanentProviderError(message)
        return data


def _list(value: object) -> list[JsonObject]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
