"""Drill files: what a failover drill breaks, when, and what must hold; read with the policy loader's
bounds and FILE:LINE:COL errors (controlplane/yamldoc.py).

A drill states its steady state (checked before the faults and again after rollback), a method (faults and
operator actions, each at an offset from the start and each with an end), and expectations, each of which
passes or fails in the report. Durations are seconds, as a number or a string with a unit: `500ms`, `2s`,
`1m`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from chaos.loopback import is_loopback
from controlplane.policy import Name, Policy
from controlplane.yamldoc import DocumentError, Path_, Problem, by_position, parse_document, quoted, read_text

MAX_DRILL_SECONDS = 600.0  # a drill is minutes long at most; a longer one is a soak test, not a drill
MAX_STEPS = 100
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*$")


def _seconds(value: object) -> object:
    """`2s`, `500ms`, `1m` or a plain number of seconds; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found is None:
            raise ValueError("must be a duration such as 500ms, 2s or 1m")
        return float(found.group(1)) * _UNITS[found.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=MAX_DRILL_SECONDS)]
Positive = Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=MAX_DRILL_SECONDS)]
Share = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- faults and actions


class RegionMode(StrEnum):
    DOWN = "down"
    HANG = "hang"
    SLOW = "slow"
    ERRORS = "errors"
    WRONG_MODEL = "wrong_model"


class NetworkMode(StrEnum):
    LATENCY = "latency"
    PARTITION = "partition"


class Partition(StrEnum):
    BLACKHOLE = "blackhole"  # packets vanish: connections hang
    RESET = "reset"  # connections are refused and reset


class ProviderMode(StrEnum):
    THROTTLED = "throttled"  # every call answered 400 Throttling
    UNAVAILABLE = "unavailable"  # every call answered 503


class _Timed(_Frozen):
    at: Seconds = 0.0
    duration: Positive

    @property
    def end(self) -> float:
        return self.at + self.duration


class RegionFault(_Timed):
    """The region's server itself misbehaves (a simulated region's control API; a TTL inside it)."""

    kind: Literal["region"]
    region: Name
    mode: RegionMode
    share: Share = Field(default=1.0, description="errors: the share of requests answered 500/503")
    factor: Annotated[float, Field(ge=1, le=1000)] = Field(default=20.0, description="slow: how much slower")


class NetworkFault(_Timed):
    """The path between the plane and one region (a TCP proxy the plane's probes go through); clients'
    paths are untouched, which is what makes a partition hard: the region may still serve them."""

    kind: Literal["network"]
    region: Name
    mode: NetworkMode
    latency: Seconds = Field(default=0.0, description="latency: added to each direction")
    partition: Partition = Partition.BLACKHOLE

    @model_validator(mode="after")
    def _latency_given(self) -> NetworkFault:
        if self.mode is NetworkMode.LATENCY and self.latency <= 0:
            raise ValueError("a latency fault needs latency, e.g. latency: 300ms")
        return self


class ProviderFault(_Timed):
    """The DNS/LB provider's API refuses calls (Route 53 on moto behind a fault proxy)."""

    kind: Literal["provider"]
    provider: Literal["route53"] = "route53"
    mode: ProviderMode


class BucketFault(_Timed):
    """A region's weights bucket cannot be read or written (a sync is started inside the fault)."""

    kind: Literal["bucket"]
    region: Name


class DaemonFault(_Frozen):
    """The plane's daemon is killed with SIGKILL, and started again `restart_after` later."""

    kind: Literal["daemon"]
    at: Seconds = 0.0
    restart_after: Positive = 1.0

    @property
    def end(self) -> float:
        return self.at + self.restart_after


class ReplicaMode(StrEnum):
    KILL = "kill"  # SIGKILL; started again at the fault's end
    PAUSE = "pause"  # SIGSTOP; SIGCONT at the fault's end
    CUT_REGIONS = "cut_regions"  # every path from the replica to a region blackholed
    CUT_ETCD = "cut_etcd"  # every path from the replica to an etcd member blackholed


LEADER = "leader"


class ReplicaFault(_Timed):
    """One replica of a plane run as replicas (`target: replicas`): `replica` names one, or `leader` is the
    one that leads when the fault starts."""

    kind: Literal["replica"]
    replica: Name = LEADER
    mode: ReplicaMode


Fault = Annotated[
    RegionFault | NetworkFault | ProviderFault | BucketFault | DaemonFault | ReplicaFault,
    Field(discriminator="kind"),
]


class OverrideAction(StrEnum):
    DRAIN = "drain"
    WEIGHT = "weight"


class OverrideStep(_Timed):
    """An operator's override through the admin API (it must survive whatever the drill does)."""

    region: Name
    action: OverrideAction = OverrideAction.DRAIN
    weight: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    reason: Annotated[str, Field(max_length=200)] = "drill"

    @model_validator(mode="after")
    def _weight_given(self) -> OverrideStep:
        if (self.action is OverrideAction.WEIGHT) != (self.weight is not None):
            raise ValueError("weight: given with action weight, and only then")
        return self


