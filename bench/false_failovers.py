"""False failovers on the demo stack while 5 % of all probes fail at random, then a real outage.

Run from the project root: python -m bench.false_failovers [--duration 300] [--loss 0.05].
Goal: 0 false failovers in 5 minutes, and the real outage still leaves DNS within 2 s.
A false failover is a plan change that takes a healthy region's weight to 0 (read from audit.jsonl).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from chaos.loopback import free_port, loopback_policy, resolve
from chaos.simregion import FaultMode, FaultSpec
from controlplane.demo import demo_stack
from controlplane.policy import ProbeSettings, Region
from probes.http import Clock
from probes.observation import Observation, ProbeKind
from probes.scheduler import DEFAULT_PROBES, ProbeFunction

REGION_PORT = 18600


def lossy(
    probes: Mapping[ProbeKind, ProbeFunction], loss: float, rng: random.Random
) -> dict[ProbeKind, ProbeFunction]:
    """The real probes, but a `loss` fraction of their results replaced by failures, as a flaky network would."""

    def wrap(probe: ProbeFunction) -> ProbeFunction:
        async def flaky(
            session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Clock
        ) -> Observation:
            obs = await probe(session, region, settings, now)
            if rng.random() < loss:
                return Observation(
                    obs.region, obs.kind, False, obs.at, obs.latency_s, "injected random failure"
                )
            return obs

        return flaky

    return {kind: wrap(probe) for kind, probe in probes.items()}


def count_false_failovers(audit: Path) -> tuple[int, int]:
    """(false failovers, plan changes) in the audit log."""
    false = changes = 0
    for line in audit.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event["event"] != "plan_changed" or not event["before"]:
            continue
        changes += 1
        for service, groups in event["after"].items():
            for group, weights in groups.items():
                before = event["before"].get(service, {}).get(group, {})
                false += sum(1 for region, w in weights.items() if w == 0 and before.get(region, 0) > 0)
    return false, changes


async def main(duration: float, loss: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dns_port = free_port()
        policy_path = Path(tmp) / "policy.yaml"
        policy_path.write_text(loopback_policy(REGION_PORT, dns_port, f"127.0.0.1:{free_port()}"))
        async with demo_stack(
            policy_path,
            Path(tmp) / "state",
            haproxy=False,
            api_port=free_port(),
            handle_signals=False,
            probes=lossy(DEFAULT_PROBES, loss, random.Random(2026)),
        ) as stack:
            daemon = stack.daemon
            await daemon.scheduler.first_round.wait()
            print(f"running {duration:.0f} s with {loss:.0%} of probes failing at random ...", flush=True)
            await asyncio.sleep(duration)
            audit = Path(tmp) / "state" / "audit.jsonl"
            false, changes = count_false_failovers(audit)
            results = sum(daemon.counters.observations.values())
            failed = sum(n for (_, _, ok), n in daemon.counters.observations.items() if not ok)
            address = daemon.policy.region("us-east").dns_address
            start = time.perf_counter()
            await stack.fleet["us-east"].set_fault(FaultSpec(mode=FaultMode.DOWN))
            while address in await resolve(dns_port, count=30):
                if time.perf_counter() - start > 10:
                    raise RuntimeError("the real outage was not caught within 10 s")
            caught = time.perf_counter() - start
    print(f"false failovers over {duration:.0f} s with {loss:.0%} random probe failures: {false} (goal 0)")
    print(
        f"  probe results {results}, failed {failed} ({failed / max(1, results):.1%}); plan changes {changes}"
    )
    print(f"  then a real outage (us-east down) left DNS after {caught * 1000:.0f} ms (goal <= 2000 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--loss", type=float, default=0.05)
    args = parser.parse_args()
    asyncio.run(main(args.duration, args.loss))
