"""The one place tests build policies, plans and health views from (and bring a provider to a plan):
a variant is a parameter, not a copy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import yaml

from chaos.loopback import DEMO_POLICY
from controlplane.changes import ChangeSet, diff
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import Provider
from controlplane.weights.artifacts import Artifact, ArtifactView
from probes.health import HealthView, RegionHealth, State

DEMO = DEMO_POLICY  # policies/demo.yaml, found where the demo stack finds it
DEMO_ADDRESS = {  # where policies/demo.yaml puts its regions
    "us-east": "127.0.0.11",
    "us-west": "127.0.0.12",
    "eu-west": "127.0.0.13",
    "eu-central": "127.0.0.14",
}
REGIONS = {"us-east": "US", "us-west": "US", "eu-west": "EU", "eu-central": "EU"}
EU_SOURCES = "127.0.1.0/24"  # loopback sources the eu group is matched by (127.0.1.5 binds fine on Linux)
# EU clients stay in the EU; everyone else may go anywhere: the residency rule most tests exercise.
EU_AND_GLOBAL: tuple[dict[str, Any], ...] = (
    {"name": "eu", "sources": [EU_SOURCES], "allowed_jurisdictions": ["EU"]},
    {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
)
US_ONLY: tuple[dict[str, Any], ...] = ({"name": "global", "allowed_jurisdictions": ["US"]},)
# The same split where a cloud DNS decides by the resolver's place: Europe and Great Britain are the eu group.
EU_BY_GEO_AND_GLOBAL: tuple[dict[str, Any], ...] = (
    {"name": "eu", "geo": {"continents": ["EU"], "countries": ["GB"]}, "allowed_jurisdictions": ["EU"]},
    {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
)


def policy_data(
    regions: Sequence[Mapping[str, Any]],
    *,
    client_groups: Sequence[Mapping[str, Any]] = EU_AND_GLOBAL,
    service: Mapping[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A policy document (what a user writes in YAML) with one service, "chat", over all `regions`.

    `service` adds to or replaces the service's fields; `sections` are further top-level sections
    (probes, health, providers).
    """
    return {
        "version": 1,
        "regions": [dict(r) for r in regions],
        "client_groups": [dict(g) for g in client_groups],
        "default_client_group": "global",
        "services": [
            {
                "name": "chat",
                "dns_name": "chat.llm.internal",
                "regions": [r["name"] for r in regions],
                **(service or {}),
            }
        ],
        **sections,
    }


def demo_data() -> dict[str, Any]:
    """policies/demo.yaml as a fresh document, for an edit demo_policy has no parameter for."""
    data: dict[str, Any] = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    return data


def demo_policy(*, localdns: Mapping[str, Any] | None = None, **sections: Any) -> Policy:
    """policies/demo.yaml with `localdns` merged into its localdns provider's settings (a free "port",
    say) and each of `sections` replacing the top-level section of that name."""
    data = demo_data()
    data["providers"]["localdns"].update(localdns or {})
    data.update(sections)
    return Policy.model_validate(data)


def us_policy(endpoints: Mapping[str, str], **sections: Any) -> Policy:
    """One US region per entry of `endpoints` (name: URL) under US_ONLY; `sections` as in policy_data."""
    regions = [{"name": r, "endpoint": url, "jurisdiction": "US"} for r, url in endpoints.items()]
    return Policy.model_validate(policy_data(regions, client_groups=US_ONLY, **sections))


def policy(**service: Any) -> Policy:
    """REGIONS (two US, two EU; capacity 100, priority in that order) under EU_AND_GLOBAL;
    keyword arguments are fields of the service."""
    regions = [
        {
            "name": name,
            "endpoint": f"http://127.0.0.{11 + i}:8000",
            "jurisdiction": jurisdiction,
            "capacity": 100,
            "priority": i + 1,
        }
        for i, (name, jurisdiction) in enumerate(REGIONS.items())
    ]
    return Policy.model_validate(policy_data(regions, service=service))


def haproxy_policy(
    socket: str = "127.0.0.1:9999",
    servers: Mapping[str, str] | Sequence[str] | None = None,
    *,
    endpoints: Mapping[str, str] | None = None,
    backend: str = "chat",
) -> Policy:
    """US-only regions (REGIONS' names on 127.0.0.31-34 unless `endpoints` says otherwise) behind one
    HAProxy backend. `servers` maps region to server name; a sequence means each region's own name;
    None means every region."""
    endpoints = endpoints or {name: f"http://127.0.0.{31 + i}:8000" for i, name in enumerate(REGIONS)}
    if servers is None:
        servers = list(endpoints)
    server_map = dict(servers) if isinstance(servers, Mapping) else {r: r for r in servers}
    return us_policy(
        endpoints,
        providers={
            "haproxy": {
                "socket": socket,
                "service": "chat",
                "client_group": "global",
                "backend": backend,
                "servers": server_map,
            }
        },
    )


def plan(groups: Mapping[str, Mapping[str, int]], service: str = "chat", at: float = 0.0) -> RoutingPlan:
    """A plan giving each client group the weights listed (regions left out get no RouteWeight)."""
    return RoutingPlan(
        at,
        tuple(
            GroupPlan(
                service, group, GroupMode.NORMAL, tuple(RouteWeight(r, w, "test") for r, w in weights.items())
            )
            for group, weights in groups.items()
        ),
    )


async def converge(provider: Provider, target: RoutingPlan) -> ChangeSet:
    """Apply to `provider` what it lacks of `target`; the change set it applied."""
    changes = diff(provider.name, provider.render(target), await provider.current())
    await provider.apply(changes)
    return changes


def view(
    states: Mapping[str, State | tuple[State, float]], at: float = 1000.0, since: float = 0.0
) -> HealthView:
    regions: dict[str, RegionHealth] = {}
    for name, value in states.items():
        state, score = value if isinstance(value, tuple) else (value, 1.0)
        regions[name] = RegionHealth(name, state, score if state is State.HEALTHY else 0.0, since, ())
    return HealthView(at, MappingProxyType(regions))


def all_healthy() -> HealthView:
    return view(dict.fromkeys(REGIONS, State.HEALTHY))


MODEL = "llm"  # the model model_policy's service uses


def model_policy(version: str = "v1", jurisdictions: Sequence[str] | None = None, **service: Any) -> Policy:
    """policy(**service) whose service uses MODEL at `version` (stored only in `jurisdictions`, if given),
    each region with a file:// bucket of its own; neither bucket is read by the engine."""
    data = policy(**service).model_dump(mode="json", exclude_none=True)
    for region in data["regions"]:
        region["bucket"] = f"file:///tmp/buckets/{region['name']}"
    model: dict[str, Any] = {"name": MODEL, "source": "file:///tmp/buckets/source", "version": version}
    if jurisdictions is not None:
        model["jurisdictions"] = list(jurisdictions)
    data["models"] = [model]
    data["services"][0]["model"] = MODEL
    return Policy.model_validate(data)


def artifacts(verified: Mapping[str, str | None], at: float = 1000.0) -> ArtifactView:
    """MODEL's weights per region as last surveyed at `at`: region -> the version verified there, or None
    for a bucket surveyed without it. Regions left out were never surveyed."""
    return ArtifactView(
        {
            (region, MODEL): Artifact(
                region, MODEL, version or "v1", verified=version is not None, surveyed_at=at, synced_at=at
            )
            for region, version in verified.items()
        }
    )


class ManualClock:
    """A monotonic clock that moves only when told: `now` is read and set by the test."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
