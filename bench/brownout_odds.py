"""How likely a random brownout gets a region taken out, under the demo policy's probe schedule and health rules.

Run from the project root: python -m bench.brownout_odds [--runs 20000] [--share 0.3]

Each run feeds the real hysteresis (probes.health.advance) with one probe kind's results, a failure with
probability --share, on the scheduler's timing: the kind's own interval while it is steady, the policy's
fast_interval while a contradicting streak runs (as probes/scheduler.py pulls the next probe in), a random
phase and the policy's jitter. A run counts as taken out when the kind turns unhealthy within the window.
The inference and metrics probes both see the failures (liveness answers 200, as vLLM's /health does), and
either one turning unhealthy takes the region out, so the region's odds combine the two.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from controlplane.policy import HealthSettings, load_policy
from probes.health import KindHealth, advance
from probes.observation import Observation, ProbeKind

WINDOWS = (8.0, 60.0, 600.0)


def taken_out(
    rng: random.Random,
    share: float,
    window: float,
    interval: float,
    fast: float,
    jitter: float,
    health: HealthSettings,
) -> bool:
    # The first observation is a verdict of its own: start healthy, as a serving region is.
    state: KindHealth = advance(None, Observation("r", ProbeKind.INFERENCE, True, -interval, 0.01), health)
    at = rng.uniform(0, interval)
    while at < window:
        obs = Observation("r", ProbeKind.INFERENCE, rng.random() >= share, at, 0.01)
        state = advance(state, obs, health)
        if state.healthy is False:
            return True
        period = fast if state.transitioning else interval
        at += period * (1.0 + rng.uniform(-jitter, jitter))
    return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--share", type=float, default=0.3)
    args = parser.parse_args()
    policy = load_policy(Path("policies/demo.yaml"))
    probes, health = policy.probes, policy.health
    rng = random.Random(1)
    kinds = {"inference": probes.inference.interval, "metrics": probes.metrics.interval}
    print(
        f"random {args.share:.0%} brownout, demo policy: fall {health.fall}, fast interval {probes.fast_interval}s, "
        f"jitter {probes.jitter:.0%}; {args.runs:,} runs per cell"
    )
    for window in WINDOWS:
        odds = {}
        for kind, interval in kinds.items():
            hits = 0
            for _ in range(args.runs):
                hits += taken_out(
                    rng, args.share, window, interval, probes.fast_interval, probes.jitter, health
                )
            odds[kind] = hits / args.runs
        either = 1 - (1 - odds["inference"]) * (1 - odds["metrics"])
        print(
            f"  within {window:5.0f} s: inference probe {odds['inference']:6.1%}, metrics probe {odds['metrics']:6.1%}"
            f"  -> region taken out {either:6.1%}"
        )


if __name__ == "__main__":
    main()
