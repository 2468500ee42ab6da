"""A fake of the Google Cloud DNS v1 REST API (https://dns.googleapis.com/dns/v1) for tests: Google ships no
emulator, and the provider's correctness rests on the API's contract, so the fake holds that contract strictly.

What it serves (paths as in the v1 discovery document):
- managedZones.get                GET  /dns/v1/projects/{project}/managedZones/{zone}   (zone by name or id)
- resourceRecordSets.list         GET  .../managedZones/{zone}/rrsets  ?name= &type= &maxResults= &pageToken=
- resourceRecordSets.get          GET  .../managedZones/{zone}/rrsets/{name}/{type}
- changes.create                  POST .../managedZones/{zone}/changes  {"additions": [...], "deletions": [...]}
- changes.get                     GET  .../managedZones/{zone}/changes/{changeId}

The contract it enforces, as Cloud DNS documents or answers it:
- An rrset carries `rrdatas` or a `routingPolicy` (`wrr`, `geo` with `enableFencing`, `primaryBackup`), never
  both. Names are absolute (trailing dot) and inside the zone's dnsName; A/AAAA data are addresses of their
  family; weights are non-negative; geo locations are GCP regions, each once; a CNAME stands alone at its name.
- A change is atomic: all of it applies or none. Deletions apply first, so an addition may replace an rrset
  deleted in the same change; otherwise an addition whose (name, type) exists is 409 alreadyExists. A
  deletion of a missing rrset is 404 notFound; one that does not equal the existing rrset (ttl, rrdatas,
  routing policy) is 412 conditionNotMet. Equality is proto3's: a field at its default equals an absent one,
  and the order of rrdatas does not count (that of routing items does); `kind` fields are the server's own,
  stamped on whatever it stores or is sent. The zone apex keeps its SOA and NS.
- Limits (https://cloud.google.com/dns/quotas): 1,000 additions and 1,000 deletions per change, 100 records per
  rrset, 100,000 bytes of rrdata per change, 10,000 rrsets per zone; beyond them 413 quotaExceeded.
- Errors have Google's JSON shape {"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}},
  with the reasons and messages the real API uses (e.g. "Precondition not met for 'entity.change.deletions[0]'").
- Every request needs `Authorization: Bearer <anything>` (401 otherwise). Test knobs: `page_size` (small, so
  clients must paginate), `pending_polls` (a change reads "pending" for that many changes.get), `fail_next`
  (429 rateLimitExceeded / 503 backendError for the next N requests), and `log`, every request answered.

Pointing a client at it (checked against this fake with google-cloud-dns 0.37.2 and google-api-python-client
2.202, credentials `google.oauth2.credentials.Credentials(token="test")`: AnonymousCredentials sends no
Authorization header, so the fake answers 401, as Google does, and the client then fails with
InvalidOperation "Anonymous credentials cannot be refreshed"):
- google-cloud-dns: `dns.Client(project=P, credentials=C, client_options={"api_endpoint": fake.url})`; the
  endpoint is the root, the client appends /dns/v1 and follows nextPageToken. Its ResourceRecordSet has no
  routing policy: listing a zone that holds one raises KeyError('rrdatas'), and it cannot write one.
- google-api-python-client: `discovery.build("dns", "v1", credentials=C, static_discovery=True,
  client_options={"api_endpoint": fake.url + "/"})` speaks the whole schema (routingPolicy included) and
  raises HttpError with `error_details` from the error shape above, but over httplib2, blocking.
What the production client should use: neither. Raw v1 requests with aiohttp to `api_endpoint` (default
https://dns.googleapis.com; paths /dns/v1/...) in this module's JSON shapes, under asyncio.timeout, with
google-auth only for the bearer token (`google.auth.default(scopes=
["https://www.googleapis.com/auth/ndev.clouddns.readwrite"])`, refreshed in asyncio.to_thread before expiry).
Routing policies then read and write like any field, nothing blocks the loop, and tests reach the fake by
`api_endpoint` with a static token.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from chaos.loopback import serve_app, stop_app

JsonObject = dict[str, Any]

RRSET_KIND = "dns#resourceRecordSet"
# The kinds the real API stamps on routing policies it returns: a client must not count them as drift.
POLICY_KINDS = {
    "": "dns#rRSetRoutingPolicy",
    "wrr": "dns#rRSetRoutingPolicyWrrPolicy",
    "wrr.items": "dns#rRSetRoutingPolicyWrrPolicyWrrPolicyItem",
    "geo": "dns#rRSetRoutingPolicyGeoPolicy",
    "geo.items": "dns#rRSetRoutingPolicyGeoPolicyGeoPolicyItem",
    "primaryBackup": "dns#rRSetRoutingPolicyPrimaryBackupPolicy",
    "primaryBackup.backupGeoTargets": "dns#rRSetRoutingPolicyGeoPolicy",
    "primaryBackup.backupGeoTargets.items": "dns#rRSetRoutingPolicyGeoPolicyGeoPolicyItem",
}
RECORD_TYPES = frozenset(
    [
        "A",
        "AAAA",
        "ALIAS",
        "CAA",
        "CNAME",
        "DNSKEY",
        "DS",
        "HTTPS",
        "IPSECKEY",
        "MX",
        "NAPTR",
        "NS",
        "PTR",
        "SOA",
        "SPF",
        "SRV",
        "SSHFP",
        "SVCB",
        "TLSA",
        "TXT",
    ]
)
# GCP region names (us-east1, europe-west4, northamerica-northeast2): geo items take these, not continents.
GCP_REGION = re.compile(r"^[a-z]+(-[a-z]+)+[0-9]+$")
MAX_BODY = 1 << 20
Key = tuple[str, str]


@dataclass(frozen=True)
class Limits:
    """Cloud DNS's documented system limits; tests lower them to reach them cheaply."""

    additions_per_change: int = 1000
    deletions_per_change: int = 1000
    records_per_rrset: int = 100
    rrdata_bytes_per_change: int = 100_000
    rrsets_per_zone: int = 10_000


