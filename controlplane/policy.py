"""Routing policy: YAML -> validated, frozen Policy model; every problem reported as FILE:LINE:COL."""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, TypeVar, cast
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from controlplane.yamldoc import (
    DocumentError,
    Path_,
    Problem,
    by_position,
    field_name,
    parse_document,
    quoted,
    read_text,
)

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


class ReservedTerm(StrEnum):
    ONE_YEAR = "1y"
    THREE_YEARS = "3y"


# A cloud's own identifiers: aws/us-east-1/g6e.xlarge, gcp/europe-west4/g2-standard-8.
CloudId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]


class Fleet(_Frozen):
    """What a region runs on, for the cost model: the price sheet is looked up by (cloud, region, instance)."""

    cloud: CloudId = Field(description="Price sheet cloud, e.g. aws or gcp")
    region: CloudId = Field(description="The cloud's region, e.g. us-east-1 or europe-west4")
    instance: CloudId = Field(description="GPU instance type, e.g. g6e.xlarge")
    reserved: Annotated[int, Field(ge=0, le=100_000)] = Field(
        default=0, description="Instances reserved (paid every hour, busy or not)"
    )
    reserved_term: ReservedTerm = ReservedTerm.ONE_YEAR
    on_demand_max: Annotated[int, Field(ge=0, le=100_000)] = Field(
        default=1000, description="Most on-demand instances the region may add above its reserved ones"
    )
    spot_max: Annotated[int, Field(ge=0, le=100_000)] = Field(
        default=0, description="Most spot instances, used before on-demand ones when cheaper"
    )
    tokens_per_s: Annotated[float, Field(gt=0, le=1e9)] = Field(
        description="Output tokens per second one instance sustains at the latency target"
    )


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
    fleet: Fleet | None = Field(default=None, description="Instances and prices, for the cost model")

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
    recover_after: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=2.0,
        description="Seconds a failed region must keep passing its probes (besides `rise` in a row) before it "
        "gets traffic again; doubled for each failure within flap_window of its last recovery",
    )
    flap_window: Seconds = Field(
        default=60.0,
        description="A failure this soon after a recovery is a flap: the next recovery waits longer",
    )
    max_recover_after: Seconds = Field(
        default=60.0, description="The most a flapping region's recovery waits"
    )

    @model_validator(mode="after")
    def _hold_bounds(self) -> HealthSettings:
        if self.max_recover_after < self.recover_after:
            raise ValueError("max_recover_after must be at least recover_after")
        return self

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
                raise ValueError(f"{quoted(cidr)} is not a CIDR network (e.g. 10.0.0.0/8)") from exc
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
    cost_weight: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0,
        description=(
            "Active-active: how far weights lean toward regions with a lower cost per token (0 not at all,"
            " 1 in proportion to cheapness), among healthy allowed regions within the TTFT target"
        ),
    )
    cost_floor: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.25, description="The least share of its cost-blind weight a region keeps under cost_weight"
    )


class LocalDnsProvider(_Frozen):
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 5353
    zone: str = Field(description="Zone this server is authoritative for, e.g. llm.internal")
    ecs: bool = Field(
        default=True, description="Honour the EDNS client subnet option to pick the client group"
    )
    workers: Annotated[int, Field(ge=0, le=64)] = Field(
        default=2,
        description="Processes answering queries, apart from the daemon's event loop (0: on the daemon's loop)",
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


class PowerDnsSettings(_Frozen):
    enabled: bool = True
    api_url: HttpUrl = Field(description="PowerDNS's webserver (its HTTP API), e.g. http://127.0.0.1:8081")
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] = Field(
        description="The environment variable holding the API key; never the key itself"
    )
    server_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "localhost"
    zone: Annotated[DnsName, AfterValidator(_zone_name)] = Field(
        description="The zone the service names are in; it must exist and have LUA records enabled"
    )
    owner: Owner
    max_delete_share: DeleteShare = _DELETE_SHARE

    @property
    def instance_name(self) -> str:
        return f"powerdns:{self.zone}"


