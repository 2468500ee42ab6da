"""Route 53 provider: in one hosted zone, per service name, the weighted sets, geolocation tree and ownership
marker this plane owns (layout, residency and fail-closed: docs/providers/route53.md)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from controlplane.changes import Change, ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy, Route53Settings, in_zone
from controlplane.providers.base import (
    Capabilities,
    Fence,
    Fenced,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    Tuning,
)
from controlplane.providers.pacing import pacer
from controlplane.providers.records import dns_name, render_records

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client

log = logging.getLogger(__name__)

HERITAGE = "llm-failover-plane"
MARKER_LABEL = "_cp"  # the marker is _cp.<service>; every weighted set lies below it
MARKER_TTL = 300
# The fence's lease record, one per owner at the zone's apex: never below a marker (`_cp.`), so no service's
# layout takes it for one of its records; every fenced batch deletes it exactly as read and recreates it.
LEASE_LABEL = "_cp-lease"
MAX_WEIGHT = 255  # Route 53's own bound on Weight
# Where a group's geolocation record points when it must give no address (failing closed, or the group has
# no region of the queried type): addresses that are no region and reach nothing (RFC 5737 TEST-NET-1 for
# A, RFC 6666's discard-only prefix for AAAA). A region with one of these addresses is refused.
SENTINEL = {"A": "192.0.2.0", "AAAA": "100::"}
ADDRESS_TYPES = frozenset(SENTINEL)
CLOSED = "_closed"  # the sentinel's place in a SetIdentifier: never a region name (those have no "_")
# The region of the Record that stands for a service's marker, so a change of structure alone (a group's
# geo, the default group) is a change the reconciler sees; never a region name either.
LAYOUT = "_layout"
UNKNOWN_LAYOUT = "unknown"  # a marker written before it carried its layout: rewritten at the next apply
MAX_BATCH_RECORDS = 1000  # ResourceRecord elements per ChangeResourceRecordSets (UPSERT counts twice)
MAX_BATCH_CHARS = 32000  # characters of Value elements per ChangeResourceRecordSets (UPSERT twice)
MAX_SET_IDENTIFIER = 128
MAX_NAME = 253  # characters of a DNS name without its final dot
MAX_TXT = 255
# What a fenced batch keeps free for the lease's DELETE and CREATE (one value each, a quoted TXT string)
FENCE_RECORDS, FENCE_CHARS = 2, 2 * (MAX_TXT + 2)
MAX_TTL = 2_147_483_647
PAGE = 300  # ListResourceRecordSets' largest page
MAX_PAGES = 1000  # 300,000 record sets: beyond that the zone is not one this plane should list
CALL_TIMEOUT = 15.0  # one API call; botocore's own timeouts are below it
REQUEST_INTERVAL = 0.25  # 4 requests/s at most per endpoint, under Route 53's 5/s per account
INSYNC_TIMEOUT = 20.0  # a change still PENDING this long is a transient failure (it lands later)
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "PriorRequestNotComplete",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
    }
)
_REGION = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_MARKER = re.compile(rf'"heritage={HERITAGE},owner=([a-z0-9-]+)(?:,layout=([0-9a-f]+))?"')
_LEASE = re.compile(rf'"heritage={HERITAGE},owner=([a-z0-9-]+),epoch=([0-9]+)"')
_ROUTING_KEYS = ("Weight", "GeoLocation", "Region", "Failover", "MultiValueAnswer", "CidrRoutingConfig")

RRSet = dict[str, Any]  # a ResourceRecordSet as boto3 sends and lists it, names with their final dot
RRKey = tuple[str, str, str]  # (name, type, SetIdentifier or "")
Op = tuple[str, RRSet]  # ("CREATE" | "DELETE" | "UPSERT", record set)
_T = TypeVar("_T")


def route53_weight(percent: int) -> int:
    """Percent (0..100) in Route 53's 0..255, rounded half up: any percent > 0 is at least 3, never 0."""
    return (percent * MAX_WEIGHT + 50) // 100


def fqdn(name: str) -> str:
    return dns_name(name) + "."


def canonical(rrset: Mapping[str, Any]) -> RRSet:
    """One spelling of a record set, whoever wrote or listed it: names lower case with a final dot, the
    alias's zone id bare. Every other member is kept, so a foreign record is compared whole."""
    out = copy.deepcopy(dict(rrset))
    out["Name"] = fqdn(out["Name"])
    alias = out.get("AliasTarget")
    if alias is not None:
        out.pop("TTL", None)  # an alias has none (Route 53 lists none; moto lists 0)
        alias["DNSName"] = fqdn(alias["DNSName"])
        alias["HostedZoneId"] = alias["HostedZoneId"].removeprefix("/hostedzone/")
    return out


