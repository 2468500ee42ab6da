"""The Google Cloud DNS provider: per service, a geo-routed CNAME into one weighted record set per client group,
owned through a TXT marker, in one managed zone, written by raw v1 API calls."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
import google.auth
import google.auth.exceptions
import google.auth.transport.requests
from google.auth.credentials import Credentials

from controlplane.changes import ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import CloudDnsSettings, Policy
from controlplane.providers.base import (
    Capabilities,
    Fence,
    Fenced,
    PermanentProviderError,
    TransientProviderError,
    Tuning,
)
from controlplane.providers.records import MAX_WEIGHT, apply_changes, dns_name, render_records
from controlplane.providers.rrsetapi import (
    ADDRESS_TYPES,
    HERITAGE,
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

API_ENDPOINT = "https://dns.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/ndev.clouddns.readwrite"
# The fence's lease record, one per owner below the zone's apex; no service's layout (`_cp-owner.<service>`,
# `_cp-<owner>-<group>.<service>`) takes it for one of its names.
LEASE_LABEL = "_cp-lease"
GEO_WEIGHT = MAX_WEIGHT  # a geo item sends all of its location to its group: there is no split to show
# Cloud DNS's per-change limits (https://cloud.google.com/dns/quotas): one reconcile is one atomic change,
# so a change that needs more is refused rather than split into changes that could half-apply.
MAX_RRSETS_PER_CHANGE = 1000
PAGE_SIZE = 1000


# ---------------------------------------------------------------- names


def lease_name(owner: str, zone_name: str) -> str:
    return f"{LEASE_LABEL}.{owner}.{absolute(zone_name)}"


def lease_epoch(
    rrsets: Mapping[Key, JsonObject], owner: str, zone_name: str
) -> tuple[JsonObject | None, int]:
    """The lease record among a zone's rrsets, as read, and the epoch it holds (0 when there is none)."""
    rrset = rrsets.get((lease_name(owner, zone_name), "TXT"))
    if rrset is None:
        return None, 0
    data = rrset.get("rrdatas") or []
    fields = (
        dict(part.partition("=")[::2] for part in data[0].strip('"').split(",")) if len(data) == 1 else {}
    )
    epoch = fields.get("epoch", "")
    if (
        f"heritage={fields.get('heritage')}" != HERITAGE
        or fields.get("owner") != owner
        or not epoch.isdigit()
    ):
        raise PermanentProviderError(f"{rrset.get('name')} holds no lease of owner {owner!r}: {data}")
    return rrset, int(epoch)


def fenced(
    change: ZoneChange, rrsets: Mapping[Key, JsonObject], owner: str, zone_name: str, epoch: int
) -> ZoneChange:
    """`change` written under `epoch`: it also deletes the lease record exactly as read (Cloud DNS refuses
    the whole change, 412, if it changed since) and adds it at `epoch` (409 if one appeared where none was
    read). Fenced, and nothing to send, when the lease read is already newer."""
    now, held = lease_epoch(rrsets, owner, zone_name)
    if held > epoch:
        raise Fenced(f"the zone's lease record holds epoch {held}, newer than this leader's {epoch}")
    lease = {
        "name": lease_name(owner, zone_name),
        "type": "TXT",
        "ttl": MARKER_TTL,
        "rrdatas": [f'"{HERITAGE},owner={owner},epoch={epoch}"'],
    }
    deletion = () if now is None else (now,)
    return ZoneChange((lease, *change.additions), (*deletion, *change.deletions))


def group_prefix(owner: str) -> str:
    return f"_cp-{owner}-"


def group_name(owner: str, group: str, service_name: str) -> str:
    """The name holding `group`'s weighted addresses for a service (lower case, no final dot)."""
    return f"{group_prefix(owner)}{group}.{dns_name(service_name)}"


def _name_problems(name: str) -> list[str]:
    labels = name.split(".")
    problems = [f"label {label!r} of {name!r} is longer than 63" for label in labels if len(label) > 63]
    if len(name) > 253:
        problems.append(f"{name!r} is longer than 253")
    return problems


