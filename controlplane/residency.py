"""Residency gate: prove a plan sends no client group outside its allowed jurisdictions."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.plan import RoutingPlan
from controlplane.policy import Policy


@dataclass(frozen=True, slots=True)
class Violation:
    service: str
    group: str
    region: str
    weight: int
    why: str

    def __str__(self) -> str:
        return f"{self.service}/{self.group}: {self.weight}% to {self.region}: {self.why}"


def check_plan(policy: Policy, plan: RoutingPlan) -> tuple[Violation, ...]:
    """Every weighted (service, group, region) must be a region of the service inside the group's
    jurisdictions. Independent of the engine on purpose: a second, simpler proof of the same rule."""
    services = {s.name: s for s in policy.services}
    groups = {g.name: g for g in policy.client_groups}
    regions = {r.name: r for r in policy.regions}
    found: list[Violation] = []
    for g in plan:
        for w in g.weights:
            if w.weight <= 0:
                continue
            service, group, region = services.get(g.service), groups.get(g.group), regions.get(w.region)
            if service is None or group is None or region is None:
                found.append(Violation(g.service, g.group, w.region, w.weight, "not in the policy"))
            elif w.region not in service.regions:
                found.append(
                    Violation(g.service, g.group, w.region, w.weight, "region does not serve the service")
                )
            elif region.jurisdiction not in group.allowed_jurisdictions:
                found.append(
                    Violation(
                        g.service,
                        g.group,
                        w.region,
                        w.weight,
                        f"jurisdiction {region.jurisdiction} not in {list(group.allowed_jurisdictions)}",
                    )
                )
    return tuple(found)