def rrkey(rrset: Mapping[str, Any]) -> RRKey:
    return (rrset["Name"], rrset["Type"], rrset.get("SetIdentifier", ""))


def _routing(rrset: Mapping[str, Any]) -> str:
    return next((key for key in _ROUTING_KEYS if key in rrset), "simple")


def _address(value: str) -> str:
    return str(ipaddress.ip_address(value))


def _digest(name: str, rtype: str) -> str:
    # Makes a SetIdentifier unique in the zone, not only at its name: emulators delete by SetIdentifier alone.
    return hashlib.sha256(f"{name}|{rtype}".encode()).hexdigest()[:10]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one owner's records live in a zone and how they are recognised (pure)."""

    owner: str
    zone_id: str

    def marker_text(self, digest: str) -> str:
        return f'"heritage={HERITAGE},owner={self.owner},layout={digest}"'

    def marker_name(self, service: str) -> str:
        return f"{MARKER_LABEL}.{fqdn(service)}"

    def set_name(self, service: str, group: str) -> str:
        return f"{group}.{self.owner}.{self.marker_name(service)}"

    def identifier(self, name: str, rtype: str, what: str) -> str:
        return f"cp:{self.owner}:{what}:{_digest(name, rtype)}"

    def marker(self, service: str, digest: str) -> RRSet:
        return {
            "Name": self.marker_name(service),
            "Type": "TXT",
            "TTL": MARKER_TTL,
            "ResourceRecords": [{"Value": self.marker_text(digest)}],
        }

    def member(self, record: Record) -> RRSet:
        name = self.set_name(record.name, record.group)
        return self._weighted(name, record.rtype, record.region, record.target, record.weight, record.ttl)

    def sentinel(self, service: str, group: str, rtype: str, ttl: int, weight: int) -> RRSet:
        name = self.set_name(service, group)
        return self._weighted(name, rtype, CLOSED, SENTINEL[rtype], weight, ttl)

    def _weighted(self, name: str, rtype: str, what: str, value: str, weight: int, ttl: int) -> RRSet:
        return {
            "Name": name,
            "Type": rtype,
            "SetIdentifier": self.identifier(name, rtype, what),
            "Weight": weight,
            "TTL": ttl,
            "ResourceRecords": [{"Value": value}],
        }

    def geo(self, service: str, group: str, rtype: str, place: tuple[str, str]) -> RRSet:
        """A geolocation record at the service name aliasing into `group`'s weighted set; `place` is
        ("ContinentCode", "EU"), ("CountryCode", "GB") or ("CountryCode", "*")."""
        name = fqdn(service)
        kind, code = place
        where = (
            "default" if code == "*" else f"{'continent' if kind == 'ContinentCode' else 'country'}-{code}"
        )
        return {
            "Name": name,
            "Type": rtype,
            "SetIdentifier": self.identifier(name, rtype, f"geo-{where}"),
            "GeoLocation": {kind: code},
            "AliasTarget": {
                "HostedZoneId": self.zone_id,
                "DNSName": self.set_name(service, group),
                "EvaluateTargetHealth": False,
            },
        }

    def owns(self, rrset: Mapping[str, Any]) -> bool:
        """Ours: the marker naming this owner, or a record whose SetIdentifier carries this owner and the
        digest of its own name and type."""
        ident = rrset.get("SetIdentifier")
        if ident is None:
            return rrset["Name"].startswith(f"{MARKER_LABEL}.") and self.marker_owner(rrset) == self.owner
        return bool(ident.startswith(f"cp:{self.owner}:")) and ident.endswith(
            ":" + _digest(rrset["Name"], rrset["Type"])
        )

    def marker_owner(self, rrset: Mapping[str, Any]) -> str | None:
        """The owner a heritage marker names, if `rrset` is one (of any owner)."""
        match = _marker_match(rrset)
        return match.group(1) if match else None

    def marker_in(self, zone: Mapping[RRKey, RRSet], service: str) -> Record | None:
        """The layout Record of `service`'s marker in `zone`, if this owner's marker is there."""
        rrset = zone.get((self.marker_name(service), "TXT", ""))
        return self.parse_marker(rrset) if rrset is not None else None

    def parse_marker(self, rrset: Mapping[str, Any]) -> Record | None:
        """The layout Record an owned marker stands for (its layout unknown if it carries none); None for
        anything else."""
        match = _marker_match(rrset)
        if match is None or match.group(1) != self.owner or "SetIdentifier" in rrset:
            return None
        service = self.service_of(rrset["Name"])
        if service is None or rrset["Name"] != self.marker_name(service):
            return None
        return layout_record(service, match.group(2) or UNKNOWN_LAYOUT)

    def service_of(self, name: str) -> str | None:
        """The service name (no final dot) an owned name belongs to: the marker's, a set's, or None."""
        if name.startswith(f"{MARKER_LABEL}."):
            return name.removeprefix(f"{MARKER_LABEL}.").rstrip(".")
        group, sep, service = name.partition(f".{self.owner}.{MARKER_LABEL}.")
        if sep and group and "." not in group:
            return service.rstrip(".")
        return None

    def parse_member(self, rrset: Mapping[str, Any]) -> Record | None:
        """The region record an owned weighted-set member stands for; None for anything else (sentinels)."""
        name, rtype = rrset["Name"], rrset["Type"]
        group, sep, service = name.partition(f".{self.owner}.{MARKER_LABEL}.")
        ident = rrset.get("SetIdentifier", "")
        parts = ident.split(":")
        values = rrset.get("ResourceRecords") or []
        if (
            not sep
            or not group
            or "." in group
            or rtype not in ADDRESS_TYPES
            or len(parts) != 4
            or not _REGION.fullmatch(parts[2])
            or ident != self.identifier(name, rtype, parts[2])
            or _routing(rrset) != "Weight"
            or len(values) != 1
            or "TTL" not in rrset
        ):
            return None
        return Record(
            name=service.rstrip("."),
            group=group,
            region=parts[2],
            target=_address(values[0]["Value"]),
            weight=rrset["Weight"],
            ttl=rrset["TTL"],
            rtype=rtype,
        )