# ---------------------------------------------------------------- plan -> records (pure)


def render_cloud(policy: Policy, owner: str, plan: RoutingPlan, zone: str | None = None) -> list[Record]:
    """The records Cloud DNS should hold for `plan`, in the units current() reads back; with `zone`, only
    those of services below it (a policy may spread its services over several zones, one instance each).

    Per service and client group with `geo.gcp_regions`: one CNAME record per location (the geo item at the
    service name, pointing at the group's name), kept whatever the weights are, because a location with no
    item is answered by the nearest item, which may be another group's; and one address record per region
    with a positive weight at the group's name. A zero weight is no item at all: Cloud DNS documents no
    meaning for it, and a failing-closed group must answer nothing, never "every item alike".
    """
    groups = {g.name: g for g in policy.client_groups}
    located = {name for name, g in groups.items() if g.geo is not None and g.geo.gcp_regions}
    default = policy.default_client_group
    if default not in located:
        raise PermanentProviderError(
            f"Cloud DNS answers every location it has no item for with the nearest item: the default "
            f"client group {default!r} needs geo.gcp_regions, or its clients would be sent to whichever "
            "group's location is nearest"
        )
    services = {s.name: s for s in policy.services if zone is None or _below(s.dns_name, zone)}
    records: list[Record] = []
    problems: list[str] = []
    for group_plan in plan:
        group = groups.get(group_plan.group)
        service = services.get(group_plan.service)
        if group is None or group.geo is None or service is None or group.name not in located:
            continue  # unknown names are refused by render_records below; other groups are not Cloud DNS's
        target = group_name(owner, group.name, service.dns_name)
        problems += _name_problems(target)
        records += [
            Record(dns_name(service.dns_name), group.name, location, target, GEO_WEIGHT, service.ttl, "CNAME")
            for location in group.geo.gcp_regions
        ]
        addresses = [r.dns_address for r in policy.allowed_regions(service, group)]
        if len(set(addresses)) != len(addresses):
            problems.append(
                f"{service.name}/{group.name}: two regions share an address, which a weighted item "
                "cannot tell apart"
            )
    names = {dns_name(s.dns_name) for s in services.values()}
    for record in render_records(policy, plan):
        if record.group in located and record.weight > 0 and record.name in names:
            name = group_name(owner, record.group, record.name)
            records.append(
                Record(
                    name, record.group, record.region, record.target, record.weight, record.ttl, record.rtype
                )
            )
    if problems:
        raise PermanentProviderError("; ".join(problems))
    return sorted(records)


# ---------------------------------------------------------------- records <-> rrsets (pure)


def _service_of(name: str, owner: str) -> str | None:
    """The service a name of this owner's layout belongs to (the name itself or its parent)."""
    first, _, rest = name.partition(".")
    if first == MARKER_LABEL or first.startswith(group_prefix(owner)):
        return rest or None
    return None


def parse_zone(rrsets: Iterable[JsonObject], owner: str, policy: Policy) -> ZoneState:
    """Split a zone's rrsets into what `owner` holds, as Records, and the rest (never touched)."""
    by_key: dict[Key, JsonObject] = {}
    for rrset in rrsets:
        by_key[(str(rrset["name"]).lower(), str(rrset["type"]))] = rrset
    owned_services: set[str] = set()
    foreign: dict[str, str] = {}
    for (name, rtype), rrset in by_key.items():
        service = _service_of(dns_name(name), owner)
        if rtype != "TXT" or service is None or dns_name(name) != marker_name(service):
            continue
        who = marker_owner(rrset.get("rrdatas") or [])
        if who == owner:
            owned_services.add(service)
        else:
            foreign[service] = who or ""
    owned: dict[str, dict[Key, JsonObject]] = defaultdict(dict)
    for (name, rtype), rrset in by_key.items():
        plain = dns_name(name)
        if plain in owned_services and rtype == "CNAME":
            owned[plain][(name, rtype)] = rrset
            continue
        service = _service_of(plain, owner)
        if service not in owned_services or service is None:
            continue
        if (rtype == "TXT" and plain == marker_name(service)) or (
            rtype in ADDRESS_TYPES and plain.startswith(group_prefix(owner))
        ):
            owned[service][(name, rtype)] = rrset
    records = [r for service_rrsets in owned.values() for r in _records(service_rrsets, owner, policy)]
    return ZoneState(by_key, dict(owned), foreign, tuple(sorted(records)))


