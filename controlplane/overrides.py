"""Manual overrides: drain a region or pin its weight, for a bounded time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class OverrideAction(StrEnum):
    DRAIN = "drain"  # no new traffic, moved away at the policy's max_shift pace
    WEIGHT = "weight"  # replaces the region's capacity in active-active weighting


@dataclass(frozen=True, slots=True)
class Override:
    region: str
    action: OverrideAction
    until: float  # wall-clock expiry; an override never lasts for ever
    service: str | None = None  # None: every service
    weight: int | None = None  # for WEIGHT: relative weight 0..1,000,000
    reason: str = ""
    created_at: float = 0.0
    author: str = ""

    def applies(self, service: str, region: str, now: float) -> bool:
        return self.region == region and (self.service in (None, service)) and now < self.until

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["action"] = self.action.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Override:
        return cls(**{**data, "action": OverrideAction(data["action"])})


def active(overrides: Iterable[Override], now: float) -> tuple[Override, ...]:
    return tuple(o for o in overrides if now < o.until)
