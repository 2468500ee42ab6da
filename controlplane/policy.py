"""Routing policy: YAML -> validated, frozen Policy model; every problem reported as FILE:LINE:COL."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from controlplane.errors import InvalidInput

Seconds = Annotated[float, Field(gt=0, le=3600)]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
DnsName = Annotated[
    str, Field(min_length=1, max_length=253, pattern=r"^([a-zA-Z0-9-]{1,63}\.)+[a-zA-Z]{2,63}\.?$")
]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]

_BUCKET_FORMS = "s3://bucket/prefix, gs://bucket/prefix or file:///absolute/path"
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class BucketUrl:
    """Where a bucket's objects live. For file, `bucket` is empty and `prefix` the absolute folder."""

    scheme: Literal["s3", "gs", "file"]
    bucket: str
    prefix: str

    def key(self, *parts: str) -> str:
        """The object key (for file, the absolute path) of `parts` under the prefix."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.prefix}"
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")


def _bucket_name_problem(scheme: str, name: str) -> str | None:
    if scheme == "s3":
        if not _S3_BUCKET.match(name) or ".." in name:
            return "an S3 bucket name is 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
    elif not _GCS_BUCKET.match(name) or ".." in name or any(len(part) > 63 for part in name.split(".")):
        return (
            "a GCS bucket name is 3-63 characters (222 with dots, 63 between dots) of a-z, 0-9, '.', '-' and '_', "
            "starting and ending with a letter or digit"
        )
    elif name.startswith("goog"):
        return "a GCS bucket name may not start with 'goog'"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return None
    return "a bucket name may not be an IP address"


def parse_bucket_url(value: str) -> BucketUrl:
    """A bucket URL as the policy allows it; ValueError saying what is wrong otherwise."""
    parts = urlsplit(value)
    scheme = parts.scheme
    if scheme not in ("s3", "gs", "file") or not value.startswith(f"{scheme}://"):
        raise ValueError(f"must be a bucket URL: {_BUCKET_FORMS}")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("a bucket URL has no query or fragment")
    path = parts.path.rstrip("/")
    # file:// folds '.', '..' and '//' away and object stores do not: the same URL must mean the same objects.
    if any(segment in ("", ".", "..") for segment in path.split("/")[1:]):
        raise ValueError("a bucket URL's path has no empty, '.' or '..' segments")
    if scheme == "file":
        if parts.netloc:
            raise ValueError("a file URL has no host: file:///absolute/path (three slashes)")
        if not path:
            raise ValueError("a file URL names a folder other than /: file:///absolute/path")
        return BucketUrl("file", "", path)
    if (problem := _bucket_name_problem(scheme, parts.netloc)) is not None:
        raise ValueError(problem)
    return BucketUrl(cast(Literal["s3", "gs"], scheme), parts.netloc, path.removeprefix("/"))


def _bucket_url(value: str) -> str:
    return str(parse_bucket_url(value))


BucketUrlText = Annotated[
    str, AfterValidator(_bucket_url), Field(description=f"A bucket URL: {_BUCKET_FORMS}")
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Mode(StrEnum):
    ACTIVE_ACTIVE = "active-active"
    ACTIVE_PASSIVE = "active-passive"


class AllDown(StrEnum):
    """What a client group gets when none of its allowed regions is healthy."""

    FAIL_OPEN = "fail-open"
    FAIL_CLOSED = "fail-closed"
    FREEZE = "freeze"


class Region(_Frozen):
    name: Name
    endpoint: HttpUrl = Field(
        description="Base URL of the OpenAI-compatible server, e.g. http://10.0.0.5:8000"
    )
    address: str | None = Field(
        default=None, description="IP address DNS answers with; defaults to the endpoint's host"
    )
    jurisdiction: Annotated[str, Field(min_length=1, max_length=32)]
    capacity: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    priority: Annotated[int, Field(ge=0, le=1000)] = 100
    model: str | None = Field(default=None, description="Model id this region must serve (inference probe)")
    metrics_url: HttpUrl | None = Field(
        default=None, description="Prometheus metrics URL; defaults to endpoint"
    )
    bucket: BucketUrlText | None = Field(
        default=None, description="Where this region's servers load model weights from"
    )

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("must be an IPv4 or IPv6 address") from None
        return value

    @property
    def dns_address(self) -> str:
        return self.address or (urlsplit(self.endpoint).hostname or "")

    @property
    def bucket_url(self) -> BucketUrl | None:
        return None if self.bucket is None else parse_bucket_url(self.bucket)


class LivenessProbe(_Frozen):
    path: str = "/health"
    expect_status: Annotated[int, Field(ge=100, le=599)] = 200
    body_match: str | None = Field(default=None, description="Substring the body must contain")


class InferenceProbe(_Frozen):
    enabled: bool = True
    interval: Seconds = 5.0
    timeout: Seconds = 10.0
    model: str = Field(default="", description="Expected model id; a region's own `model` overrides it")
    prompt: str = "Reply with the single word: ok"
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 8


class MetricsProbe(_Frozen):
    enabled: bool = True
    interval: Seconds = 5.0
    path: str = "/metrics"


class ProbeSettings(_Frozen):
    interval: Seconds = Field(default=1.0, description="Liveness probe period per region")
    fast_interval: Seconds = Field(default=0.2, description="Period while a region is changing state")
    timeout: Seconds = 2.0
    jitter: Annotated[float, Field(ge=0, le=0.5)] = Field(
        default=0.1, description="Fraction of the interval by which each probe start is randomly spread"
    )
    tls_verify: bool = True
    liveness: LivenessProbe = LivenessProbe()
    inference: InferenceProbe = InferenceProbe()
    metrics: MetricsProbe = MetricsProbe()


class HealthSettings(_Frozen):
    rise: Annotated[int, Field(ge=1, le=100)] = 3
    fall: Annotated[int, Field(ge=1, le=100)] = 3
    stale_after: Seconds = Field(default=10.0, description="A probe kind with no result this old is unknown")
    ttft_target: Seconds = Field(
        default=1.0, description="Time to first token at which the score starts to fall"
    )
    queue_target: Annotated[float, Field(gt=0)] = Field(
        default=32, description="Waiting requests at which the score starts to fall"
    )
    kv_cache_target: Annotated[float, Field(gt=0, le=1)] = 0.9
    min_score: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.1, description="Floor of a healthy region's score, so a slow region keeps a little traffic"
    )


class Continent(StrEnum):
    """Route 53's continent codes."""

    AF = "AF"
    AN = "AN"
    AS = "AS"
    EU = "EU"
    NA = "NA"
    OC = "OC"
    SA = "SA"