def _records(rrsets: Mapping[Key, JsonObject], owner: str, policy: Policy) -> Iterable[Record]:
    prefix = group_prefix(owner)
    for (name, rtype), rrset in rrsets.items():
        plain, ttl = dns_name(name), int(rrset.get("ttl", 0))
        policy_json = rrset.get("routingPolicy") or {}
        if rtype == "CNAME":
            for item in (policy_json.get("geo") or {}).get("items") or []:
                for target in item.get("rrdatas") or []:
                    group = dns_name(target).partition(".")[0].removeprefix(prefix)
                    yield Record(plain, group, item["location"], dns_name(target), GEO_WEIGHT, ttl, "CNAME")
        elif rtype in ADDRESS_TYPES:
            group, _, service_name = plain.partition(".")
            group = group.removeprefix(prefix)
            regions = _regions_by_address(policy, service_name, group)
            for item in (policy_json.get("wrr") or {}).get("items") or []:
                weight = round(float(item.get("weight", 0)))
                for address in item.get("rrdatas") or []:
                    region = regions.get(address, address)
                    yield Record(plain, group, region, address, weight, ttl, rtype)


def _regions_by_address(policy: Policy, service_name: str, group: str) -> dict[str, str]:
    service = next((s for s in policy.services if dns_name(s.dns_name) == service_name), None)
    client_group = next((g for g in policy.client_groups if g.name == group), None)
    if service is None or client_group is None:
        return {}  # records of a service the policy no longer has: region names do not matter, all go
    return {r.dns_address: r.name for r in policy.allowed_regions(service, client_group)}


def build_rrsets(records: Iterable[Record], owner: str) -> dict[str, dict[Key, JsonObject]]:
    """The rrsets, marker included, that hold `records`: per service name, keyed as the API keys them."""
    geo: dict[str, list[Record]] = defaultdict(list)
    weighted: dict[Key, list[Record]] = defaultdict(list)
    for record in records:
        if record.rtype == "CNAME":
            geo[record.name].append(record)
        else:
            weighted[(record.name, record.rtype)].append(record)
    out: dict[str, dict[Key, JsonObject]] = defaultdict(dict)
    for service, items in geo.items():
        out[service][(absolute(service), "CNAME")] = {
            "name": absolute(service),
            "type": "CNAME",
            "ttl": min(r.ttl for r in items),
            "routingPolicy": {
                "geo": {
                    "items": [
                        {"location": r.region, "rrdatas": [absolute(r.target)]}
                        for r in sorted(items, key=lambda r: r.region)
                    ],
                    # Only matters with health-checked items (this layout has none): it keeps Cloud DNS from
                    # ever failing a location over to the next nearest, which may be another jurisdiction.
                    "enableFencing": True,
                }
            },
        }
    for (name, rtype), items in weighted.items():
        service = name.partition(".")[2]
        out[service][(absolute(name), rtype)] = {
            "name": absolute(name),
            "type": rtype,
            "ttl": min(r.ttl for r in items),
            "routingPolicy": {
                "wrr": {
                    "items": [
                        {"weight": r.weight, "rrdatas": [r.target]}
                        for r in sorted(items, key=lambda r: r.region)
                    ]
                }
            },
        }
    for service, rrsets in out.items():
        name = absolute(marker_name(service))
        rrsets[(name, "TXT")] = {
            "name": name,
            "type": "TXT",
            "ttl": MARKER_TTL,
            "rrdatas": [marker_text(owner)],
        }
    return dict(out)


