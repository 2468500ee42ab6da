"""Small builders of policies and health views for pure-logic tests."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from controlplane.policy import Policy
from probes.health import HealthView, RegionHealth, State

REGIONS = {"us-east": "US", "us-west": "US", "eu-west": "EU", "eu-central": "EU"}


def policy(**service: Any) -> Policy:
    return Policy.model_validate(
        {
            "regions": [
                {
                    "name": name,
                    "endpoint": f"http://127.0.0.{11 + i}:8000",
                    "jurisdiction": jur,
                    "capacity": 100,
                    "priority": i + 1,
                }
                for i, (name, jur) in enumerate(REGIONS.items())
            ],
            "client_groups": [
                {"name": "eu", "sources": ["127.0.1.0/24"], "allowed_jurisdictions": ["EU"]},
                {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
            ],
            "default_client_group": "global",
            "services": [
                {"name": "chat", "dns_name": "chat.llm.internal", "regions": list(REGIONS), **service}
            ],
        }
    )


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