def _marker_match(rrset: Mapping[str, Any]) -> re.Match[str] | None:
    values = rrset.get("ResourceRecords") or []
    if rrset["Type"] != "TXT" or len(values) != 1:
        return None
    return _MARKER.fullmatch(values[0]["Value"])


def lease_name(owner: str, zone_name: str) -> str:
    return f"{LEASE_LABEL}.{owner}.{fqdn(zone_name)}"


def lease(owner: str, zone_name: str, epoch: int) -> RRSet:
    """The lease record saying that the leader of `epoch` wrote `owner`'s records in the zone last."""
    return {
        "Name": lease_name(owner, zone_name),
        "Type": "TXT",
        "TTL": MARKER_TTL,
        "ResourceRecords": [{"Value": f'"heritage={HERITAGE},owner={owner},epoch={epoch}"'}],
    }


def lease_epoch(owner: str, zone_name: str, held: Mapping[RRKey, RRSet]) -> tuple[RRSet | None, int]:
    """The lease record in `held` and the epoch it holds (0 when there is none)."""
    rrset = held.get((lease_name(owner, zone_name), "TXT", ""))
    if rrset is None:
        return None, 0
    values = rrset.get("ResourceRecords") or []
    match = _LEASE.fullmatch(values[0]["Value"]) if len(values) == 1 else None
    if match is None or match.group(1) != owner:
        raise PermanentProviderError(f"{rrset['Name']} holds no lease of owner {owner!r}: {values}")
    return rrset, int(match.group(2))


def fence_ops(owner: str, zone_name: str, held: Mapping[RRKey, RRSet], epoch: int) -> list[Op]:
    """What a batch written under `epoch` carries first: the lease's exact-match DELETE as held (Route 53
    refuses the whole batch if it changed since) and its CREATE at `epoch` (refused if it exists, when none
    was held). Fenced, and nothing to send, when the held lease is already newer."""
    now, held_epoch = lease_epoch(owner, zone_name, held)
    if held_epoch > epoch:
        raise Fenced(f"the zone's lease record holds epoch {held_epoch}, newer than this leader's {epoch}")
    deletion: list[Op] = [] if now is None else [("DELETE", now)]
    return [*deletion, ("CREATE", lease(owner, zone_name, epoch))]


def layout_record(service: str, digest: str) -> Record:
    """The Record render() and current() exchange for a service's marker: its target names the layout."""
    return Record(service, "*", LAYOUT, f"layout={digest}", 0, MARKER_TTL, "TXT")


@dataclass(frozen=True, slots=True)
class Shape:
    """All that a service's structure depends on besides which regions are live; its digest is what the
    marker carries, so a policy edit that changes only structure still changes a rendered Record."""

    types: tuple[str, ...]
    ttl: int
    groups: tuple[str, ...]
    routes: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # routed group, its geolocation places

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


