"""RoutingPlan: the engine's output, a weight and a reason per (service, client group, region)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class GroupMode(StrEnum):
    NORMAL = "normal"
    FAIL_OPEN = "fail-open"
    FAIL_CLOSED = "fail-closed"
    FROZEN = "frozen"


@dataclass(frozen=True, slots=True)
class RouteWeight:
    region: str
    weight: int  # percent; a group's weights sum to 100, or are all 0 when failing closed
    reason: str


@dataclass(frozen=True, slots=True)
class GroupPlan:
    service: str
    group: str
    mode: GroupMode
    weights: tuple[RouteWeight, ...]
    # When these weights last changed (carried over while a decision leaves them equal): damping allows a
    # live region to move max_shift points per second since then. 0.0: long ago, no damping owed.
    since: float = 0.0

    def weight(self, region: str) -> int:
        return next((w.weight for w in self.weights if w.region == region), 0)

    def as_dict(self) -> dict[str, int]:
        return {w.region: w.weight for w in self.weights}


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    generated_at: float
    groups: tuple[GroupPlan, ...] = field(default_factory=tuple)

    def group(self, service: str, group: str) -> GroupPlan | None:
        return next((g for g in self.groups if g.service == service and g.group == group), None)

    def __iter__(self) -> Iterator[GroupPlan]:
        return iter(self.groups)

    def to_json(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at,
            "groups": [
                {
                    "service": g.service,
                    "group": g.group,
                    "mode": g.mode.value,
                    "since": g.since,
                    "weights": [
                        {"region": w.region, "weight": w.weight, "reason": w.reason} for w in g.weights
                    ],
                }
                for g in self.groups
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoutingPlan:
        generated_at = float(data["generated_at"])
        return cls(
            generated_at=generated_at,
            groups=tuple(
                GroupPlan(
                    service=g["service"],
                    group=g["group"],
                    mode=GroupMode(g["mode"]),
                    weights=tuple(
                        RouteWeight(w["region"], int(w["weight"]), w["reason"]) for w in g["weights"]
                    ),
                    # A file written before `since` existed: its plan was decided, at the latest, then.
                    since=float(g.get("since", generated_at)),
                )
                for g in data["groups"]
            ),
        )
