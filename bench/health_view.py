"""The daemon's per-observation work with 10,000 regions: fold one probe result in and re-judge its region,
and build the whole HealthView a reconcile step decides on.

Run from the project root: python -m bench.health_view. Prints figures; asserts nothing.
"""

from __future__ import annotations

import gc
import random
import time

from controlplane.policy import Policy
from probes.health import HealthTracker, health_view, region_health
from probes.observation import Observation, ProbeKind

REGIONS, OBSERVATIONS = 10_000, 50_000


def build() -> Policy:
    return Policy.model_validate(
        {
            "regions": [
                {"name": f"r{i}", "endpoint": f"http://10.{i // 250}.{i % 250}.1:8000", "jurisdiction": "US"}
                for i in range(REGIONS)
            ],
            "client_groups": [{"name": "all", "allowed_jurisdictions": ["US"]}],
            "default_client_group": "all",
            "services": [{"name": "chat", "dns_name": "chat.llm.example", "regions": ["r0"]}],
        }
    )


def main() -> None:
    policy = build()
    tracker = HealthTracker()
    rng = random.Random(1)
    kinds = list(ProbeKind)
    for i in range(REGIONS):
        for kind in kinds:
            tracker.observe(Observation(f"r{i}", kind, True, 1.0, 0.01, ttft_s=0.05), policy.health)
    stream = [
        Observation(f"r{rng.randrange(REGIONS)}", rng.choice(kinds), rng.random() > 0.05, 2.0 + n / 1e4, 0.01)
        for n in range(OBSERVATIONS)
    ]
    gc.collect()
    gc.freeze()
    start = time.process_time()
    for obs in stream:  # what Daemon.observe does for every probe result
        tracker.observe(obs, policy.health)
        region_health(tracker.kinds, policy, obs.region, obs.at)
    per_obs = (time.process_time() - start) / OBSERVATIONS * 1e6
    start = time.process_time()
    health_view(tracker.kinds, policy, 7.0)
    view_ms = (time.process_time() - start) * 1000
    print(f"health with {REGIONS} regions x {len(kinds)} probe kinds ({len(tracker.kinds)} tracked):")
    print(f"  one observation folded in and its region re-judged: {per_obs:.1f} us of CPU")
    print(f"    (at 5,000 probe results/s: {per_obs * 5000 / 1e4:.1f} % of one core)")
    print(f"  whole HealthView for a reconcile step: {view_ms:.1f} ms of CPU")


if __name__ == "__main__":
    main()