# ISO 3166-1 alpha-2 codes as assigned (249, Debian iso-codes 4.18): Route 53's country codes.
_ISO_3166_ALPHA2 = (
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT "
    "BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH "
    "ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT "
    "HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS "
    "LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI "
    "NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG "
    "SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG "
    "UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW"
)
ISO_COUNTRIES = frozenset(_ISO_3166_ALPHA2.split())


def _unquoted(value: object) -> object:
    # YAML 1.1, which PyYAML reads, takes a bare NO (Norway) for false.
    if isinstance(value, bool):
        raise ValueError('YAML read this as a boolean: quote the country code, e.g. "NO"')
    return value


def _country(code: str) -> str:
    if code not in ISO_COUNTRIES:
        raise ValueError(
            "must be an assigned ISO 3166-1 alpha-2 country code in capitals, such as 'GB' (not 'UK'), "
            "'CH' or 'US'; policies/schema.json lists all 249"
        )
    return code


Country = Annotated[
    str,
    BeforeValidator(_unquoted),
    AfterValidator(_country),
    WithJsonSchema({"type": "string", "enum": sorted(ISO_COUNTRIES)}),
]
GcpRegion = Annotated[str, Field(pattern=r"^[a-z]+-[a-z]+[0-9]+$", description="e.g. europe-west1")]
AwsRegion = Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$", description="e.g. eu-west-1")]


class Geo(_Frozen):
    """Where the cloud's DNS sends a resolver to this group: by its location, as the cloud sees it."""

    continents: tuple[Continent, ...] = Field(default=(), description="Route 53 continent codes")
    countries: tuple[Country, ...] = Field(default=(), description="ISO 3166-1 alpha-2 codes (Route 53)")
    gcp_regions: tuple[GcpRegion, ...] = Field(default=(), description="Cloud DNS geo routing locations")

    @model_validator(mode="after")
    def _somewhere(self) -> Geo:
        if not (self.continents or self.countries or self.gcp_regions):
            raise ValueError("names no place; give continents, countries or gcp_regions")
        return self


class ClientGroup(_Frozen):
    name: Name
    sources: tuple[str, ...] = Field(default=(), description="CIDRs of client addresses in this group")
    geo: Geo | None = Field(default=None, description="Locations whose resolvers the cloud's DNS sends here")
    allowed_jurisdictions: tuple[Annotated[str, Field(min_length=1)], ...] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{_value(cidr)} is not a CIDR network (e.g. 10.0.0.0/8)") from exc
        return value


def _version(value: object) -> object:
    # YAML reads a bare 2026-11-01 as a date and 1.10 as the float 1.1: neither is the version meant.
    if isinstance(value, bool | int | float | date):
        raise ValueError(f'YAML read this as a {type(value).__name__}: quote the version, e.g. "{value}"')
    return value


def _path_segment(value: str) -> str:
    if "/" in value or ".." in value or value == "." or not value.isprintable():
        raise ValueError("is one path segment: no '/', no '..', not '.', no control characters")
    return value


# The objects beside a model's version folders in a bucket (weights/manifest.py CURRENT_NAME,
# weights/retention.py HISTORY_NAME, weights/lease.py LEASE_NAME): a version folder of one of these names
# would be taken for them. Compared without case, as a folder on a case-insensitive disk would.
RESERVED_VERSIONS = frozenset({"CURRENT", "HISTORY", "LEASE"})


def _not_reserved(value: str) -> str:
    if value.upper() in RESERVED_VERSIONS:
        raise ValueError(
            f"is not one of {', '.join(sorted(RESERVED_VERSIONS))}: the bucket keeps those beside the versions"
        )
    return value


Version = Annotated[
    str,
    Field(min_length=1, max_length=128),
    BeforeValidator(_version),
    AfterValidator(_path_segment),
    AfterValidator(_not_reserved),
]
Jurisdiction = Annotated[str, Field(min_length=1, max_length=32)]


