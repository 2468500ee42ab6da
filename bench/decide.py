"""CPU time of decide() for 1,000 services over 20 regions (goal: <= 50 ms per call). The worst case is
distinct 4..20-region subsets x 2 client groups: 2,000 group plans that share little."""

from __future__ import annotations

import random
import statistics
import time
from types import MappingProxyType

from controlplane.daemon import settle_heap
from controlplane.engine import decide
from controlplane.policy import Policy
from probes.health import HealthView, RegionHealth, State

SERVICES, REGIONS, ROUNDS = 1000, 20, 30


def subset(seed: int) -> list[int]:
    rng = random.Random(seed)
    return sorted(rng.sample(range(REGIONS), rng.randint(4, REGIONS)))


def build(groups: int = 2, all_regions: bool = False) -> Policy:
    regions = [
        {
            "name": f"r{i}",
            "endpoint": f"http://10.0.{i}.1:8000",
            "jurisdiction": "EU" if i % 2 else "US",
            "capacity": 50 + i,
            "priority": i,
        }
        for i in range(REGIONS)
    ]
    services = [
        {
            "name": f"svc{s}",
            "dns_name": f"svc{s}.llm.example",
            "mode": "active-passive" if s % 4 == 0 else "active-active",
            # Varied region subsets (unless all_regions) and shift limits, so the per-call memo of identical
            # groups is not flattered.
            "regions": [f"r{i}" for i in (range(REGIONS) if all_regions else subset(s))],
            "max_shift": 10 + s % 30,
        }
        for s in range(SERVICES)
    ]
    return Policy.model_validate(
        {
            "regions": regions,
            "client_groups": [
                {"name": "global", "allowed_jurisdictions": ["EU", "US"]},
                {"name": "eu", "sources": ["10.1.0.0/16"], "allowed_jurisdictions": ["EU"]},
            ][:groups],
            "default_client_group": "global",
            "services": services,
        }
    )


def health(rng: random.Random, at: float) -> HealthView:
    regions = {}
    for i in range(REGIONS):
        state = State.UNHEALTHY if rng.random() < 0.1 else State.HEALTHY
        regions[f"r{i}"] = RegionHealth(
            f"r{i}", state, rng.uniform(0.2, 1.0) if state is State.HEALTHY else 0.0, 0.0, ()
        )
    return HealthView(at, MappingProxyType(regions))


def run(policy: Policy, churn: bool, gap: float = 1.0) -> list[float]:
    rng = random.Random(7)
    previous = None
    timings = []
    view = health(rng, 1000.0)
    for step in range(ROUNDS):
        now = 1000.0 + step * gap
        if churn:
            view = health(rng, now)
        # CPU time of this process: decide() is pure computation, and other processes on the box don't count.
        start = time.process_time()
        previous = decide(policy, view, previous, now)
        timings.append((time.process_time() - start) * 1000)
    return sorted(timings)


def reference_ms() -> float:
    start = time.process_time()
    sum(i * i for i in range(3_000_000))
    return (time.process_time() - start) * 1000


def main() -> None:
    shapes = (
        ("20 regions each, 1 client group", build(groups=1, all_regions=True)),
        ("4..20 regions each, 2 client groups", build(groups=2)),
    )
    # As the daemon does after loading a policy: long-lived objects out of the collector's scans, and a
    # young generation that is not scanned every 700 allocations.
    settle_heap()
    print(f"decide() CPU time per call, {SERVICES} services, {ROUNDS} calls each (goal <= 50 ms)")
    print(
        f"  machine reference: {reference_ms():.0f} ms of CPU for a fixed loop (VM speed drifts; compare runs by it)"
    )
    for shape, policy in shapes:
        plans = len(policy.services) * len(policy.client_groups)
        print(f"  {SERVICES} services, {shape}: {plans} group plans per call")
        for label, churn, gap in (
            ("steady health", False, 1.0),
            ("10% of regions flip every call", True, 1.0),
            # The daemon steps on every flip and override POST: damping then bites in most groups.
            ("the same, calls 13 ms apart", True, 0.013),
        ):
            t = run(policy, churn, gap)
            print(
                f"    {label:<32} p50 {statistics.median(t):6.1f} ms  p90 {t[int(0.9 * len(t))]:6.1f} ms"
                f"  max {t[-1]:6.1f} ms"
            )


if __name__ == "__main__":
    main()