def shape(policy: Policy, members: Sequence[Record]) -> Shape:
    routed = {
        g.name: g for g in policy.client_groups if g.geo is not None or g.name == policy.default_client_group
    }
    routes = []
    for name, client_group in sorted(routed.items()):
        places: list[tuple[str, str]] = []
        if client_group.geo is not None:
            places += [("ContinentCode", str(c)) for c in client_group.geo.continents]
            places += [("CountryCode", c) for c in client_group.geo.countries]
        if name == policy.default_client_group:
            places.append(("CountryCode", "*"))
        routes.append((name, tuple(places)))
    return Shape(
        types=tuple(sorted({r.rtype for r in members})),
        ttl=min(r.ttl for r in members),
        groups=tuple(sorted({r.group for r in members} | routed.keys())),
        routes=tuple(routes),
    )


def structure(layout: Layout, policy: Policy, service: str, members: Sequence[Record]) -> dict[RRKey, RRSet]:
    """The record sets one service name needs besides its region records: the marker carrying its shape's
    digest, a sentinel per group and type (weight 1 only when the group has no live region of that type,
    so an all-zero set never answers every region), and the geolocation tree. Nothing when no region
    record remains."""
    if not members:
        return {}
    form = shape(policy, members)
    live = {(r.group, r.rtype) for r in members if r.weight > 0}
    wanted = [layout.marker(service, form.digest)]
    for group in form.groups:
        for rtype in form.types:
            live_here = (group, rtype) in live
            wanted.append(layout.sentinel(service, group, rtype, form.ttl, 0 if live_here else 1))
    for name, places in form.routes:
        wanted += [layout.geo(service, name, rtype, place) for rtype in form.types for place in places]
    return {rrkey(r): r for r in wanted}


# Phases of a change batch: the marker is claimed first and released last; a weighted set is complete
# before a geolocation record aliases into it and emptied only after no alias points at it. A new layout is
# stamped on the marker after the structure it names: if a later batch fails, the old stamp makes the next
# diff bring the rest.
_CLAIM, _SETS, _GEO, _SET_DELETES, _STAMP, _RELEASE = range(6)


@dataclass(frozen=True, slots=True)
class Unit:
    """Changes that must land in one batch (a DELETE and the CREATE replacing it), and when."""

    phase: int
    ops: tuple[Op, ...]


def _unit(layout: Layout, before: RRSet | None, after: RRSet | None) -> Unit:
    some = after or before
    assert some is not None
    ops: list[Op] = []
    if before is not None and after is not None and rrkey(before) == rrkey(after):
        # One UPSERT, not DELETE + CREATE: the same cost in Route 53's limits, and moto refuses to CREATE
        # again a record set it once created, deleted or not. What it replaces was checked against `held`.
        ops.append(("UPSERT", after))
    else:
        if before is not None:
            ops.append(("DELETE", before))
        if after is not None:
            ops.append(("CREATE", after))
    if some["Name"].startswith(f"{MARKER_LABEL}."):
        phase = _RELEASE if after is None else _CLAIM if before is None else _STAMP
    elif "GeoLocation" in some:
        phase = _GEO
    else:
        phase = _SETS if after is not None else _SET_DELETES
    return Unit(phase, tuple(ops))


