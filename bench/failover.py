"""Failover time on the demo stack: from injecting a fault to the region leaving DNS answers (20 trials).

Run from the project root: python -m bench.failover [--trials 20]. Goal: p50 <= 1 s, p99 <= 2 s.
The region counts as gone once a batch of 30 answers for a global client holds none of its address
(a region at 20 % weight survives such a batch by chance 0.1 % of the time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from chaos.loopback import free_port, loopback_policy, resolve
from chaos.simregion import FaultMode, FaultSpec
from controlplane.demo import DemoStack, demo_stack
from controlplane.haproxy_process import haproxy_available
from controlplane.stats import quantile

REGION_PORT = 18500
BATCH = 30
MODES = (FaultMode.DOWN, FaultMode.HANG, FaultMode.ERRORS, FaultMode.WRONG_MODEL)
REGIONS = ("us-east", "us-west", "eu-west", "eu-central")


async def settled(stack: DemoStack) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        plan = stack.daemon.plan
        group = plan.group("chat", "global") if plan else None
        if group and all(
            w.weight > 0 and "slow start" not in w.reason and "damped" not in w.reason for w in group.weights
        ):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the stack did not settle with every region at full weight")


async def trial(stack: DemoStack, dns_port: int, region: str, mode: FaultMode) -> float:
    address = stack.daemon.policy.region(region).dns_address
    sim = stack.fleet[region]
    start = time.perf_counter()
    await sim.set_fault(FaultSpec(mode=mode))
    try:
        while time.perf_counter() - start < 10:
            if address not in await resolve(dns_port, count=BATCH):
                return time.perf_counter() - start
        raise RuntimeError(f"{region} ({mode}) still answered after 10 s")
    finally:
        await sim.set_fault(FaultSpec())


async def main(trials: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dns_port, api_port = free_port(), free_port()
        hap = f"127.0.0.1:{free_port()}"
        policy_path = Path(tmp) / "policy.yaml"
        policy_path.write_text(loopback_policy(REGION_PORT, dns_port, hap))
        async with demo_stack(
            policy_path,
            Path(tmp) / "state",
            haproxy=haproxy_available(),
            haproxy_frontend=f"127.0.0.1:{free_port()}",
            api_port=api_port,
            handle_signals=False,
        ) as stack:
            results: dict[str, list[float]] = {m.value: [] for m in MODES}
            for i in range(trials):
                await settled(stack)
                mode, region = MODES[i % len(MODES)], REGIONS[(i // len(MODES)) % len(REGIONS)]
                took = await trial(stack, dns_port, region, mode)
                results[mode.value].append(took)
                print(
                    f"  trial {i + 1:2d}: {region:<10} {mode.value:<11} gone from DNS after {took * 1000:6.0f} ms",
                    flush=True,
                )
    everything = [t for ts in results.values() for t in ts]
    p = stack.daemon.policy.probes
    print(
        f"failover, fault -> DNS answer, {len(everything)} trials (probe every {p.interval}s, fast {p.fast_interval}s, "
        f"timeout {p.timeout}s, fall {stack.daemon.policy.health.fall}):"
    )
    print(
        f"  all        p50 {statistics.median(everything) * 1000:5.0f} ms  p99 {(quantile(everything, 0.99) or 0.0) * 1000:5.0f} ms"
        f"  max {max(everything) * 1000:5.0f} ms   (goal p50 <= 1000 ms, p99 <= 2000 ms)"
    )
    for mode, ts in results.items():
        if ts:
            print(
                f"  {mode:<10} p50 {statistics.median(ts) * 1000:5.0f} ms  max {max(ts) * 1000:5.0f} ms  ({len(ts)} trials)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    asyncio.run(main(parser.parse_args().trials))