def essence(node: object) -> object:
    """What two rrsets are compared on, as the API compares a deletion with what it holds: without the
    server's `kind` stamps, numbers as floats, rrdatas as a set, defaults (false, 0) as absent."""
    if isinstance(node, dict):
        return {
            key: sorted(value) if key == "rrdatas" else essence(value)
            for key, value in node.items()
            if key != "kind" and value is not None and value is not False and value != 0
        }
    if isinstance(node, list):
        return [essence(v) for v in node]
    if isinstance(node, int | float) and not isinstance(node, bool):
        return float(node)
    return node


@dataclass(frozen=True, slots=True)
class ZoneChange:
    additions: tuple[JsonObject, ...]
    deletions: tuple[JsonObject, ...]

    def __bool__(self) -> bool:
        return bool(self.additions or self.deletions)


def plan_change(zone: ZoneState, records: Iterable[Record], owner: str, zone_name: str) -> ZoneChange:
    """The one atomic change that makes the zone hold `records` for `owner`; refuses, listing every problem,
    anything that would touch a foreign rrset or that Cloud DNS would refuse.

    Deletions are the rrsets exactly as last read, so a zone changed since answers 412 and nothing applies.
    Every service touched also deletes and re-adds its marker: a compare-and-set on its ownership.
    """
    desired = build_rrsets(records, owner)
    additions: list[JsonObject] = []
    deletions: list[JsonObject] = []
    problems: list[str] = []
    ours = {key for rrsets in zone.owned.values() for key in rrsets}
    foreign: dict[str, set[str]] = defaultdict(set)
    for name, rtype in zone.rrsets.keys() - ours:
        foreign[name].add(rtype)
    for service in sorted(desired.keys() | zone.owned.keys()):
        want, have = desired.get(service, {}), zone.owned.get(service, {})
        gone = [have[k] for k in sorted(have.keys() - want.keys())]
        changed = [k for k in sorted(want) if k not in have or essence(want[k]) != essence(have[k])]
        if not gone and not changed:
            continue
        problems += _refusals(zone, service, [want[k] for k in changed], foreign, zone_name)
        marker = (absolute(marker_name(service)), "TXT")
        if marker in have and marker in want and marker not in changed:
            changed.append(marker)  # the compare-and-set: deleted as read, added back
        deletions += gone + [have[k] for k in changed if k in have]
        additions += [want[k] for k in changed]
    if len(additions) > MAX_RRSETS_PER_CHANGE or len(deletions) > MAX_RRSETS_PER_CHANGE:
        problems.append(
            f"{len(additions)} additions and {len(deletions)} deletions exceed Cloud DNS's "
            f"{MAX_RRSETS_PER_CHANGE} per change"
        )
    if problems:
        raise PermanentProviderError("change refused: " + "; ".join(problems[:10]))
    return ZoneChange(tuple(additions), tuple(deletions))


def _refusals(
    zone: ZoneState,
    service: str,
    adding: Iterable[JsonObject],
    foreign_types: Mapping[str, set[str]],
    zone_name: str,
) -> list[str]:
    problems: list[str] = []
    other = zone.foreign_markers.get(service)
    if other:
        problems.append(f"{service} is owned by {other!r} (its {MARKER_LABEL} marker says so)")
    for rrset in adding:
        name, rtype = rrset["name"], rrset["type"]
        plain = dns_name(name)
        if plain == dns_name(zone_name) or not plain.endswith("." + dns_name(zone_name)):
            problems.append(f"{plain} is not below the zone {dns_name(zone_name)}")
        problems += _name_problems(plain)
        foreign = foreign_types.get(name, set())
        if rtype in foreign:
            problems.append(f"{plain} {rtype} exists and is not this plane's")
        elif foreign and (rtype == "CNAME" or "CNAME" in foreign):
            problems.append(f"{plain}: a CNAME cannot share its name, and {sorted(foreign)} exist there")
        for item in (rrset.get("routingPolicy") or {}).get("wrr", {}).get("items", []):
            if not 0 <= item["weight"] <= MAX_WEIGHT:
                problems.append(f"{plain}: weight {item['weight']} outside 0..{MAX_WEIGHT}")
        if not 0 <= rrset["ttl"] <= 2**31 - 1:
            problems.append(f"{plain}: ttl {rrset['ttl']} out of range")
    return problems