@dataclass(frozen=True)
class Logged:
    """One request the fake answered."""

    method: str
    path: str
    query: str
    status: int


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def response(self) -> web.Response:
        detail = {"domain": "global", "reason": self.reason, "message": self.message}
        body = {"error": {"code": self.code, "message": self.message, "errors": [detail]}}
        return web.json_response(body, status=self.code)


def invalid(where: str, value: object) -> ApiError:
    return ApiError(400, "invalid", f"Invalid value for '{where}': '{value}'")


@dataclass
class _Fault:
    status: int
    remaining: int
    method: str | None


@dataclass
class _Zone:
    project: str
    name: str
    id: str
    dns_name: str
    rrsets: dict[Key, JsonObject] = field(default_factory=dict)
    changes: dict[str, JsonObject] = field(default_factory=dict)
    # changeId -> changes.get answers still to read "pending"
    pending: dict[str, int] = field(default_factory=dict)

    def resource(self) -> JsonObject:
        return {
            "kind": "dns#managedZone",
            "name": self.name,
            "id": self.id,
            "dnsName": self.dns_name,
            "description": "",
            "visibility": "public",
            "nameServers": [f"ns-cloud-a{i}.googledomains.com." for i in range(1, 5)],
            "creationTime": "2024-01-01T00:00:00.000Z",
        }