CloudSettings = Route53Settings | CloudDnsSettings | GlobalAcceleratorSettings | PowerDnsSettings
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
    powerdns: _OneOrMany[PowerDnsSettings] | None = None

    @property
    def route53_list(self) -> tuple[Route53Settings, ...]:
        return _as_tuple(self.route53)

    @property
    def cloud_dns_list(self) -> tuple[CloudDnsSettings, ...]:
        return _as_tuple(self.cloud_dns)

    @property
    def global_accelerator_list(self) -> tuple[GlobalAcceleratorSettings, ...]:
        return _as_tuple(self.global_accelerator)

    @property
    def powerdns_list(self) -> tuple[PowerDnsSettings, ...]:
        return _as_tuple(self.powerdns)


_CLOUD_KEYS = ("route53", "cloud_dns", "global_accelerator", "powerdns")


def _key_prefix(value: str) -> str:
    if not value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError(
            "must start with /, not end with /, and have no empty segment, e.g. /controlplane/prod"
        )
    return value


class Coordination(_Frozen):
    """Replicas of one plane coordinating through etcd: one leader writes, a majority of vantage points
    decides that a region is down."""

    etcd: Annotated[tuple[HttpUrl, ...], Field(min_length=1, max_length=7)] = Field(
        description="Endpoints of an etcd v3 cluster (its JSON gateway), e.g. http://127.0.0.1:2379"
    )
    lease_ttl: Annotated[int, Field(ge=2, le=60)] = Field(
        default=3, description="Seconds; leadership and published votes live on leases this long"
    )
    prefix: Annotated[
        str, Field(min_length=2, max_length=200, pattern=r"^[A-Za-z0-9/_.-]+$"), AfterValidator(_key_prefix)
    ] = Field(description="Every key of this plane lives under it, e.g. /controlplane/prod")


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
    coordination: Coordination | None = Field(
        default=None, description="Run as replicas coordinated through etcd; absent: one daemon alone"
    )

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

_EXPECTED = "a mapping with regions and services"


class PolicyError(DocumentError):
    """A policy file that cannot be used; carries every problem found, not just the first."""