class FaultStep(_Frozen):
    fault: Fault


class OverrideStepItem(_Frozen):
    override: OverrideStep


def _key(value: object) -> str | None:
    """The one key of a `- key: {...}` list item: which kind of item it is."""
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    if isinstance(value, BaseModel):
        return next(iter(type(value).model_fields))
    return None


Step = Annotated[
    Annotated[FaultStep, Tag("fault")] | Annotated[OverrideStepItem, Tag("override")], Discriminator(_key)
]


# ---------------------------------------------------------------- steady state and expectations


class DnsServes(_Frozen):
    group: Name
    regions: tuple[Name, ...] = Field(description="exactly these regions in the group's answers")


class DnsServesCheck(_Frozen):
    dns_serves: DnsServes


class ErrorRateCheck(_Frozen):
    max_client_error_rate: Share


SteadyCheck = Annotated[
    Annotated[DnsServesCheck, Tag("dns_serves")] | Annotated[ErrorRateCheck, Tag("max_client_error_rate")],
    Discriminator(_key),
]


class RegionWithin(_Frozen):
    region: Name
    within: Positive
    group: Name | None = Field(default=None, description="one client group; every group by default")


class GroupWithin(_Frozen):
    group: Name
    within: Positive


class RegionOnly(_Frozen):
    region: Name
    group: Name | None = None


class LeavesDns(_Frozen):
    """Every group's answers stop offering the region within `within` of its fault's start."""

    leaves_dns: RegionWithin


class ReturnsToDns(_Frozen):
    """The region is offered again within `within` of its fault's end."""

    returns_to_dns: RegionWithin


class StaysInDns(_Frozen):
    """The region is never dropped from the answers during the drill (a fault that must not fail over)."""

    stays_in_dns: RegionOnly


class FailsClosed(_Frozen):
    """The group's answers become empty (no region at all) within `within` of the first fault's start."""

    fails_closed: GroupWithin


class WeightFall(_Frozen):
    region: Name
    by: Annotated[int, Field(ge=1, le=99)] = Field(description="percent of its weight before the fault")
    within: Positive
    group: Name | None = None


class WeightFalls(_Frozen):
    """In every group, the region's weight falls by at least `by` percent of what it was before its first
    fault, within `within`, yet stays above 0: a slow region keeps less traffic, not none."""

    weight_falls: WeightFall


class OverrideSurvives(_Frozen):
    """The region's override is still in force at the end (a daemon restart must not lose it)."""

    override_survives: RegionOnly


class MaxClientFailures(_Frozen):
    max_client_failures: Count


class MaxClientErrorRate(_Frozen):
    max_client_error_rate: Share


class ResidencyViolations(_Frozen):
    residency_violations: Count


class MaxFlaps(_Frozen):
    max_flaps: Count


Expectation = Annotated[
    Annotated[LeavesDns, Tag("leaves_dns")]
    | Annotated[ReturnsToDns, Tag("returns_to_dns")]
    | Annotated[StaysInDns, Tag("stays_in_dns")]
    | Annotated[FailsClosed, Tag("fails_closed")]
    | Annotated[WeightFalls, Tag("weight_falls")]
    | Annotated[OverrideSurvives, Tag("override_survives")]
    | Annotated[MaxClientFailures, Tag("max_client_failures")]
    | Annotated[MaxClientErrorRate, Tag("max_client_error_rate")]
    | Annotated[ResidencyViolations, Tag("residency_violations")]
    | Annotated[MaxFlaps, Tag("max_flaps")],
    Discriminator(_key),
]


# ---------------------------------------------------------------- the drill


class RemoteTarget(_Frozen):
    """A running plane reached through its admin API (staging); faults need each region's control URL."""

    admin_api: str
    dns: str = Field(description="host:port of the DNS server the load generator asks")
    token_env: str = Field(default="CONTROLPLANE_TOKEN", description="variable holding the admin token")
    region_control: dict[Name, str] = Field(default_factory=dict, description="region -> fault control URL")
    policy: str | None = Field(
        default=None,
        description="the policy file the plane runs (its client groups and DNS name are not in /status)",
    )

    @field_validator("admin_api")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8080")
        return value

    @field_validator("dns")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:5353")
        return value

    def hosts(self) -> Iterator[str]:
        yield urlsplit(self.admin_api).hostname or ""
        yield self.dns.rpartition(":")[0]
        for url in self.region_control.values():
            yield urlsplit(url).hostname or ""


