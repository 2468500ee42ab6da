"""What the plane costs right now: the output tokens the servers count, spread as the current weights spread
traffic, priced for one hour by the cost model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.cost.model import hourly_cost
from controlplane.cost.prices import PriceBook
from controlplane.cost.report import Term
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy


@dataclass(frozen=True, slots=True)
class RegionLiveCost:
    region: str
    share: float  # of all weight in the plan, 0..1
    tokens_out_per_s: float  # the observed total x share: what the weights send here
    instances: int  # running at that rate: the reserved ones at least
    per_hour: float
    terms: tuple[Term, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "per_hour": round(self.per_hour, 6),
            "tokens_out_per_s": round(self.tokens_out_per_s, 3),
            "instances": self.instances,
            "share": round(self.share, 6),
        }


@dataclass(frozen=True, slots=True)
class LiveCost:
    currency: str
    tokens_out_per_s: float  # observed over every region, priced or not
    regions: tuple[RegionLiveCost, ...]  # each region with a fleet, in policy order

    @property
    def per_hour(self) -> float:
        return sum(r.per_hour for r in self.regions)

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "per_hour": round(self.per_hour, 6),
            "tokens_out_per_s": round(self.tokens_out_per_s, 3),
            "regions": {r.region: r.to_json() for r in self.regions},
        }


def weight_shares(plan: RoutingPlan | None) -> dict[str, float]:
    """Each region's weight summed over every (service, group) plan, over all weight in the plan. Every
    group counts alike: the servers' counters do not say which group a token went to."""
    sums: dict[str, int] = {}
    for group in plan or ():
        for w in group.weights:
            sums[w.region] = sums.get(w.region, 0) + w.weight
    total = sum(sums.values())
    return {region: weight / total for region, weight in sums.items()} if total else {}


def live_cost(
    policy: Policy, plan: RoutingPlan | None, rates: Mapping[str, float | None], book: PriceBook
) -> LiveCost | None:
    """The hourly cost of each region with a fleet, at the observed total output rate (regions without a
    figure count as 0) times the region's share of the current weights. None when no region has a fleet.
    Raises PriceMissing when the book lacks a figure (the daemon checks the fleets before it routes)."""
    if not any(r.fleet for r in policy.regions):
        return None
    total = sum(rate for rate in rates.values() if rate is not None and rate > 0)
    shares = weight_shares(plan)
    rows: list[RegionLiveCost] = []
    for region in policy.regions:
        if region.fleet is None:
            continue
        share = shares.get(region.name, 0.0)
        tokens = total * share
        hour = hourly_cost(region, book, tokens)
        rows.append(RegionLiveCost(region.name, share, tokens, hour.instances, hour.per_hour, hour.terms))
    return LiveCost(book.currency, total, tuple(rows))
