"""What the cost model answers: monthly figures per region and client group, each term with the sum that made it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

HOURS_PER_MONTH = 730.0  # 8,760 h / 12: the month every cloud's price page uses
HOURS_PER_WEEK = 168
WEEKS_PER_MONTH = HOURS_PER_MONTH / HOURS_PER_WEEK


class Category(StrEnum):
    """Where a figure goes in the monthly split; the order is the table's and the chart's stacking order."""

    RESERVED = "reserved"
    ON_DEMAND = "on_demand"
    SPOT = "spot"
    EGRESS = "egress"
    STORAGE = "storage"
    WEIGHT_SYNC = "weight_sync"
    COMPLIANCE = "compliance"


class ScenarioKind(StrEnum):
    NORMAL = "normal"
    REGION_DOWN = "region-down"
    SPOT_LOSS = "spot-loss"


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: ScenarioKind
    region: str | None = None  # the region down or losing its spot instances; None for normal

    def __str__(self) -> str:
        return self.kind.value if self.region is None else f"{self.kind.value}:{self.region}"


def parse_scenario(text: str) -> Scenario:
    """`normal`, `region-down:NAME` or `spot-loss:NAME`; a ValueError names the allowed forms otherwise.
    Whether NAME is a region of the policy is the caller's check (it holds the policy)."""
    kind, _, region = text.strip().partition(":")
    allowed = "normal, region-down:REGION or spot-loss:REGION"
    try:
        parsed = ScenarioKind(kind)
    except ValueError:
        raise ValueError(f"scenario {text!r}: must be one of {allowed}") from None
    if parsed is ScenarioKind.NORMAL:
        if region:
            raise ValueError(f"scenario {text!r}: normal takes no region")
        return Scenario(parsed)
    if not region:
        raise ValueError(f"scenario {text!r}: {parsed.value} needs a region, as in {parsed.value}:us-east")
    return Scenario(parsed, region)


@dataclass(frozen=True, slots=True)
class Term:
    """One figure of a sum, in the sheet's currency per month, and how it was made, so a reader can redo it
    by hand: `formula` shows the operands (counts, hours, unit prices) and `sources` the price pages."""

    category: Category
    label: str  # what it is: "reserved g6e.xlarge", "egress to the internet"
    amount: float
    formula: str  # "2 inst x 730 h x $1.2320/h"
    sources: tuple[str, ...] = ()  # "https://aws.amazon.com/ec2/pricing/on-demand/ (2026-11-01)"

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category.value,
            "label": self.label,
            "amount": round(self.amount, 6),
            "formula": self.formula,
            "sources": list(self.sources),
        }


def _by_category(terms: tuple[Term, ...]) -> dict[Category, float]:
    sums = dict.fromkeys(Category, 0.0)
    for t in terms:
        sums[t.category] += t.amount
    return sums


@dataclass(frozen=True, slots=True)
class RegionCost:
    region: str
    terms: tuple[Term, ...]
    tokens: float  # tokens (in + out) served here per month
    unserved_tokens: float = 0.0  # demand routed here beyond what its fleet limits can run
    instances_peak: int = 0  # most instances running in any hour of the week

    @property
    def total(self) -> float:
        return sum(t.amount for t in self.terms)

    @property
    def by_category(self) -> dict[Category, float]:
        return _by_category(self.terms)

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "total": round(self.total, 6),
            "by_category": {k.value: round(v, 6) for k, v in self.by_category.items()},
            "tokens": self.tokens,
            "unserved_tokens": self.unserved_tokens,
            "instances_peak": self.instances_peak,
            "terms": [t.to_json() for t in self.terms],
        }


@dataclass(frozen=True, slots=True)
class GroupCost:
    """A client group's tokens and the cost they carry: each region's total split by the group's share of
    the tokens served there. A region serving no tokens (a standby) is carried by no group: see `idle`."""

    group: str
    tokens: float  # per month, in + out
    cost: float
    regions: Mapping[str, float] = field(default_factory=dict)  # share of the group's tokens per region

    @property
    def per_mtok(self) -> float | None:
        return self.cost / (self.tokens / 1e6) if self.tokens > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "tokens": self.tokens,
            "cost": round(self.cost, 6),
            "per_mtok": None if self.per_mtok is None else round(self.per_mtok, 6),
            "regions": dict(self.regions),
        }


@dataclass(frozen=True, slots=True)
class CostReport:
    scenario: Scenario
    currency: str
    regions: tuple[RegionCost, ...]
    groups: tuple[GroupCost, ...]
    warnings: tuple[str, ...] = ()  # unserved demand, a fleet at its limits, a group failing closed

    @property
    def total(self) -> float:
        return sum(r.total for r in self.regions)

    @property
    def tokens(self) -> float:
        return sum(r.tokens for r in self.regions)

    @property
    def per_mtok(self) -> float | None:
        return self.total / (self.tokens / 1e6) if self.tokens > 0 else None

    @property
    def idle(self) -> float:
        """Cost of regions that serve no tokens, which no group's per-token figure includes."""
        return sum(r.total for r in self.regions if r.tokens <= 0)

    @property
    def by_category(self) -> dict[Category, float]:
        return _by_category(tuple(t for r in self.regions for t in r.terms))

    def region(self, name: str) -> RegionCost:
        return next(r for r in self.regions if r.region == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": str(self.scenario),
            "currency": self.currency,
            "total": round(self.total, 6),
            "tokens": self.tokens,
            "per_mtok": None if self.per_mtok is None else round(self.per_mtok, 6),
            "idle": round(self.idle, 6),
            "by_category": {k.value: round(v, 6) for k, v in self.by_category.items()},
            "regions": [r.to_json() for r in self.regions],
            "groups": [g.to_json() for g in self.groups],
            "warnings": list(self.warnings),
        }