def plan_ops(
    layout: Layout, policy: Policy, zone_name: str, held: Mapping[RRKey, RRSet], changes: ChangeSet
) -> tuple[list[Unit], dict[RRKey, RRSet]]:
    """The record-set changes that make `changes` true in a zone holding `held`, the structure kept in step,
    checked as Route 53 would check them; and the zone after them. PermanentProviderError lists every
    problem and nothing is sent."""
    problems: list[str] = []
    units: list[Unit] = []
    touched: set[str] = set()
    layouts: dict[str, Change] = {}  # service -> its marker's change: checked once its structure is known
    for change in changes.changes:
        if change.record.region == LAYOUT:
            layouts[change.record.name] = change
            touched.add(change.record.name)
            if layout.marker_in(held, change.record.name) != change.before:
                problems.append(f"{change.record.name}: marker not held as the change set expects")
            continue
        before = after = None
        if change.before is not None:
            member = layout.member(change.before)
            before = held.get(rrkey(member))
            if before is None or layout.parse_member(before) != change.before:
                problems.append(
                    f"{rrkey(member)}: not held as the change set expects ({change.action.name.lower()})"
                )
                before = None
            touched.add(change.before.name)
        if change.after is not None:
            after = layout.member(change.after)
            touched.add(change.after.name)
        if before is not None or after is not None:
            units.append(_unit(layout, before, after))
    middle, _ = simulate(held, [op for u in units for op in u.ops], zone_name)
    members: dict[str, list[Record]] = {}
    for rrset in middle.values():
        record = layout.parse_member(rrset) if layout.owns(rrset) else None
        if record is not None:
            members.setdefault(record.name, []).append(record)
    services = (
        touched
        | members.keys()
        | {dns_name(s.dns_name) for s in policy.services if in_zone(s.dns_name, zone_name)}
    )
    owned_structure: dict[str, dict[RRKey, RRSet]] = {}
    for key, rrset in held.items():
        service = layout.service_of(key[0]) or (dns_name(key[0]) if "GeoLocation" in rrset else None)
        if service is not None and layout.owns(rrset) and layout.parse_member(rrset) is None:
            owned_structure.setdefault(service, {})[key] = rrset
    for service in sorted(services | owned_structure.keys()):
        want = structure(layout, policy, service, members.get(service, []))
        have = owned_structure.get(service, {})
        # The marker must end as the change set says (unchanged if it says nothing): the reconciler takes
        # what it rendered to be held, so a layout rendered under another policy is refused, not written.
        said = layouts[service].after if service in layouts else layout.marker_in(have, service)
        made = layout.marker_in(want, service)
        if made != said:
            problems.append(
                f"{service}: the change set leaves {said.target if said else 'no marker'}, "
                f"its records make {made.target if made else 'none'}"
            )
        for key in sorted(want.keys() | have.keys()):
            if want.get(key) != have.get(key):
                units.append(_unit(layout, have.get(key), want.get(key)))
        marker = layout.marker_name(service)
        for rrset in held.values():
            other = layout.marker_owner(rrset) if rrset["Name"] == marker else None
            if other is not None and other != layout.owner:
                problems.append(f"{service} is owned by {other!r} (marker {marker})")
    units.sort(key=lambda u: u.phase)
    ops = [op for u in units for op in u.ops]
    written = {r["Name"] for action, r in ops if action != "DELETE"}
    for key, rrset in held.items():
        if key[0] in written and not layout.owns(rrset):
            clash = [r["Type"] for a, r in ops if a != "DELETE" and r["Name"] == key[0]]
            if key[1] in clash or key[1] == "CNAME":
                problems.append(f"foreign record {key}, where this plane would write {sorted(set(clash))}")
    final, refused = simulate(held, ops, zone_name)
    problems += refused
    if problems:
        raise PermanentProviderError(f"change set refused: {'; '.join(dict.fromkeys(problems))}")
    return units, final


def simulate(
    held: Mapping[RRKey, RRSet], ops: Iterable[Op], zone_name: str
) -> tuple[dict[RRKey, RRSet], list[str]]:
    """The zone after `ops` and every reason Route 53 would refuse them (moto accepts most of these)."""
    zone = dict(held)
    problems: list[str] = []
    touched: set[tuple[str, str]] = set()
    for action, rrset in ops:
        key = rrkey(rrset)
        problems += [f"{action} {key}: {p}" for p in _check_rrset(rrset, zone_name)]
        if action == "DELETE":
            if zone.get(key) != rrset:
                problems.append(f"DELETE {key}: no record set held exactly so")
            zone.pop(key, None)
        elif action == "CREATE" and key in zone:
            problems.append(f"CREATE {key}: exists")
        else:
            zone[key] = rrset
        touched.add((key[0], key[1]))
    by_type: dict[tuple[str, str], list[RRSet]] = {}
    for key, rrset in zone.items():
        by_type.setdefault((key[0], key[1]), []).append(rrset)
    for name, rtype in sorted(touched):
        at = by_type.get((name, rtype), [])
        policies = {_routing(r) for r in at}
        if len(policies) > 1:
            problems.append(f"{name} {rtype}: mixed routing policies {sorted(policies)}")
        if policies == {"simple"} and len(at) > 1:
            problems.append(f"{name} {rtype}: {len(at)} simple record sets")
        places = [tuple(sorted(r["GeoLocation"].items())) for r in at if "GeoLocation" in r]
        if len(places) != len(set(places)):
            problems.append(f"{name} {rtype}: one place in two geolocation records")
        for r in at:
            alias = r.get("AliasTarget")
            if alias is not None and (alias["DNSName"], rtype) not in by_type:
                problems.append(f"{name} {rtype}: alias to {alias['DNSName']}, which holds no {rtype}")
    return zone, problems