class FakeCloudDns:
    """The fake server; `url` is the api_endpoint to hand a client (the root: paths start with /dns/v1)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, page_size: int = 3, limits: Limits | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.page_size = page_size
        self.limits = limits or Limits()
        self.pending_polls = 0
        self.log: list[Logged] = []
        self._zones: list[_Zone] = []
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ test set-up and inspection

    def add_zone(self, project: str, name: str, dns_name: str) -> JsonObject:
        """A public managed zone, holding the apex SOA and NS that Cloud DNS creates with every zone."""
        if not dns_name.endswith(".") or dns_name == ".":
            raise ValueError(f"dnsName must be absolute (end with a dot): {dns_name!r}")
        if self._find(project, name) is not None:
            raise ValueError(f"zone {name!r} exists in {project!r}")
        zone = _Zone(project, name, str(next(self._ids)), dns_name.lower())
        self._zones.append(zone)
        soa = "ns-cloud-a1.googledomains.com. cloud-dns-hostmaster.google.com. 1 21600 3600 259200 300"
        apex = [
            {"name": zone.dns_name, "type": "SOA", "ttl": 21600, "rrdatas": [soa]},
            {"name": zone.dns_name, "type": "NS", "ttl": 21600, "rrdatas": zone.resource()["nameServers"]},
        ]
        # change "0", as the real API logs a zone's creation; not a client's change, so no per-change limits
        self._apply(zone, {"additions": apex}, per_change_limits=False)
        return zone.resource()

    def seed(self, project: str, zone: str, rrset: JsonObject) -> None:
        """Place an rrset as someone else's tool would have (a change, validated, not in the request log)."""
        self._apply(self._zone(project, zone), {"additions": [rrset]})

    def rrsets(self, project: str, zone: str) -> list[JsonObject]:
        """The zone's rrsets as resourceRecordSets.list returns them, in its order."""
        return copy.deepcopy(self._sorted(self._zone(project, zone)))

    def fail_next(self, count: int, status: int = 429, method: str | None = None) -> None:
        """Answer the next `count` authorised requests (of `method` only, when given) with 429 or 503."""
        if status not in (429, 503):
            raise ValueError("the fake fails with 429 (rateLimitExceeded) or 503 (backendError)")
        self._faults.append(_Fault(status, count, method))

    def calls(self, method: str | None = None, path_suffix: str = "") -> int:
        return sum(
            1 for r in self.log if (method is None or r.method == method) and r.path.endswith(path_suffix)
        )

    # ------------------------------------------------------------------ server

    async def start(self) -> None:
        app = web.Application(middlewares=[self._frame], client_max_size=MAX_BODY)
        base = "/dns/v1/projects/{project}/managedZones/{zone}"
        app.router.add_get(base, self._get_zone)
        app.router.add_get(base + "/rrsets", self._list_rrsets)
        app.router.add_get(base + "/rrsets/{name}/{type}", self._get_rrset)
        app.router.add_post(base + "/changes", self._create_change)
        app.router.add_get(base + "/changes/{change}", self._get_change)
        self._runner, self.port = await serve_app(app, self.host, self.port, shutdown_timeout=0.5)

    async def stop(self) -> None:
        await stop_app(self._runner)
        self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @web.middleware
    async def _frame(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await self._answer(request, handler)
        except ApiError as error:
            response = error.response()
        except web.HTTPException as error:  # unknown path, wrong method, body over the bound
            reason = {404: "notFound", 405: "badRequest", 413: "badRequest"}.get(error.status, "invalid")
            response = ApiError(error.status, reason, error.reason).response()
        self.log.append(Logged(request.method, request.path, request.query_string, response.status))
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "required",
                "Request is missing required authentication credential. Expected OAuth 2 access token.",
            )
        for fault in self._faults:
            if fault.remaining > 0 and fault.method in (None, request.method):
                fault.remaining -= 1
                if fault.status == 429:
                    raise ApiError(429, "rateLimitExceeded", "Rate Limit Exceeded")
                raise ApiError(503, "backendError", "Backend Error")
        return await handler(request)

    # ------------------------------------------------------------------ handlers

    async def _get_zone(self, request: web.Request) -> web.Response:
        return web.json_response(self._zone_of(request).resource())

    async def _list_rrsets(self, request: web.Request) -> web.Response:
        zone = self._zone_of(request)
        name, rtype = request.query.get("name"), request.query.get("type")
        if rtype is not None and name is None:
            raise ApiError(400, "required", "The 'parameters.name' parameter is required but was missing.")
        size = self.page_size
        if "maxResults" in request.query:
            try:
                size = min(size, int(request.query["maxResults"]))
            except ValueError:
                raise invalid("parameters.maxResults", request.query["maxResults"]) from None
            if size < 1:
                raise invalid("parameters.maxResults", request.query["maxResults"])
        chosen = [
            r
            for r in self._sorted(zone)
            if (name is None or r["name"] == name.lower()) and (rtype is None or r["type"] == rtype)
        ]
        start = _offset(request.query.get("pageToken"), len(chosen))
        body: JsonObject = {
            "kind": "dns#resourceRecordSetsListResponse",
            "rrsets": chosen[start : start + size],
        }
        if start + size < len(chosen):
            body["nextPageToken"] = base64.urlsafe_b64encode(f"offset:{start + size}".encode()).decode()
        return web.json_response(body)

    async def _get_rrset(self, request: web.Request) -> web.Response:
        zone = self._zone_of(request)
        name, rtype = request.match_info["name"].lower(), request.match_info["type"]
        rrset = zone.rrsets.get((name, rtype))
        if rrset is None:
            raise ApiError(
                404, "notFound", f"The 'parameters.name' resource named '{name} ({rtype})' does not exist."
            )
        return web.json_response(rrset)

    async def _create_change(self, request: web.Request) -> web.Response:
        zone = self._zone_of(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "parseError", "Parse Error") from None
        if not isinstance(body, dict):
            raise ApiError(400, "parseError", "Parse Error")
        return web.json_response(self._apply(zone, body))

    async def _get_change(self, request: web.Request) -> web.Response:
        zone = self._zone_of(request)
        change_id = request.match_info["change"]
        change = zone.changes.get(change_id)
        if change is None:
            raise ApiError(
                404, "notFound", f"The 'parameters.changeId' resource named '{change_id}' does not exist."
            )
        answer = dict(change, status="pending" if zone.pending.get(change_id, 0) > 0 else "done")
        if zone.pending.get(change_id, 0) > 0:
            zone.pending[change_id] -= 1
        return web.json_response(answer)

    # ------------------------------------------------------------------ the model

    def _find(self, project: str, ref: str) -> _Zone | None:
        return next((z for z in self._zones if z.project == project and ref in (z.name, z.id)), None)

    def _zone(self, project: str, ref: str) -> _Zone:
        zone = self._find(project, ref)
        if zone is None:
            raise ApiError(
                404, "notFound", f"The 'parameters.managedZone' resource named '{ref}' does not exist."
            )
        return zone

    def _zone_of(self, request: web.Request) -> _Zone:
        return self._zone(request.match_info["project"], request.match_info["zone"])

    @staticmethod
    def _sorted(zone: _Zone) -> list[JsonObject]:
        return [zone.rrsets[k] for k in sorted(zone.rrsets)]

    def _apply(self, zone: _Zone, body: JsonObject, per_change_limits: bool = True) -> JsonObject:
        """Validate the whole change against the zone, then commit it in one step (no await in between)."""
        additions, deletions = body.get("additions") or [], body.get("deletions") or []
        if not isinstance(additions, list) or not isinstance(deletions, list) or not (additions or deletions):
            raise ApiError(400, "required", "The 'entity.change' parameter is required but was missing.")
        if per_change_limits:
            self._check_limits(additions, deletions)
        added = [self._valid(zone, r, f"entity.change.additions[{i}]") for i, r in enumerate(additions)]
        deleted = [self._valid(zone, r, f"entity.change.deletions[{i}]") for i, r in enumerate(deletions)]
        after = dict(zone.rrsets)
        for i, rrset in enumerate(deleted):
            key = (rrset["name"], rrset["type"])
            where = f"entity.change.deletions[{i}]"
            if key not in after:
                raise ApiError(
                    404, "notFound", f"The '{where}' resource named '{_label(key)}' does not exist."
                )
            if _canonical(after[key]) != _canonical(rrset):
                raise ApiError(412, "conditionNotMet", f"Precondition not met for '{where}'")
            del after[key]
        for i, rrset in enumerate(added):
            key = (rrset["name"], rrset["type"])
            if key in after:
                where = f"entity.change.additions[{i}]"
                raise ApiError(
                    409, "alreadyExists", f"The resource '{where}' named '{_label(key)}' already exists"
                )
            after[key] = rrset
        self._check_zone(zone, after)
        change_id = str(len(zone.changes))
        change = {
            "kind": "dns#change",
            "id": change_id,
            "startTime": "2024-01-01T00:00:00.000Z",
            "status": "done",
            "additions": added,
            "deletions": [zone.rrsets[(r["name"], r["type"])] for r in deleted],
        }
        zone.rrsets = after
        zone.changes[change_id] = change
        if self.pending_polls > 0:
            zone.pending[change_id] = self.pending_polls
            return dict(change, status="pending")
        return change

    def _check_limits(self, additions: list[Any], deletions: list[Any]) -> None:
        limits = self.limits
        if len(additions) > limits.additions_per_change or len(deletions) > limits.deletions_per_change:
            raise ApiError(
                413, "quotaExceeded", "Quota exceeded for quota metric 'rrset changes per change'."
            )
        size = sum(len(data.encode()) for data in _all_rrdatas(additions + deletions))
        if size > limits.rrdata_bytes_per_change:
            raise ApiError(413, "quotaExceeded", "Quota exceeded for quota metric 'rrdata size per change'.")

    def _check_zone(self, zone: _Zone, rrsets: dict[Key, JsonObject]) -> None:
        if len(rrsets) > self.limits.rrsets_per_zone:
            raise ApiError(413, "quotaExceeded", "Quota exceeded for quota metric 'rrsets per managed zone'.")
        for required in ("SOA", "NS"):
            if (zone.dns_name, required) not in rrsets:
                raise ApiError(
                    400,
                    "invalid",
                    f"The zone apex '{zone.dns_name}' must keep its {required} resource record set.",
                )
        names = {name for name, _ in rrsets}
        for name in names:
            types = {t for n, t in rrsets if n == name}
            if "CNAME" in types and len(types) > 1:
                raise ApiError(
                    400,
                    "cnameResourceRecordSetConflict",
                    f"The CNAME at '{name}' conflicts with other records.",
                )

    def _valid(self, zone: _Zone, raw: object, where: str) -> JsonObject:
        """The rrset as the API stores and returns it, or the 400 the API answers for it."""
        if not isinstance(raw, dict):
            raise invalid(where, raw)
        name, rtype, ttl = raw.get("name"), raw.get("type"), raw.get("ttl")
        if not isinstance(name, str) or not name.endswith("."):
            raise invalid(f"{where}.name", name)
        name = name.lower()
        if name != zone.dns_name and not name.endswith("." + zone.dns_name):
            raise ApiError(
                400,
                "invalid",
                f"The resource record set '{where}' is invalid because the DNS name '{name}' "
                f"is not within the zone '{zone.dns_name}'.",
            )
        if rtype not in RECORD_TYPES:
            raise invalid(f"{where}.type", rtype)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 2**31 - 1:
            raise invalid(f"{where}.ttl", ttl)
        rrdatas, policy = raw.get("rrdatas"), raw.get("routingPolicy")
        if (rrdatas is None) == (policy is None):
            raise ApiError(
                400,
                "invalid",
                f"The resource record set '{where}' must contain either rrdatas or a routing policy, not both.",
            )
        rrset: JsonObject = {"kind": RRSET_KIND, "name": name, "type": rtype, "ttl": ttl}
        if rrdatas is not None:
            rrset["rrdatas"] = self._rrdatas(rtype, rrdatas, f"{where}.rrdatas")
        else:
            rrset["routingPolicy"] = self._policy(rtype, policy, f"{where}.routingPolicy")
        return rrset

    def _rrdatas(self, rtype: str, rrdatas: object, where: str) -> list[str]:
        if not isinstance(rrdatas, list) or not rrdatas or not all(isinstance(d, str) and d for d in rrdatas):
            raise invalid(where, rrdatas)
        if len(rrdatas) > self.limits.records_per_rrset:
            raise ApiError(
                413, "quotaExceeded", f"Quota exceeded for quota metric 'records per rrset' at '{where}'."
            )
        if rtype == "CNAME" and len(rrdatas) != 1:
            raise invalid(where, rrdatas)
        family = {"A": ipaddress.IPv4Address, "AAAA": ipaddress.IPv6Address}.get(rtype)
        for i, data in enumerate(rrdatas):
            if family is not None:
                try:
                    family(data)
                except ValueError:
                    raise invalid(f"{where}[{i}]", data) from None
        return list(rrdatas)

    def _policy(self, rtype: str, policy: object, where: str) -> JsonObject:
        if not isinstance(policy, dict):
            raise invalid(where, policy)
        kinds = [k for k in ("wrr", "geo", "primaryBackup") if policy.get(k) is not None]
        if len(kinds) != 1:
            raise ApiError(400, "invalid", f"'{where}' must set exactly one of wrr, geo and primaryBackup.")
        health_check = policy.get("healthCheck")
        if health_check is not None and not isinstance(health_check, str):
            raise invalid(f"{where}.healthCheck", health_check)
        out: JsonObject = {"kind": POLICY_KINDS[""]}
        if health_check:
            out["healthCheck"] = health_check
        kind = kinds[0]
        body = policy[kind]
        if kind == "wrr":
            out["wrr"] = self._items(rtype, body, f"{where}.wrr", "wrr", self._weighted, health_check)
        elif kind == "geo":
            out["geo"] = self._geo(rtype, body, f"{where}.geo", "geo", health_check)
        else:
            out["primaryBackup"] = self._primary_backup(rtype, body, f"{where}.primaryBackup", health_check)
        return out

    def _items(
        self,
        rtype: str,
        body: object,
        where: str,
        path: str,
        item: Callable[[JsonObject, str], JsonObject],
        health_check: str | None,
    ) -> JsonObject:
        if not isinstance(body, dict) or not isinstance(body.get("items"), list) or not body["items"]:
            raise invalid(f"{where}.items", body)
        items = []
        for i, raw in enumerate(body["items"]):
            here = f"{where}.items[{i}]"
            if not isinstance(raw, dict):
                raise invalid(here, raw)
            entry = item(raw, here)
            if raw.get("rrdatas") is not None:
                entry["rrdatas"] = self._rrdatas(rtype, raw["rrdatas"], f"{here}.rrdatas")
            if raw.get("healthCheckedTargets") is not None:
                targets = raw["healthCheckedTargets"]
                entry["healthCheckedTargets"] = self._targets(
                    rtype, targets, f"{here}.healthCheckedTargets", health_check
                )
            if "rrdatas" not in entry and "healthCheckedTargets" not in entry:
                raise ApiError(400, "invalid", f"'{here}' must set rrdatas or healthCheckedTargets.")
            items.append({"kind": POLICY_KINDS[f"{path}.items"], **entry})
        return {"kind": POLICY_KINDS[path], "items": items}

    @staticmethod
    def _weighted(raw: JsonObject, where: str) -> JsonObject:
        weight = raw.get("weight", 0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise invalid(f"{where}.weight", weight)
        return {"weight": float(weight)}

    @staticmethod
    def _located(raw: JsonObject, where: str) -> JsonObject:
        location = raw.get("location")
        if not isinstance(location, str) or not GCP_REGION.match(location):
            raise invalid(f"{where}.location", location)
        return {"location": location}

    def _geo(self, rtype: str, body: object, where: str, path: str, health_check: str | None) -> JsonObject:
        geo = self._items(rtype, body, where, path, self._located, health_check)
        locations = [item["location"] for item in geo["items"]]
        if len(set(locations)) != len(locations):
            raise ApiError(400, "invalid", f"'{where}.items' names a location more than once.")
        assert isinstance(body, dict)  # _items checked it
        fencing = body.get("enableFencing")
        if fencing is not None:
            if not isinstance(fencing, bool):
                raise invalid(f"{where}.enableFencing", fencing)
            geo["enableFencing"] = fencing
        return geo

    def _primary_backup(self, rtype: str, body: object, where: str, health_check: str | None) -> JsonObject:
        if not isinstance(body, dict):
            raise invalid(where, body)
        out: JsonObject = {
            "kind": POLICY_KINDS["primaryBackup"],
            "primaryTargets": self._targets(
                rtype, body.get("primaryTargets"), f"{where}.primaryTargets", health_check
            ),
            "backupGeoTargets": self._geo(
                rtype,
                body.get("backupGeoTargets"),
                f"{where}.backupGeoTargets",
                "primaryBackup.backupGeoTargets",
                health_check,
            ),
        }
        trickle = body.get("trickleTraffic")
        if trickle is not None:
            if isinstance(trickle, bool) or not isinstance(trickle, int | float) or not 0 <= trickle <= 1:
                raise invalid(f"{where}.trickleTraffic", trickle)
            out["trickleTraffic"] = float(trickle)
        return out

    def _targets(self, rtype: str, targets: object, where: str, health_check: str | None) -> JsonObject:
        """Health-checked targets: external endpoints (public zones, need the policy's healthCheck) or
        internal load balancers (private zones), one kind only."""
        if not isinstance(targets, dict):
            raise invalid(where, targets)
        external, internal = targets.get("externalEndpoints"), targets.get("internalLoadBalancers")
        if (external is None) == (internal is None):
            raise ApiError(
                400, "invalid", f"'{where}' must set externalEndpoints or internalLoadBalancers, not both."
            )
        if external is not None:
            if not health_check:
                raise ApiError(
                    400, "invalid", f"'{where}.externalEndpoints' need the routing policy's healthCheck."
                )
            return {"externalEndpoints": self._rrdatas(rtype, external, f"{where}.externalEndpoints")}
        if not isinstance(internal, list) or not internal or not all(isinstance(t, dict) for t in internal):
            raise invalid(f"{where}.internalLoadBalancers", internal)
        return {"internalLoadBalancers": copy.deepcopy(internal)}


def _label(key: Key) -> str:
    return f"{key[0]} ({key[1]})"


def _offset(token: str | None, total: int) -> int:
    if token is None:
        return 0
    try:
        prefix, _, number = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        offset = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid("parameters.pageToken", token) from None
    if prefix != "offset" or not 0 <= offset <= total:
        raise invalid("parameters.pageToken", token)
    return offset


def _all_rrdatas(node: object) -> list[str]:
    """Every rrdata string anywhere in a list of rrsets (routing items included)."""
    if isinstance(node, list):
        return [data for child in node for data in _all_rrdatas(child)]
    if isinstance(node, dict):
        found = [d for d in node.get("rrdatas") or [] if isinstance(d, str)]
        return found + [d for k, v in node.items() if k != "rrdatas" for d in _all_rrdatas(v)]
    return []


def _canonical(node: object) -> object:
    """What a deletion is compared on, both sides already rebuilt by _valid (kinds stamped, numbers as the API
    types them): proto3 equality, where a field at its default (enableFencing false, trickleTraffic 0) equals
    an absent one, with rrdatas as a set."""
    if isinstance(node, dict):
        return {
            key: sorted(value) if key in ("rrdatas", "externalEndpoints") else _canonical(value)
            for key, value in node.items()
            if value not in (False, 0)
        }
    if isinstance(node, list):
        return [_canonical(v) for v in node]
    return node