class Model(_Frozen):
    """Weights synced from `source` to the bucket of every region serving a service that uses them."""

    name: Name
    source: BucketUrlText = Field(description="Holds <prefix>/<name>/<version>/...")
    version: Version = Field(description="The version every region serving this model must hold")
    jurisdictions: Annotated[tuple[Jurisdiction, ...], Field(min_length=1)] | None = Field(
        default=None, description="The only jurisdictions a copy may be stored in; anywhere if absent"
    )

    @property
    def source_url(self) -> BucketUrl:
        return parse_bucket_url(self.source)

    def may_store_in(self, jurisdiction: str) -> bool:
        return self.jurisdictions is None or jurisdiction in self.jurisdictions


# Well below the promotion history's length (weights/retention.py MAX_HISTORY), so a version that drops off
# its end was collectable long before and no leftover folder is forgotten.
MAX_KEEP_VERSIONS = 16


class SyncSettings(_Frozen):
    interval: Annotated[float, Field(gt=0, le=86400)] = Field(
        default=300.0, description="Seconds between the daemon's weight syncs"
    )
    concurrency: Annotated[int, Field(ge=1, le=64)] = Field(default=8, description="Transfers at once")
    keep_versions: Annotated[int, Field(ge=0, le=MAX_KEEP_VERSIONS)] = Field(
        default=1,
        description=(
            "Versions kept in a region's bucket besides the current one, for rollback: the ones most recently"
            " current before it. Older ones that were once current are deleted after a promotion; a version"
            " never current there (perhaps being copied by another syncer) and the policy's version never are"
        ),
    )


class Service(_Frozen):
    name: Name
    dns_name: DnsName
    ttl: Annotated[int, Field(ge=1, le=86400)] = 30
    mode: Mode = Mode.ACTIVE_ACTIVE
    regions: tuple[Name, ...] = Field(min_length=1)
    max_shift: Annotated[int, Field(ge=1, le=100)] = Field(
        default=25, description="Most percentage points a live region's weight may move per second"
    )
    slow_start: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=30.0, description="Seconds over which a recovered region ramps to its full weight"
    )
    trickle: Annotated[int, Field(ge=0, le=50)] = Field(
        default=0, description="Percent kept on the first healthy backup in active-passive mode"
    )
    when_all_down: AllDown = AllDown.FAIL_CLOSED
    model: Name | None = Field(
        default=None, description="A models entry: regions lacking its verified version get no traffic"
    )


class LocalDnsProvider(_Frozen):
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 5353
    zone: str = Field(description="Zone this server is authoritative for, e.g. llm.internal")
    ecs: bool = Field(
        default=True, description="Honour the EDNS client subnet option to pick the client group"
    )


class HaproxyProvider(_Frozen):
    enabled: bool = True
    socket: str = Field(description="Runtime API: a unix socket path or host:port")
    service: Name
    client_group: Name
    backend: str
    servers: dict[Name, str] = Field(description="Region name -> HAProxy server name in the backend")


Owner = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,31}$",
        description="This plane's ownership id: it changes only records that carry it",
    ),
]
DeleteShare = Annotated[float, Field(ge=0, le=1)]
_DELETE_SHARE = Field(
    default=0.34, description="Most of the owned records one change set may delete unless forced"
)


def _zone_name(zone: str) -> str:
    return zone.rstrip(".").lower()


def in_zone(dns_name: str, zone: str) -> bool:
    """Whether a name lies in a zone (its apex included); case and a final dot do not matter."""
    name, zone = _zone_name(dns_name), _zone_name(zone)
    return name == zone or name.endswith("." + zone)


class Route53Settings(_Frozen):
    enabled: bool = True
    zone: Annotated[DnsName, AfterValidator(_zone_name)] | None = Field(
        default=None, description="Hosted zone found by name; or give hosted_zone_id"
    )
    hosted_zone_id: Annotated[str, Field(pattern=r"^[A-Z0-9]{1,32}$")] | None = Field(
        default=None, description="e.g. Z1D633PJN98FT9; or give zone"
    )
    endpoint_url: HttpUrl | None = Field(default=None, description="An emulator such as moto_server")
    owner: Owner
    max_delete_share: DeleteShare = _DELETE_SHARE

    @model_validator(mode="after")
    def _one_zone(self) -> Route53Settings:
        if (self.zone is None) == (self.hosted_zone_id is None):
            raise ValueError("give exactly one of zone and hosted_zone_id")
        return self

    @property
    def instance_name(self) -> str:
        return f"route53:{self.zone or self.hosted_zone_id}"


class CloudDnsSettings(_Frozen):
    enabled: bool = True
    project: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")]
    managed_zone: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
    api_endpoint: HttpUrl | None = Field(default=None, description="A fake of the Cloud DNS v1 API")
    owner: Owner
    max_delete_share: DeleteShare = _DELETE_SHARE

    @property
    def instance_name(self) -> str:
        return f"cloud_dns:{self.project}/{self.managed_zone}"


class GlobalAcceleratorSettings(_Frozen):
    enabled: bool = True
    endpoint_url: HttpUrl | None = None
    listener_arn: Annotated[
        str,
        Field(
            pattern=r"^arn:aws:globalaccelerator::[0-9]{12}:accelerator/[A-Za-z0-9-]{1,64}/listener/[A-Za-z0-9-]{1,64}$"
        ),
    ]
    service: Name
    client_group: Name
    endpoint_groups: dict[Name, AwsRegion] = Field(
        min_length=1, description="Region name -> the AWS region of its endpoint group"
    )

    @property
    def instance_name(self) -> str:
        return f"global_accelerator:{self.listener_arn.rsplit('/', 1)[1]}"