def _file_path(loc: Path_) -> Path_:
    """An error's location as written in the file: without the tag of a one-or-many provider key."""
    if len(loc) > 2 and loc[0] == "providers" and loc[1] in _CLOUD_KEYS and loc[2] in _TAGS:
        return (*loc[:2], *loc[3:])
    return loc


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
                yield (collection, i, "name"), f"{collection}.{i}.name: duplicate name {quoted(name)}"
    dns_counts = Counter(s.dns_name.rstrip(".").lower() for s in policy.services)
    region_names = {r.name for r in policy.regions}
    jurisdictions = {r.jurisdiction for r in policy.regions}
    for i, service in enumerate(policy.services):
        if dns_counts[service.dns_name.rstrip(".").lower()] > 1:
            yield (
                ("services", i, "dns_name"),
                f"services.{i}.dns_name: {quoted(service.dns_name)} is used by another service",
            )
        for j, name in enumerate(service.regions):
            if name not in region_names:
                yield (
                    ("services", i, "regions", j),
                    f"services.{i}.regions.{j}: unknown region {quoted(name)}; defined: {quoted(sorted(region_names))}",
                )
        if len(set(service.regions)) != len(service.regions):
            yield ("services", i, "regions"), f"services.{i}.regions: a region is listed twice"
    yield from _check_models(policy)
    group_names = {g.name for g in policy.client_groups}
    if policy.default_client_group not in group_names:
        yield (
            ("default_client_group",),
            f"default_client_group: unknown client group {quoted(policy.default_client_group)}; defined: {quoted(sorted(group_names))}",
        )
    for i, group in enumerate(policy.client_groups):
        if not jurisdictions & set(group.allowed_jurisdictions):
            yield (
                ("client_groups", i, "allowed_jurisdictions"),
                f"client_groups.{i}.allowed_jurisdictions: no region is in {quoted(list(group.allowed_jurisdictions))}; "
                f"regions are in {quoted(sorted(jurisdictions))}",
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
                f"services.{i}.model: unknown model {quoted(service.model)}; defined: {quoted(sorted(set(model_names)))}",
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
                f"regions.{k}: serves model(s) {quoted(needs[region.name])} but has no bucket; "
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
                    f"services.{i}.regions.{j}: model {quoted(model.name)} may be stored only in "
                    f"{quoted(list(model.jurisdictions or ()))}, not in {quoted(name)} "
                    f"(jurisdiction {quoted(region.jurisdiction)}): sync will not copy it there and "
                    f"{quoted(name)} gets no traffic for service {quoted(service.name)}",
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
                        f"{field}: {quoted(str(value))} is in the geo of client groups {quoted(first)} and "
                        f"{quoted(group.name)}; a resolver's location must lead to one group",
                    )
                elif value in values[:j]:
                    yield (
                        ("client_groups", i, "geo", kind, j),
                        f"{field}: {quoted(str(value))} is listed twice",
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
        yield loc, f"{field_name(loc)}: unknown service {quoted(service)}; defined: {quoted(service_names)}"
    if group not in group_names:
        loc = (*base, "client_group")
        yield (
            loc,
            f"{field_name(loc)}: unknown client group {quoted(group)}; defined: {quoted(sorted(group_names))}",
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
        field = field_name(loc)
        if region not in region_names:
            yield loc, f"{field}: unknown region; defined: {quoted(sorted(region_names))}"
        elif service is not None and region not in service.regions:
            yield (
                loc,
                f"{field}: does not serve service {quoted(service.name)}; it runs in {quoted(list(service.regions))}",
            )
        elif group is not None and allowed is not None and region not in (names := [r.name for r in allowed]):
            yield (
                loc,
                f"{field}: jurisdiction {quoted(policy.region(region).jurisdiction)} is not allowed for client group "
                f"{quoted(group.name)} ({quoted(list(group.allowed_jurisdictions))}); allowed regions: {quoted(names)}",
            )
        if aws_regions[aws_region] > 1:
            yield (
                loc,
                f"{field}: AWS region {quoted(aws_region)} is given to two regions; "
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
    if policy.providers.powerdns_list:
        zones.append(("providers.powerdns.zone", tuple(z.zone for z in policy.providers.powerdns_list)))
    for label, names in zones:
        shown = quoted(_zone_name(names[0]) if len(names) == 1 else [_zone_name(z) for z in names])
        for i, service in enumerate(policy.services):
            if not any(in_zone(service.dns_name, zone) for zone in names):
                yield (
                    ("services", i, "dns_name"),
                    f"services.{i}.dns_name: {quoted(service.dns_name)} is outside {label} {shown}",
                )
    first_at: dict[str, Path_] = {}
    for base, settings in _cloud_instances(policy.providers):
        name = settings.instance_name
        if (first := first_at.setdefault(name, base)) != base:
            yield (
                base,
                f"{field_name(base)}: {quoted(name)} is also {field_name(first)}; each instance is named once",
            )
        if isinstance(settings, GlobalAcceleratorSettings):
            yield from _check_global_accelerator(policy, base, settings, region_names, group_names)
        elif not isinstance(settings, PowerDnsSettings):  # PowerDNS names no record after a group
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
                f"providers.haproxy.servers.{region}: unknown region; defined: {quoted(sorted(region_names))}",
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
                f"client_groups.{i}.name: {field_name(base)} names this group's records {quoted(label)}, "
                f"{len(label)} characters; a DNS label holds 63: shorten the group name or the owner",
            )


def parse_policy(text: str, filename: str = "<policy>") -> Policy:
    """Parse and validate policy YAML; raise PolicyError listing every problem with its position."""
    return parse_with_warnings(text, filename)[0]


def parse_with_warnings(text: str, filename: str = "<policy>") -> tuple[Policy, list[Problem]]:
    """As parse_policy, and also what is allowed but probably not meant (Problem.warning set)."""
    parsed = parse_document(
        text, filename, Policy, what="policy", expected=_EXPECTED, file_path=_file_path, error=PolicyError
    )
    policy, at = parsed.value, parsed.at
    problems = parsed.problems + [at.problem(loc, msg, at_key=True) for loc, msg in _cross_check(policy)]
    if problems:
        raise PolicyError(by_position(problems))
    warnings = [at.problem(loc, msg, warning=True) for loc, msg in _residency_warnings(policy)]
    return policy, by_position(warnings)


def load_policy(path: str | Path) -> Policy:
    return load_with_warnings(path)[0]


def load_with_warnings(path: str | Path) -> tuple[Policy, list[Problem]]:
    path = Path(path)
    try:
        text = read_text(path)
    except DocumentError as exc:
        raise PolicyError(exc.problems) from None
    return parse_with_warnings(text, str(path))


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