def _check_rrset(rrset: Mapping[str, Any], zone_name: str) -> list[str]:
    problems = []
    name: str = rrset["Name"]
    if not in_zone(name, zone_name):
        problems.append(f"outside the zone {zone_name}")
    if len(name.rstrip(".")) > MAX_NAME:
        problems.append(f"name longer than {MAX_NAME} characters")
    ident = rrset.get("SetIdentifier")
    if ident is not None and not 1 <= len(ident) <= MAX_SET_IDENTIFIER:
        problems.append(f"SetIdentifier of {len(ident)} characters (1..{MAX_SET_IDENTIFIER})")
    if (ident is None) != (_routing(rrset) == "simple"):
        problems.append("a routing policy needs a SetIdentifier, and only a routed record has one")
    weight = rrset.get("Weight")
    if "Weight" in rrset and (type(weight) is not int or not 0 <= weight <= MAX_WEIGHT):
        problems.append(f"weight {weight!r} outside 0..{MAX_WEIGHT}")
    values = [v["Value"] for v in rrset.get("ResourceRecords") or []]
    if ("AliasTarget" in rrset) == bool(values) or ("AliasTarget" in rrset) == ("TTL" in rrset):
        problems.append("needs either an alias target, or a TTL and values")
    ttl = rrset.get("TTL", 0)
    if type(ttl) is not int or not 0 <= ttl <= MAX_TTL:
        problems.append(f"TTL {ttl!r} outside 0..{MAX_TTL}")
    for value in values:
        rtype = rrset["Type"]
        if rtype in ADDRESS_TYPES:
            try:
                valid = ipaddress.ip_address(value).version == (4 if rtype == "A" else 6)
            except ValueError:
                valid = False
            if not valid:
                problems.append(f"{value!r} is not an {rtype} address")
        elif rtype == "TXT" and not (
            value.startswith('"') and value.endswith('"') and len(value) - 2 <= MAX_TXT
        ):
            problems.append("a TXT value must be one quoted string of at most 255 characters")
    return problems


def _size(action: str, rrset: Mapping[str, Any]) -> tuple[int, int]:
    """(ResourceRecord elements, characters of Value elements) as Route 53 counts them."""
    values = [v["Value"] for v in rrset.get("ResourceRecords") or []]
    times = 2 if action == "UPSERT" else 1
    return times * max(1, len(values)), times * sum(map(len, values))


def batches(
    units: Iterable[Unit], max_records: int = MAX_BATCH_RECORDS, max_chars: int = MAX_BATCH_CHARS
) -> list[list[Op]]:
    """Units in order, packed into as few ChangeResourceRecordSets batches as the limits allow; a unit is
    never split. PermanentProviderError if one unit alone is over a limit."""
    out: list[list[Op]] = []
    records = chars = 0
    for unit in units:
        sizes = [_size(action, rrset) for action, rrset in unit.ops]
        unit_records, unit_chars = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
        if unit_records > max_records or unit_chars > max_chars:
            raise PermanentProviderError(
                f"{unit.ops[0][1]['Name']}: one change of {unit_records} records / {unit_chars} characters "
                f"is over Route 53's {max_records} / {max_chars} per request"
            )
        if not out or records + unit_records > max_records or chars + unit_chars > max_chars:
            out.append([])
            records = chars = 0
        out[-1].extend(unit.ops)
        records += unit_records
        chars += unit_chars
    return out