CloudSettings = Route53Settings | CloudDnsSettings | GlobalAcceleratorSettings
_S = TypeVar("_S", bound=_Frozen)


def _shape(value: object) -> str | None:
    if isinstance(value, list | tuple):
        return "list"
    return "mapping" if isinstance(value, dict | BaseModel) else None


# The tag pydantic puts in an error's location is not in the file; parse_policy drops it.
_TAGS = ("mapping", "list")
_OneOrMany = Annotated[
    Annotated[_S, Tag(_TAGS[0])] | Annotated[tuple[_S, ...], Tag(_TAGS[1]), Field(min_length=1)],
    Discriminator(
        _shape,
        custom_error_type="one_or_many",
        custom_error_message="must be a mapping or a list of mappings",
    ),
]


def _as_tuple(value: _S | tuple[_S, ...] | None) -> tuple[_S, ...]:
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


class Providers(_Frozen):
    localdns: LocalDnsProvider | None = None
    haproxy: HaproxyProvider | None = None
    memory: bool = Field(default=False, description="In-process reference provider (tests)")
    route53: _OneOrMany[Route53Settings] | None = None
    cloud_dns: _OneOrMany[CloudDnsSettings] | None = None
    global_accelerator: _OneOrMany[GlobalAcceleratorSettings] | None = None

    @property
    def route53_list(self) -> tuple[Route53Settings, ...]:
        return _as_tuple(self.route53)

    @property
    def cloud_dns_list(self) -> tuple[CloudDnsSettings, ...]:
        return _as_tuple(self.cloud_dns)

    @property
    def global_accelerator_list(self) -> tuple[GlobalAcceleratorSettings, ...]:
        return _as_tuple(self.global_accelerator)


_CLOUD_KEYS = ("route53", "cloud_dns", "global_accelerator")


class Policy(_Frozen):
    version: Literal[1] = 1
    regions: tuple[Region, ...] = Field(min_length=1)
    client_groups: tuple[ClientGroup, ...] = Field(min_length=1)
    default_client_group: Name = Field(description="Group of clients that no group's sources match")
    services: tuple[Service, ...] = Field(min_length=1)
    models: tuple[Model, ...] = ()
    sync: SyncSettings = SyncSettings()
    probes: ProbeSettings = ProbeSettings()
    health: HealthSettings = HealthSettings()
    providers: Providers = Providers()

    @cached_property
    def _regions_by_name(self) -> dict[str, Region]:
        return {r.name: r for r in self.regions}

    def region(self, name: str) -> Region:
        return self._regions_by_name[name]

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def client_group(self, name: str) -> ClientGroup:
        return next(g for g in self.client_groups if g.name == name)

    def model(self, name: str) -> Model:
        return next(m for m in self.models if m.name == name)

    def model_regions(self, model: Model) -> tuple[Region, ...]:
        """Regions serving a service that uses the model, in policy order, including those it may not
        be stored in (`model.may_store_in(region.jurisdiction)` tells them apart)."""
        serving = {n for s in self.services if s.model == model.name for n in s.regions}
        return tuple(r for r in self.regions if r.name in serving)

    @cached_property
    def _allowed(self) -> dict[tuple[str, str], tuple[Region, ...]]:
        by_name = self._regions_by_name
        # Equal region sets are one shared tuple, so callers may memoise on identity.
        interned: dict[tuple[str, ...], tuple[Region, ...]] = {}
        allowed: dict[tuple[str, str], tuple[Region, ...]] = {}
        for s in self.services:
            for g in self.client_groups:
                names = tuple(n for n in s.regions if by_name[n].jurisdiction in g.allowed_jurisdictions)
                allowed[(s.name, g.name)] = interned.setdefault(names, tuple(by_name[n] for n in names))
        return allowed

    def allowed_regions(self, service: Service, group: ClientGroup) -> tuple[Region, ...]:
        """The service's regions a group may be sent to: residency is decided here and only here."""
        return self._allowed[(service.name, group.name)]


# ---------------------------------------------------------------- loading, with positions

# Far above any real policy (the demo is 1.6 KB; 10,000 regions written like the demo are 1.4 MB and
# 120,000 nodes) yet low enough that a hostile file costs at most a few seconds and ~150 MB to refuse.
MAX_POLICY_BYTES = 4 << 20
MAX_NODES = 250_000
MAX_ALIAS_NODES = 100_000
MAX_DEPTH = 32
MAX_PROBLEMS = 100
_SHOWN = 80  # characters of a value from the file that a message quotes
_SAID = 200  # characters of a reason (a library's message, which may quote the value itself)
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"


def _cut(text: str, limit: int = _SHOWN) -> str:
    """Text from the file as it may appear in a message: a huge value never reaches a log line whole."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _value(value: object) -> str:
    return _cut(repr(value))


def _field(loc: Iterable[str | int]) -> str:
    return ".".join(_cut(str(p)) for p in loc) or "policy"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy file, at a position a person can jump to."""

    file: str
    line: int
    column: int
    message: str
    warning: bool = False  # allowed, but probably not what was meant

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {'warning: ' if self.warning else ''}{self.message}"


