"""What routing knows about the model weights in each region's bucket: pure, built from sync reports.

One `Artifact` per (region, model). The engine asks `ArtifactView.lacks`: a region gets traffic for a service
only when the policy's version of the service's model is verified in its bucket (the sync's plan said
`current`, or this daemon's sync promoted it there).

An unreachable bucket (its listing or its marker could not be read) changes nothing the last successful
survey established: weights that landed do not vanish because the bucket's API is down, and the servers
load them from their own copies. So a verified answer keeps routing, with the error and the age of that
answer in /status and /metrics for an operator to judge. A bucket never surveyed has no answer: no traffic,
as for a region whose probes have not reported yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from controlplane.policy import Model, Policy, Region
from controlplane.weights.planner import residency_rule

if TYPE_CHECKING:  # the engine imports this module: it must not pull in the cloud SDKs
    from controlplane.weights.sync import SyncReport


@dataclass(frozen=True, slots=True)
class Artifact:
    region: str
    model: str
    version: str  # the version this answer is about: the policy's when it was surveyed
    verified: bool = False  # CURRENT names `version` and every file matched the verified marker
    blocked: str | None = None  # the residency rule refusing a copy here
    surveyed_at: float | None = None  # wall time the bucket was last read; None: never
    synced_at: float | None = None  # wall time of the last attempt, whatever came of it
    error: str | None = None  # what the last attempt could not do; None when it went through
    bytes_copied: int = 0  # moved into this bucket by this daemon, every sync of this model summed
    current: str | None = None  # what the bucket's CURRENT named when last read (any version); None: absent


def model_pairs(policy: Policy) -> list[tuple[str, str]]:
    """Every (region, model) the policy has weights for: what an ArtifactView is kept `only` to."""
    return [(r.name, m.name) for m in policy.models for r in policy.model_regions(m)]


def forbidden(region: Region, model: Model) -> str | None:
    """Why `model` may never be served from `region` (it may not be stored there), or None. Policy alone
    decides this, so it holds even where no bucket was looked at."""
    rule = residency_rule(model.name, model.jurisdictions, region.name, region.jurisdiction)
    return None if rule is None else f"weights may not be stored here: {rule}"


@dataclass(frozen=True, slots=True)
class ArtifactView:
    entries: Mapping[tuple[str, str], Artifact] = field(default_factory=dict)  # by (region, model)

    def get(self, region: str, model: str) -> Artifact | None:
        return self.entries.get((region, model))

    def lacks(self, region: Region, model: Model) -> str | None:
        """Why `region` may not serve `model` now, or None when its bucket holds `model.version` verified."""
        if (rule := forbidden(region, model)) is not None:
            return rule
        found = self.entries.get((region.name, model.name))
        wanted = f"model {model.name} version {model.version}"
        if found is None or found.surveyed_at is None:
            why = f"; last error: {found.error}" if found is not None and found.error else ""
            return f"no verified weights: {wanted} not surveyed yet{why}"
        if found.version != model.version:
            return f"no verified weights: wants {wanted}, bucket last surveyed for version {found.version}"
        if not found.verified:
            return f"no verified weights: {wanted} is not current and verified in the bucket"
        return None

    def with_report(self, report: SyncReport, regions: Iterable[str], now: float) -> ArtifactView:
        """This view after `report` for the model's serving `regions` (the policy's model_regions)."""
        entries = dict(self.entries)
        results = {d.plan.region: d for d in report.destinations}
        for region in regions:
            key = (region, report.model)
            old = entries.get(key)
            same = old if old is not None and old.version == report.version else None
            result = results.get(region)
            if result is None or not result.surveyed:
                # Nothing read: the source (report.error) or this bucket failed. Keep what was known.
                error = report.error or ("; ".join(result.failures) if result else "not surveyed")
                kept = same or Artifact(region, report.model, report.version)
                entries[key] = replace(kept, synced_at=now, error=error)
                continue
            entries[key] = Artifact(
                region,
                report.model,
                report.version,
                verified=result.ok,
                blocked=result.plan.blocked,
                surveyed_at=now,
                synced_at=now,
                error="; ".join(result.failures) or None,
                bytes_copied=(old.bytes_copied if old is not None else 0) + result.bytes_copied,
                current=report.version if result.promoted else result.plan.holds,
            )
        return ArtifactView(entries)

    def only(self, keep: Iterable[tuple[str, str]]) -> ArtifactView:
        """Just the (region, model) pairs still in the policy: a removed region or model says nothing."""
        wanted = set(keep)
        return ArtifactView({k: v for k, v in self.entries.items() if k in wanted})