class Drill(_Frozen):
    name: Name
    description: Annotated[str, Field(max_length=500)] = ""
    # demo: the demo stack, one daemon; replicas: the demo policy run as three replicas on etcd.
    target: Annotated[
        Annotated[Literal["demo", "replicas"], Tag("demo")] | Annotated[RemoteTarget, Tag("remote")],
        Discriminator(lambda v: "demo" if isinstance(v, str) else "remote"),
    ] = "demo"
    allow_remote: bool = False
    steady_state: tuple[SteadyCheck, ...] = ()
    method: tuple[Step, ...] = Field(min_length=1, max_length=MAX_STEPS)
    expect: tuple[Expectation, ...] = Field(min_length=1, max_length=MAX_STEPS)

    @property
    def faults(
        self,
    ) -> tuple[RegionFault | NetworkFault | ProviderFault | BucketFault | DaemonFault | ReplicaFault, ...]:
        return tuple(s.fault for s in self.method if isinstance(s, FaultStep))

    @property
    def overrides(self) -> tuple[OverrideStep, ...]:
        return tuple(s.override for s in self.method if isinstance(s, OverrideStepItem))

    @property
    def length(self) -> float:
        """Seconds from the first fault's start to the last step's end."""
        return max(s.fault.end if isinstance(s, FaultStep) else s.override.end for s in self.method)


class DrillError(DocumentError):
    """A drill file that cannot be run; carries every problem found."""


def _remote(drill: Drill) -> Iterator[tuple[Path_, str]]:
    if isinstance(drill.target, RemoteTarget) and not drill.allow_remote:
        hosts = sorted({h for h in drill.target.hosts() if not is_loopback(h)})
        if hosts:
            yield (
                ("target",),
                f"target: {quoted(hosts[0])} is not on this machine; a drill breaks things, so a remote "
                "target needs allow_remote: true",
            )


def _replicas(drill: Drill) -> Iterator[tuple[Path_, str]]:
    if drill.target == "replicas":
        return
    for i, step in enumerate(drill.method):
        if isinstance(step, FaultStep) and isinstance(step.fault, ReplicaFault):
            yield (
                ("method", i, "fault", "kind"),
                "a replica fault needs a plane of replicas: target: replicas",
            )


_LISTS = ("method", "expect", "steady_state")
_FAULT_KINDS = frozenset({"region", "network", "provider", "bucket", "daemon", "replica"})


def _file_path(loc: Path_) -> Path_:
    """An error's location as written in the file: without the tags pydantic adds for each union's kind
    (`method.0.fault.fault.region.mode` is `method.0.fault.mode`, `target.remote.dns` is `target.dns`)."""
    if len(loc) > 1 and loc[0] == "target":
        return (loc[0], *loc[2:])
    if len(loc) < 3 or loc[0] not in _LISTS:
        return loc
    rest = loc[3:]
    if loc[0] == "method" and loc[2] == "fault" and len(rest) > 1 and rest[1] in _FAULT_KINDS:
        rest = (rest[0], *rest[2:])
    return (*loc[:2], *rest)


def parse_drill(text: str, filename: str = "<drill>") -> Drill:
    parsed = parse_document(
        text,
        filename,
        Drill,
        what="drill",
        expected="a mapping with method and expect",
        file_path=_file_path,
        error=DrillError,
    )
    problems: list[Problem] = parsed.problems + [
        parsed.at.problem(loc, msg) for loc, msg in [*_remote(parsed.value), *_replicas(parsed.value)]
    ]
    if problems:
        raise DrillError(by_position(problems))
    return parsed.value


def load_drill(path: str | Path) -> Drill:
    path = Path(path)
    try:
        text = read_text(path, "drill")
    except DocumentError as exc:
        raise DrillError(exc.problems) from None
    return parse_drill(text, str(path))


def _names(drill: Drill) -> Iterator[tuple[str, str, str]]:
    """(field, kind, name) of every region and client group the drill refers to."""
    for i, step in enumerate(drill.method):
        if isinstance(step, FaultStep) and (region := getattr(step.fault, "region", None)) is not None:
            yield f"method.{i}.fault.region", "region", region
        if isinstance(step, OverrideStepItem):
            yield f"method.{i}.override.region", "region", step.override.region
    for i, check in enumerate(drill.steady_state):
        if isinstance(check, DnsServesCheck):
            yield f"steady_state.{i}.dns_serves.group", "group", check.dns_serves.group
            for j, region in enumerate(check.dns_serves.regions):
                yield f"steady_state.{i}.dns_serves.regions.{j}", "region", region
    for i, expectation in enumerate(drill.expect):
        key = next(iter(type(expectation).model_fields))
        inner = getattr(expectation, key)
        for name, kind in (("region", "region"), ("group", "group")):
            if (value := getattr(inner, name, None)) is not None:
                yield f"expect.{i}.{key}.{name}", kind, value


def mismatches(drill: Drill, policy: Policy) -> list[str]:
    """What the drill names that the target's policy does not have: a drill against the wrong stack would
    pass or fail for nothing."""
    known = {"region": [r.name for r in policy.regions], "group": [g.name for g in policy.client_groups]}
    return [
        f"{where}: {quoted(name)} is not a {kind} of the target's policy ({', '.join(known[kind])})"
        for where, kind, name in _names(drill)
        if name not in known[kind]
    ]