class PolicyError(InvalidInput):
    """A policy file that cannot be used; carries every problem found (up to MAX_PROBLEMS), not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        if len(problems) > MAX_PROBLEMS:
            first = problems[MAX_PROBLEMS]
            more = f"... and {len(problems) - MAX_PROBLEMS:,} more problems"
            problems = [*problems[:MAX_PROBLEMS], Problem(first.file, first.line, first.column, more)]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


Path_ = tuple[str | int, ...]


class _Alias(yaml.Node):
    """Where an alias was written; the composer alone would hand back the anchored node and lose that."""

    def __init__(self, target: yaml.Node, mark: yaml.Mark | None) -> None:
        super().__init__(target.tag, target.value, mark, mark)
        self.target = target


class _Composer(yaml.SafeLoader):
    """SafeLoader's composer with bounds: node count and depth, checked as events arrive."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        mark = cast(yaml.Mark, event.start_mark)  # the pure-Python parser always sets one
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_NODES:,} values; a policy needs far fewer", mark
            )
        if isinstance(event, yaml.AliasEvent):
            target = super().compose_node(parent, index)
            assert target is not None  # an alias to nothing is a ComposerError
            return _Alias(target, mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, _TOO_DEEP, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    def __init__(self, mark: yaml.Mark, message: str) -> None:
        self.mark = mark
        self.message = message


_COLLECTION_TAGS = {
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
}


def _tag(tag: str) -> str:
    return _cut(tag.replace("tag:yaml.org,2002:", "!!"))


class _Builder:
    """Builds plain data from composed nodes, remembering where every value started.

    Aliases are expanded by reference, so a few lines can stand for billions of values: every node
    built through an alias counts against MAX_ALIAS_NODES.
    """

    def __init__(self) -> None:
        self.marks: dict[Path_, yaml.Mark] = {}
        self.dupes: list[Path_] = []
        self._scalars = yaml.constructor.SafeConstructor()
        self._expanded = 0

    def build(
        self,
        node: yaml.Node,
        path: Path_ = (),
        parents: frozenset[int] = frozenset(),
        alias: yaml.Mark | None = None,
    ) -> Any:
        here = node.start_mark
        if isinstance(node, _Alias):
            alias = alias or here  # the outermost alias is the one written in the text being expanded
            node = node.target
        self.marks[path] = here
        if alias is not None:
            self._expanded += 1
            if self._expanded > MAX_ALIAS_NODES:
                raise _Refused(
                    alias, f"invalid YAML: too many alias expansions (more than {MAX_ALIAS_NODES:,} values)"
                )
        if id(node) in parents:
            raise _Refused(here, "invalid YAML: an alias refers to itself")
        if len(path) >= MAX_DEPTH:
            raise _Refused(alias or here, f"invalid YAML: {_TOO_DEEP}")
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if node.tag not in _COLLECTION_TAGS:
            raise _Refused(here, f"invalid YAML: tag {_tag(node.tag)} has no use in a policy")
        parents = parents | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), parents, alias) for i, item in enumerate(node.value)]
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            if key in out:
                self.marks[(*path, key)] = key_node.start_mark
                self.dupes.append((*path, key))
                continue
            out[key] = self.build(value_node, (*path, key), parents, alias)
            self.marks[(*path, key, "__key__")] = key_node.start_mark
        return out

    def _key(self, node: yaml.Node) -> str:
        target = node.target if isinstance(node, _Alias) else node
        if not isinstance(target, yaml.ScalarNode):
            raise _Refused(
                node.start_mark, "invalid YAML: a key must be a plain value, not a list or mapping"
            )
        return str(self._scalar(target))

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        try:
            return self._scalars.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:  # e.g. !foo or !!python/...: no use in a policy
            reason = exc.problem or str(exc)
        except (ValueError, OverflowError) as exc:  # 2001-02-30, a 5,000-digit int, !!int abc
            reason = f"{_value(node.value)} is not a valid {_tag(node.tag)}: {exc}"
        except (TypeError, AttributeError, LookupError):  # !!timestamp foo, "!!int ''" trip PyYAML itself
            reason = f"{_value(node.value)} is not a valid {_tag(node.tag)}"
        raise _Refused(node.start_mark, f"invalid YAML: {_cut(reason, _SAID)}")


def _mark_for(loc: Path_, marks: dict[Path_, yaml.Mark], at_key: bool = False) -> yaml.Mark | None:
    if at_key and (mark := marks.get((*loc, "__key__"))) is not None:
        return mark
    for end in range(len(loc), -1, -1):
        if (mark := marks.get(loc[:end])) is not None:
            return mark
    return None


def _file_path(loc: Path_) -> Path_:
    """An error's location as written in the file: without the tag of a one-or-many provider key."""
    if len(loc) > 2 and loc[0] == "providers" and loc[1] in _CLOUD_KEYS and loc[2] in _TAGS:
        return (*loc[:2], *loc[3:])
    return loc