def _aws_error(exc: Exception, what: str) -> ProviderError:
    """The provider error for a failed call: throttling, 5xx and the network are worth a retry."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"{what}: {code}: {error.get('Message', '')}"
        if code in _TRANSIENT_CODES or status >= 500:
            return TransientProviderError(message)
        return PermanentProviderError(message)
    if isinstance(exc, TimeoutError):
        return TransientProviderError(f"{what}: no answer within {CALL_TIMEOUT:g}s")
    # botocore's network errors (connect, read timeout, connection closed) are BotoCoreErrors too; what is
    # not the network (no credentials, a bad parameter) will not get better by retrying.
    network = isinstance(exc, BotoConnectionError | HTTPClientError)
    cls = TransientProviderError if network else PermanentProviderError
    return cls(f"{what}: {type(exc).__name__}: {exc}")


def _refused_over(exc: ClientError, name: str) -> bool:
    """Whether Route 53 refused a batch over the record set at `name` (a DELETE not matching its values, or
    a CREATE of it while it exists): its message names each record set it refused a change of."""
    error = exc.response.get("Error", {})
    return error.get("Code") == "InvalidChangeBatch" and f"name='{name}'" in error.get("Message", "")


def _read_page(client: Route53Client, zone_id: str, start: RRKey | None) -> tuple[list[RRSet], RRKey | None]:
    """One page of the zone, canonical, and where the next starts (in a worker thread: boto3 blocks)."""
    args: dict[str, Any] = {"HostedZoneId": zone_id, "MaxItems": str(PAGE)}
    if start is not None:
        args["StartRecordName"], args["StartRecordType"] = start[0], start[1]
        if start[2]:
            args["StartRecordIdentifier"] = start[2]
    reply = client.list_resource_record_sets(**args)
    page = [canonical(r) for r in reply["ResourceRecordSets"]]
    if not reply["IsTruncated"]:
        return page, None
    return page, (reply["NextRecordName"], reply["NextRecordType"], reply.get("NextRecordIdentifier", ""))


class Route53Provider:
    """One hosted zone. Reads list the zone (on start, on errors, every resync); between them the zone
    is known from what was read and written since, so an apply costs one write and its INSYNC wait."""

    capabilities = Capabilities(client_groups=True, weights=True, max_weight=MAX_WEIGHT)
    tuning = Tuning(timeout=30.0, min_interval=1.0, resync=60.0)

    def __init__(
        self,
        policy: Policy,
        settings: Route53Settings,
        *,
        session: boto3.session.Session | None = None,
        request_interval: float = REQUEST_INTERVAL,
        insync_timeout: float = INSYNC_TIMEOUT,
        insync_poll: float = 1.0,
    ) -> None:
        self.name = settings.instance_name
        self._policy = policy
        self._settings = settings
        self._session = session  # tests: dummy credentials; else the SDK's own chain
        self._endpoint = str(settings.endpoint_url).rstrip("/") if settings.endpoint_url else None
        self._pacer = pacer("route53", self._endpoint, request_interval)
        self._insync_timeout = insync_timeout
        self._insync_poll = insync_poll
        self._client: Route53Client | None = None
        self._layout: Layout | None = None
        self._zone_name = settings.zone
        self._held: dict[RRKey, RRSet] | None = None  # the zone as last read and written since
        # Set by the daemon when replicas coordinate: every batch then carries the lease record's rewrite.
        self.fence: Fence | None = None

    # ------------------------------------------------------------------ pure

    def render(self, plan: RoutingPlan) -> list[Record]:
        zone = self._zone_name
        if zone is None:
            raise PermanentProviderError(f"{self.name}: not started (the zone's name is not known yet)")
        problems: list[str] = []
        records: list[Record] = []
        for r in render_records(self._policy, plan):
            if not in_zone(r.name, zone):
                continue
            try:
                target = _address(r.target)
            except ValueError:
                problems.append(
                    f"region {r.region}: {r.target!r} is not an IP address (give the region an address)"
                )
                continue
            if target in SENTINEL.values():
                problems.append(f"region {r.region}: {target} is the fail-closed sentinel, never a region")
            if len(f"{r.group}.{self._settings.owner}.{MARKER_LABEL}.{r.name}") > MAX_NAME:
                problems.append(f"{r.name}: too long for the weighted set names below it")
            records.append(
                Record(r.name, r.group, r.region, target, route53_weight(r.weight), r.ttl, r.rtype)
            )
        if problems:
            raise PermanentProviderError(f"{self.name}: " + "; ".join(dict.fromkeys(problems)))
        services: dict[str, list[Record]] = {}
        for record in records:
            services.setdefault(record.name, []).append(record)
        return records + [
            layout_record(service, shape(self._policy, members).digest)
            for service, members in services.items()
        ]

    # ------------------------------------------------------------------ I/O

    async def start(self) -> None:
        session = (
            self._session if self._session is not None else await asyncio.to_thread(boto3.session.Session)
        )
        config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=10,
        )
        client = self._client = await asyncio.to_thread(
            session.client, "route53", endpoint_url=self._endpoint, region_name="us-east-1", config=config
        )
        if self._settings.hosted_zone_id is not None:
            zone_id = self._settings.hosted_zone_id
            reply = await self._call("GetHostedZone", lambda: client.get_hosted_zone(Id=zone_id))
            name = reply["HostedZone"]["Name"]
        else:
            wanted = fqdn(self._settings.zone or "")
            found = await self._call(
                "ListHostedZonesByName",
                lambda: client.list_hosted_zones_by_name(DNSName=wanted, MaxItems="2"),
            )
            zones = [z for z in found["HostedZones"] if fqdn(z["Name"]) == wanted]
            if len(zones) != 1:
                raise PermanentProviderError(
                    f"{self.name}: {len(zones)} hosted zones named {wanted}; "
                    + ("create it, or check the credentials' account" if not zones else "give hosted_zone_id")
                )
            zone_id, name = zones[0]["Id"], zones[0]["Name"]
        self._zone_name = dns_name(name)
        self._layout = Layout(self._settings.owner, zone_id.removeprefix("/hostedzone/"))

    async def current(self) -> list[Record]:
        layout = self._started()
        held = await self._read()
        return sorted(
            record
            for rrset in held.values()
            if layout.owns(rrset)
            and (record := layout.parse_member(rrset) or layout.parse_marker(rrset)) is not None
        )

    async def apply(self, changes: ChangeSet) -> None:
        layout = self._started()
        if changes.provider != self.name:
            raise PermanentProviderError(
                f"change set for provider {changes.provider!r} sent to {self.name!r}"
            )
        held = self._held if self._held is not None else await self._read()
        zone = self._zone_name or ""
        try:
            units, _ = await asyncio.to_thread(plan_ops, layout, self._policy, zone, held, changes)
            room = (MAX_BATCH_RECORDS, MAX_BATCH_CHARS)
            if self.fence is not None:
                room = (MAX_BATCH_RECORDS - FENCE_RECORDS, MAX_BATCH_CHARS - FENCE_CHARS)
            for batch in batches(units, *room):
                held = await self._send(batch, held)
        except BaseException:
            self._held = None  # what landed is not known: the next diff reads the zone
            raise

    def update_policy(self, policy: Policy) -> None:
        mine = next((s for s in policy.providers.route53_list if s.instance_name == self.name), None)
        if mine is None or not mine.enabled:
            raise PermanentProviderError(f"{self.name}: no longer in the policy")
        fixed = ("zone", "hosted_zone_id", "endpoint_url", "owner")
        if any(getattr(mine, f) != getattr(self._settings, f) for f in fixed):
            raise PermanentProviderError(f"{self.name}: a new zone, endpoint or owner needs a new instance")
        self._policy, self._settings = policy, mine

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    # ------------------------------------------------------------------ helpers

    def _started(self) -> Layout:
        if self._layout is None or self._client is None:
            raise PermanentProviderError(f"{self.name}: not started")
        return self._layout

    async def _call(self, what: str, call: Callable[[], _T]) -> _T:
        await self._pacer.wait()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return await asyncio.to_thread(call)
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            raise _aws_error(exc, f"{self.name}: {what}") from None

    async def _lease_moved(self, epoch: int) -> ProviderError:
        """Why a batch under `epoch` was refused over the lease record, from the zone read afresh: a newer
        leader holds it (Fenced), or this replica's view of it was only older than the zone (a retry reads
        the zone and carries the lease as it is now)."""
        _, now = lease_epoch(self._settings.owner, self._zone_name or "", await self._read())
        if now > epoch:
            return Fenced(
                f"{self.name}: the zone's lease record holds epoch {now}, newer than ours ({epoch})"
            )
        return TransientProviderError(
            f"{self.name}: the lease record changed since it was read (epoch {now} now, ours {epoch})"
        )

    async def _read(self) -> dict[RRKey, RRSet]:
        client, zone_id = self._client, self._started().zone_id
        assert client is not None
        held: dict[RRKey, RRSet] = {}
        start: RRKey | None = None
        for _ in range(MAX_PAGES):
            at = start
            page, start = await self._call("ListResourceRecordSets", partial(_read_page, client, zone_id, at))
            held.update((rrkey(r), r) for r in page)
            if start is None:
                self._held = held
                return held
            if start == at:
                raise TransientProviderError(
                    f"{self.name}: ListResourceRecordSets made no progress at {start}"
                )
        raise PermanentProviderError(f"{self.name}: the zone holds more than {MAX_PAGES * PAGE} record sets")

    async def _send(self, batch: list[Op], held: dict[RRKey, RRSet]) -> dict[RRKey, RRSet]:
        client, zone_id = self._client, self._started().zone_id
        assert client is not None
        owner, zone = self._settings.owner, self._zone_name or ""
        # Asked per batch: leadership may lapse between two batches of one apply.
        epoch = None if self.fence is None else self.fence()
        ops = batch if epoch is None else fence_ops(owner, zone, held, epoch) + batch
        body: Any = {
            "Comment": f"{HERITAGE} owner={owner}",
            "Changes": [{"Action": action, "ResourceRecordSet": rrset} for action, rrset in ops],
        }

        def change() -> Any:
            try:
                return client.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch=body)
            except ClientError as exc:
                if epoch is not None and _refused_over(exc, lease_name(owner, zone)):
                    return None
                raise

        reply = await self._call("ChangeResourceRecordSets", change)
        if reply is None:
            assert epoch is not None
            raise await self._lease_moved(epoch)
        after, _ = simulate(held, ops, zone)
        self._held = after  # accepted: Route 53 serves it once INSYNC, and lists it already
        change_id = reply["ChangeInfo"]["Id"]
        status = reply["ChangeInfo"]["Status"]
        deadline = time.monotonic() + self._insync_timeout
        poll = self._insync_poll
        while status != "INSYNC":
            if time.monotonic() + poll > deadline:
                raise TransientProviderError(
                    f"{self.name}: change {change_id} still {status} after {self._insync_timeout:g}s"
                )
            await asyncio.sleep(poll)
            poll = min(poll * 2, 4.0)
            got = await self._call("GetChange", lambda: client.get_change(Id=change_id))
            status = got["ChangeInfo"]["Status"]
        return after