# ---------------------------------------------------------------- the provider (I/O)


class CloudDnsProvider:
    """One managed zone of one project; see docs/providers/clouddns.md for the layout it writes."""

    capabilities = Capabilities(client_groups=True, weights=True, max_weight=MAX_WEIGHT)
    tuning = Tuning(timeout=30.0, min_interval=1.0, resync=60.0)

    def __init__(
        self,
        policy: Policy,
        settings: CloudDnsSettings,
        *,
        credentials: Credentials | None = None,
        request_timeout: float = 10.0,
        change_wait: float = 20.0,
    ) -> None:
        self.name = settings.instance_name
        self._policy = policy
        self._settings = settings
        self._credentials = credentials
        self._request_timeout = request_timeout
        self._change_wait = change_wait
        endpoint = (settings.api_endpoint or API_ENDPOINT).rstrip("/")
        self._base = f"{endpoint}/dns/v1/projects/{settings.project}/managedZones/{settings.managed_zone}"
        self._session: aiohttp.ClientSession | None = None
        self._refreshing = asyncio.Lock()
        self._zone_name: str | None = None
        self._zone: ZoneState | None = None
        # Set by the daemon when replicas coordinate: every change then carries the lease record's rewrite.
        self.fence: Fence | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._credentials is None:
            try:
                credentials, _ = await asyncio.to_thread(google.auth.default, scopes=[SCOPE])
            except google.auth.exceptions.DefaultCredentialsError as exc:
                raise PermanentProviderError(
                    f"{self.name}: no Google application default credentials: {exc}"
                ) from None
            self._credentials = credentials
        if self._session is None:
            self._session = aiohttp.ClientSession()
        zone = await self._call("GET", "")
        self._zone_name = str(zone.get("dnsName", "")).lower()
        if not self._zone_name:
            raise PermanentProviderError(f"{self.name}: the managed zone has no dnsName")
        if not any(_below(s.dns_name, self._zone_name) for s in self._policy.services):
            log.warning("%s: no service of the policy is below %s", self.name, self._zone_name)

    def update_policy(self, policy: Policy) -> None:
        settings = next((s for s in policy.providers.cloud_dns_list if s.instance_name == self.name), None)
        if settings is None:
            raise PermanentProviderError(f"{self.name}: the policy no longer configures this instance")
        if (settings.api_endpoint, settings.owner) != (self._settings.api_endpoint, self._settings.owner):
            raise PermanentProviderError(f"{self.name}: a new api_endpoint or owner needs a new instance")
        self._policy, self._settings = policy, settings
        self._zone = None  # records are read back with the policy's region names

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ the Provider contract

    def render(self, plan: RoutingPlan) -> list[Record]:
        return render_cloud(self._policy, self._settings.owner, plan, self._zone_name)

    async def current(self) -> list[Record]:
        self._zone = await self._read()
        return list(self._zone.records)

    async def apply(self, changes: ChangeSet) -> None:
        zone = self._zone or await self._read()
        after = apply_changes(self.name, {r.key: r for r in zone.records}, changes)
        assert self._zone_name is not None  # _read needs it too
        change = plan_change(zone, after.values(), self._settings.owner, self._zone_name)
        if not change:
            return
        epoch = None if self.fence is None else self.fence()
        if epoch is not None:
            change = fenced(change, zone.rrsets, self._settings.owner, self._zone_name, epoch)
        self._zone = None  # until the change is known to be done, what the zone holds is not known
        try:
            answer = await self._call(
                "POST",
                "/changes",
                body={"additions": list(change.additions), "deletions": list(change.deletions)},
            )
        except _ZoneMoved:
            if epoch is None:
                raise
            # Refused as a whole: a newer leader's lease is why, or the zone merely moved (a retry rereads).
            self._zone = await self._read()
            _, now = lease_epoch(self._zone.rrsets, self._settings.owner, self._zone_name)
            if now > epoch:
                raise Fenced(
                    f"{self.name}: the zone's lease record holds epoch {now}, newer than ours ({epoch})"
                ) from None
            raise
        await self._wait(answer)
        rrsets = dict(zone.rrsets)
        for rrset in change.deletions:
            rrsets.pop((rrset["name"], rrset["type"]), None)
        for rrset in answer.get("additions") or change.additions:
            rrsets[(str(rrset["name"]).lower(), str(rrset["type"]))] = rrset
        self._zone = parse_zone(rrsets.values(), self._settings.owner, self._policy)

    # ------------------------------------------------------------ the v1 API

    async def _read(self) -> ZoneState:
        if self._zone_name is None:
            raise PermanentProviderError(f"{self.name}: not started")
        rrsets: list[JsonObject] = []
        token: str | None = None
        while True:
            params = {"maxResults": str(PAGE_SIZE)} | ({"pageToken": token} if token else {})
            page = await self._call("GET", "/rrsets", params=params)
            rrsets += page.get("rrsets") or []
            token = page.get("nextPageToken")
            if not token:
                return parse_zone(rrsets, self._settings.owner, self._policy)

    async def _wait(self, change: JsonObject) -> None:
        """Poll a change until Cloud DNS says it is done, for at most change_wait seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._change_wait
        delay = 0.05
        while change.get("status") != "done":
            if loop.time() >= deadline:
                raise TransientProviderError(f"{self.name}: change {change.get('id')} still pending")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            change = await self._call("GET", f"/changes/{change.get('id')}")

    async def _token(self) -> str:
        credentials = self._credentials
        if credentials is None:
            raise PermanentProviderError(f"{self.name}: not started")
        if not credentials.valid:
            async with self._refreshing:
                if not credentials.valid:
                    await self._refresh(credentials)
        return str(credentials.token)

    async def _refresh(self, credentials: Credentials) -> None:
        request = google.auth.transport.requests.Request()
        try:
            async with asyncio.timeout(self._request_timeout):
                await asyncio.to_thread(credentials.refresh, request)
        except TimeoutError:
            raise TransientProviderError(f"{self.name}: token refresh timed out") from None
        except google.auth.exceptions.TransportError as exc:
            raise TransientProviderError(f"{self.name}: token refresh failed: {type(exc).__name__}") from None
        except google.auth.exceptions.RefreshError as exc:
            raise PermanentProviderError(
                f"{self.name}: token refresh refused: {type(exc).__name__}"
            ) from None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: JsonObject | None = None,
    ) -> JsonObject:
        if self._session is None:
            raise PermanentProviderError(f"{self.name}: not started")
        headers = {"Authorization": f"Bearer {await self._token()}"}
        what = f"{self.name}: {method} {path or '/'}"
        status, data, _ = await request_json(
            self._session,
            method,
            self._base + path,
            what=what,
            within=self._request_timeout,
            headers=headers,
            params=params,
            body=body,
        )
        if status >= 400:
            raise _api_error(what, status, data)
        if not isinstance(data, dict):
            raise TransientProviderError(f"{what}: answered {status} without a JSON object")
        return data


def _below(name: str, zone: str) -> bool:
    return dns_name(name).endswith("." + dns_name(zone))


class _ZoneMoved(TransientProviderError):
    """A change refused because the zone is no longer as it was read (409, 412): re-read, retry."""


def _api_error(what: str, status: int, data: object) -> PermanentProviderError | TransientProviderError:
    """Google's error, as retrying will or will not help: throttling, 5xx and a zone that moved on are worth a
    re-read and a retry; everything else is a refusal a retry would only repeat."""
    error = data.get("error") if isinstance(data, dict) else None
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    text = f"{what}: {status} {message[:300]}".rstrip()
    if status in (409, 412) or (status == 404 and "entity.change" in message):
        return _ZoneMoved(text)
    if status == 429 or status >= 500:
        return TransientProviderError(text)
    return PermanentProviderError(text)