def _describe(error: Any) -> str:
    field = _field(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{field}: unknown field"
    if kind == "missing":
        return f"{field}: required field is missing"
    if kind == "enum" and "expected" in ctx:
        return f"{field}: must be one of {ctx['expected']}, got {_value(error.get('input'))}"
    if kind == "literal_error" and "expected" in ctx:
        return f"{field}: must be {ctx['expected']}, got {_value(error.get('input'))}"
    msg = _cut(str(error["msg"]).removeprefix("Value error, "), _SAID)
    return (
        f"{field}: {msg}, got {_value(error.get('input'))}"
        if not isinstance(error.get("input"), dict | list)
        else f"{field}: {msg}"
    )


def _cross_check(policy: Policy) -> Iterator[tuple[Path_, str]]:
    """Checks that span fields: references, uniqueness, residency reachability."""
    named: dict[str, list[str]] = {
        "regions": [r.name for r in policy.regions],
        "client_groups": [g.name for g in policy.client_groups],
        "services": [s.name for s in policy.services],
        "models": [m.name for m in policy.models],
    }
    for collection, names in named.items():
        counts = Counter(names)
        for i, name in enumerate(names):
            if counts[name] > 1:
                yield (collection, i, "name"), f"{collection}.{i}.name: duplicate name {_value(name)}"
    dns_counts = Counter(s.dns_name.rstrip(".").lower() for s in policy.services)
    region_names = {r.name for r in policy.regions}
    jurisdictions = {r.jurisdiction for r in policy.regions}
    for i, service in enumerate(policy.services):
        if dns_counts[service.dns_name.rstrip(".").lower()] > 1:
            yield (
                ("services", i, "dns_name"),
                f"services.{i}.dns_name: {_value(service.dns_name)} is used by another service",
            )
        for j, name in enumerate(service.regions):
            if name not in region_names:
                yield (
                    ("services", i, "regions", j),
                    f"services.{i}.regions.{j}: unknown region {_value(name)}; defined: {_value(sorted(region_names))}",
                )
        if len(set(service.regions)) != len(service.regions):
            yield ("services", i, "regions"), f"services.{i}.regions: a region is listed twice"
    yield from _check_models(policy)
    group_names = {g.name for g in policy.client_groups}
    if policy.default_client_group not in group_names:
        yield (
            ("default_client_group",),
            f"default_client_group: unknown client group {_value(policy.default_client_group)}; defined: {_value(sorted(group_names))}",
        )
    for i, group in enumerate(policy.client_groups):
        if not jurisdictions & set(group.allowed_jurisdictions):
            yield (
                ("client_groups", i, "allowed_jurisdictions"),
                f"client_groups.{i}.allowed_jurisdictions: no region is in {_value(list(group.allowed_jurisdictions))}; "
                f"regions are in {_value(sorted(jurisdictions))}",
            )
    probes = policy.probes
    periods = {"probes.interval": probes.interval}
    if probes.inference.enabled:
        periods["probes.inference.interval"] = probes.inference.interval
    for field, period in periods.items():
        if policy.health.stale_after <= period:
            yield (
                ("health", "stale_after"),
                f"health.stale_after: {policy.health.stale_after:g}s must exceed {field} ({period:g}s), "
                "or every region turns unknown between two probes",
            )
    yield from _check_providers(policy, region_names, group_names)


def _check_models(policy: Policy) -> Iterator[tuple[Path_, str]]:
    """A service's model must exist, and every region that may hold a copy needs a bucket to hold it in."""
    model_names = [m.name for m in policy.models]
    for i, service in enumerate(policy.services):
        if service.model is not None and service.model not in model_names:
            yield (
                ("services", i, "model"),
                f"services.{i}.model: unknown model {_value(service.model)}; defined: {_value(sorted(set(model_names)))}",
            )
    needs: dict[str, list[str]] = {}
    for model in policy.models:
        for region in policy.model_regions(model):
            if region.bucket is None and model.may_store_in(region.jurisdiction):
                needs.setdefault(region.name, []).append(model.name)
    for k, region in enumerate(policy.regions):
        if region.name in needs:
            yield (
                ("regions", k),
                f"regions.{k}: serves model(s) {_value(needs[region.name])} but has no bucket; "
                f"give bucket: {_BUCKET_FORMS}",
            )


def _residency_warnings(policy: Policy) -> Iterator[tuple[Path_, str]]:
    """A region serving a service whose model may not be stored in its jurisdiction: allowed, but sync
    never copies the model there and that region gets no traffic for the service."""
    models = {m.name: m for m in policy.models}
    regions = {r.name: r for r in policy.regions}
    for i, service in enumerate(policy.services):
        if (model := models.get(service.model or "")) is None:
            continue
        for j, name in enumerate(service.regions):
            region = regions.get(name)
            if region is not None and not model.may_store_in(region.jurisdiction):
                yield (
                    ("services", i, "regions", j),
                    f"services.{i}.regions.{j}: model {_value(model.name)} may be stored only in "
                    f"{_value(list(model.jurisdictions or ()))}, not in {_value(name)} "
                    f"(jurisdiction {_value(region.jurisdiction)}): sync will not copy it there and "
                    f"{_value(name)} gets no traffic for service {_value(service.name)}",
                )


def _check_geo(policy: Policy) -> Iterator[tuple[Path_, str]]:
    """A place in two groups' geo would send one resolver to either group: refused, naming both."""
    seen: dict[tuple[str, str], str] = {}
    for i, group in enumerate(policy.client_groups):
        if group.geo is None:
            continue
        places = {
            "continents": group.geo.continents,
            "countries": group.geo.countries,
            "gcp_regions": group.geo.gcp_regions,
        }
        for kind, values in places.items():
            for j, value in enumerate(values):
                field = f"client_groups.{i}.geo.{kind}.{j}"
                first = seen.setdefault((kind, value), group.name)
                if first != group.name:
                    yield (
                        ("client_groups", i, "geo", kind, j),
                        f"{field}: {_value(str(value))} is in the geo of client groups {_value(first)} and "
                        f"{_value(group.name)}; a resolver's location must lead to one group",
                    )
                elif value in values[:j]:
                    yield (
                        ("client_groups", i, "geo", kind, j),
                        f"{field}: {_value(str(value))} is listed twice",
                    )


def _cloud_instances(providers: Providers) -> Iterator[tuple[Path_, CloudSettings]]:
    """Each cloud provider instance with the path it was written at (a single mapping or a list item)."""
    for key in _CLOUD_KEYS:
        value: CloudSettings | tuple[CloudSettings, ...] | None = getattr(providers, key)
        if isinstance(value, tuple):
            yield from ((("providers", key, i), item) for i, item in enumerate(value))
        elif value is not None:
            yield ("providers", key), value


def _check_target(
    policy: Policy, base: Path_, service: str, group: str, group_names: set[str]
) -> Iterator[tuple[Path_, str]]:
    """A provider's `service` and `client_group` must name ones the policy defines."""
    service_names = sorted(s.name for s in policy.services)
    if service not in service_names:
        loc = (*base, "service")
        yield loc, f"{_field(loc)}: unknown service {_value(service)}; defined: {_value(service_names)}"
    if group not in group_names:
        loc = (*base, "client_group")
        yield (
            loc,
            f"{_field(loc)}: unknown client group {_value(group)}; defined: {_value(sorted(group_names))}",
        )


def _check_global_accelerator(
    policy: Policy, base: Path_, ga: GlobalAcceleratorSettings, region_names: set[str], group_names: set[str]
) -> Iterator[tuple[Path_, str]]:
    yield from _check_target(policy, base, ga.service, ga.client_group, group_names)
    service = next((s for s in policy.services if s.name == ga.service), None)
    group = next((g for g in policy.client_groups if g.name == ga.client_group), None)
    allowed = None if service is None or group is None else policy.allowed_regions(service, group)
    aws_regions = Counter(ga.endpoint_groups.values())
    for region, aws_region in ga.endpoint_groups.items():
        loc = (*base, "endpoint_groups", region)
        field = _field(loc)
        if region not in region_names:
            yield loc, f"{field}: unknown region; defined: {_value(sorted(region_names))}"
        elif service is not None and region not in service.regions:
            yield (
                loc,
                f"{field}: does not serve service {_value(service.name)}; it runs in {_value(list(service.regions))}",
            )
        elif group is not None and allowed is not None and region not in (names := [r.name for r in allowed]):
            yield (
                loc,
                f"{field}: jurisdiction {_value(policy.region(region).jurisdiction)} is not allowed for client group "
                f"{_value(group.name)} ({_value(list(group.allowed_jurisdictions))}); allowed regions: {_value(names)}",
            )
        if aws_regions[aws_region] > 1:
            yield (
                loc,
                f"{field}: AWS region {_value(aws_region)} is given to two regions; "
                "a listener has one endpoint group per AWS region",
            )


def _check_providers(
    policy: Policy, region_names: set[str], group_names: set[str]
) -> Iterator[tuple[Path_, str]]:
    yield from _check_geo(policy)
    zones: list[tuple[str, tuple[str, ...]]] = []
    if policy.providers.localdns is not None:
        zones.append(("providers.localdns.zone", (policy.providers.localdns.zone,)))
    route53 = [r.zone for r in policy.providers.route53_list]
    # A hosted_zone_id names a zone this check cannot see: any service may lie in it.
    if route53 and None not in route53:
        zones.append(("providers.route53.zone", tuple(cast(list[str], route53))))
    for label, names in zones:
        shown = _value(_zone_name(names[0]) if len(names) == 1 else [_zone_name(z) for z in names])
        for i, service in enumerate(policy.services):
            if not any(in_zone(service.dns_name, zone) for zone in names):
                yield (
                    ("services", i, "dns_name"),
                    f"services.{i}.dns_name: {_value(service.dns_name)} is outside {label} {shown}",
                )
    first_at: dict[str, Path_] = {}
    for base, settings in _cloud_instances(policy.providers):
        name = settings.instance_name
        if (first := first_at.setdefault(name, base)) != base:
            yield base, f"{_field(base)}: {_value(name)} is also {_field(first)}; each instance is named once"
        if isinstance(settings, GlobalAcceleratorSettings):
            yield from _check_global_accelerator(policy, base, settings, region_names, group_names)
        else:
            yield from _check_dns_instance(policy, base, settings)
    hap = policy.providers.haproxy
    if hap is None:
        return
    base = ("providers", "haproxy")
    yield from _check_target(policy, base, hap.service, hap.client_group, group_names)
    for region in hap.servers:
        if region not in region_names:
            yield (
                (*base, "servers", region),
                f"providers.haproxy.servers.{region}: unknown region; defined: {_value(sorted(region_names))}",
            )


def _check_dns_instance(
    policy: Policy, base: Path_, settings: Route53Settings | CloudDnsSettings
) -> Iterator[tuple[Path_, str]]:
    """A cloud DNS provider names each group's records `_cp-<owner>-<group>`: that must be one DNS label.

    (Cloud DNS also needs the default group's locations, having no default location; its provider refuses
    to render without them rather than validation refusing the contract's minimal policy.)"""
    for i, group in enumerate(policy.client_groups):
        label = f"_cp-{settings.owner}-{group.name}"
        if len(label) > 63:
            yield (
                ("client_groups", i, "name"),
                f"client_groups.{i}.name: {_field(base)} names this group's records {_value(label)}, "
                f"{len(label)} characters; a DNS label holds 63: shorten the group name or the owner",
            )


def _end_of(text: str) -> tuple[int, int]:
    """Line and column (1-based) just past the end of `text`."""
    return text.count("\n") + 1, len(text) - text.rfind("\n")


def parse_policy(text: str, filename: str = "<policy>") -> Policy:
    """Parse and validate policy YAML; raise PolicyError listing every problem with its position."""
    return parse_with_warnings(text, filename)[0]


def parse_with_warnings(text: str, filename: str = "<policy>") -> tuple[Policy, list[Problem]]:
    """As parse_policy, and also what is allowed but probably not meant (Problem.warning set)."""
    builder = _Builder()
    try:
        root = yaml.compose(text, Loader=_Composer)
        if root is None:
            raise PolicyError(
                [Problem(filename, 1, 1, "policy is empty; expected a mapping with regions and services")]
            )
        data = builder.build(root)
    except yaml.MarkedYAMLError as exc:  # syntax errors, and the composer's bounds
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = _cut(exc.problem or str(exc), _SAID)
        raise PolicyError([Problem(filename, line, col, f"invalid YAML: {problem}")]) from None
    except yaml.reader.ReaderError as exc:  # a control character, at an offset into the text
        line, col = _end_of(text[: exc.position])
        raise PolicyError(
            [Problem(filename, line, col, f"invalid YAML: character #x{exc.character:04x}: {exc.reason}")]
        ) from None
    except _Refused as exc:
        raise PolicyError([Problem(filename, exc.mark.line + 1, exc.mark.column + 1, exc.message)]) from None

    def at(loc: Path_, message: str, at_key: bool = False) -> Problem:
        mark = _mark_for(loc, builder.marks, at_key)
        return Problem(filename, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, message)

    problems = [at(p, f"{_field(p)}: duplicate key") for p in builder.dupes]
    if not isinstance(data, dict):
        raise PolicyError([at((), "policy must be a mapping with regions and services")])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        for e in errors:
            e["loc"] = _file_path(tuple(e["loc"]))
        # A tuple whose items failed also reports itself as too short; the item errors say more.
        inner = {tuple(e["loc"][:-1]) for e in errors} | {tuple(e["loc"][:-2]) for e in errors}
        problems += [
            at(tuple(e["loc"]), _describe(e), at_key=e["type"] == "extra_forbidden")
            for e in errors
            if not (e["type"] == "too_short" and tuple(e["loc"]) in inner)
        ]
        raise PolicyError(sorted(problems, key=lambda p: (p.line, p.column))) from None
    problems += [at(loc, msg, at_key=True) for loc, msg in _cross_check(policy)]
    if problems:
        raise PolicyError(sorted(problems, key=lambda p: (p.line, p.column)))
    warnings = [replace(at(loc, msg), warning=True) for loc, msg in _residency_warnings(policy)]
    return policy, sorted(warnings, key=lambda p: (p.line, p.column))


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_IFIFO: "a FIFO",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFDIR: "a directory",
        stat.S_IFSOCK: "a socket",
    }
    return kinds.get(stat.S_IFMT(mode), "not a regular file")


def _read(path: Path) -> str:
    """The policy file's text: a regular file of at most MAX_POLICY_BYTES, else PolicyError.

    A FIFO, /dev/zero behind a symlink or a growing file must neither block nor fill memory, so the
    open never waits (O_NONBLOCK), the opened descriptor is what is checked, and the read is bounded.
    """

    def refuse(message: str, line: int = 1, column: int = 1) -> PolicyError:
        return PolicyError([Problem(str(path), line, column, f"cannot read policy: {message}")])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        # Opening a unix socket fails (ENXIO); name what is there rather than the errno.
        try:
            kind = _kind(os.stat(path).st_mode)
        except OSError:
            kind = None
        raise refuse(f"it is {kind}, not a regular file" if kind else exc.strerror or str(exc)) from None
    too_big = f"larger than the {MAX_POLICY_BYTES:,}-byte cap"
    try:
        info = os.fstat(fd)
        if (kind := _kind(info.st_mode)) is not None:
            raise refuse(f"it is {kind}, not a regular file")
        if info.st_size > MAX_POLICY_BYTES:
            raise refuse(f"{info.st_size:,} bytes is {too_big}")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_POLICY_BYTES:  # it grew after the fstat
        raise refuse(f"it is {too_big}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _end_of(data[: exc.start].decode("utf-8"))  # valid up to where decoding failed
        raise refuse(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", line, column) from None


def load_policy(path: str | Path) -> Policy:
    return load_with_warnings(path)[0]


def load_with_warnings(path: str | Path) -> tuple[Policy, list[Problem]]:
    path = Path(path)
    return parse_with_warnings(_read(path), str(path))


def validate_files(paths: Iterable[str | Path]) -> list[Problem]:
    """Every file's errors and warnings (Problem.warning); the files are valid if there are no errors."""
    problems: list[Problem] = []
    for path in paths:
        try:
            problems.extend(load_with_warnings(path)[1])
        except PolicyError as exc:
            problems.extend(exc.problems)
    return problems


def json_schema() -> str:
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "LLM failover plane routing policy"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
