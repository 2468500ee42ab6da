"""Fault -> Route 53 record change on the demo stack: the daemon with the demo's probe and health settings
drives a hosted zone on moto_server through chaos.faultproxy; 20 trials by default.

Run from the project root: python -m bench.route53_e2e [--trials 20]. Prints figures; asserts nothing.
Goal (issue 6): p99 <= 2 s with demo probe settings. A trial's time runs from setting the fault to the
zone, read from moto directly (not through the proxy), holding the region at weight 0 in every weighted
set it is in. Each trial starts in steady state: every region at full weight, the zone holding the plan,
and the provider's min_interval passed since its last write. The services' slow start is 1 s (demo: 5 s),
as in the e2e tests, so that recoveries between trials fit the time box; it plays no part in a failover.
API calls per decision: requests the proxy saw over the whole run (recoveries included) per plan change
of the daemon; peak requests/s over the whole run. Needs moto_server (pip's moto[server]).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config

from bench.failover import MODES, REGIONS, settled
from chaos.emulators import moto_on_path
from chaos.faultproxy import FaultProxy
from chaos.loopback import free_port, loopback_policy
from chaos.simregion import FaultMode, FaultSpec
from controlplane.demo import DemoStack, demo_stack
from controlplane.providers.route53 import Layout, Route53Provider, route53_weight
from controlplane.stats import quantile

REGION_PORT = 18600  # demo regions use 8000, the e2e tests 18400, bench.failover 18500
ZONE = "llm.internal"  # the demo service's chat.llm.internal lies in it
OWNER = "bench"
TRIAL_LIMIT = 10.0
POLL = 0.02


class Zone:
    """The hosted zone as moto holds it, read directly: each group's weighted set, region -> weight."""

    def __init__(self, url: str) -> None:
        session = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench")
        self.client = session.client(
            "route53", endpoint_url=url, region_name="us-east-1", config=Config(retries={"max_attempts": 1})
        )
        self.zone_id = self.client.create_hosted_zone(Name=ZONE, CallerReference="bench")["HostedZone"]["Id"]
        self.layout = Layout(OWNER, self.zone_id.removeprefix("/hostedzone/"))

    def _sets(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        args: dict[str, Any] = {"HostedZoneId": self.zone_id}
        while True:
            reply = self.client.list_resource_record_sets(**args)
            for rrset in reply["ResourceRecordSets"]:
                record = self.layout.parse_member(rrset) if self.layout.owns(rrset) else None
                if record is not None:
                    out.setdefault(record.group, {})[record.region] = record.weight
            if not reply["IsTruncated"]:
                return out
            args.update(
                StartRecordName=reply["NextRecordName"],
                StartRecordType=reply["NextRecordType"],
                StartRecordIdentifier=reply.get("NextRecordIdentifier", ""),
            )

    async def sets(self) -> dict[str, dict[str, int]]:
        return await asyncio.to_thread(self._sets)


def planned(stack: DemoStack) -> dict[str, dict[str, int]]:
    """The daemon's plan for the demo service in Route 53's weights."""
    return {
        g.group: {w.region: route53_weight(w.weight) for w in g.weights}
        for g in stack.daemon.plan or ()
        if g.service == "chat"
    }


async def steady(stack: DemoStack, zone: Zone, proxy: FaultProxy) -> None:
    await settled(stack)
    deadline = time.monotonic() + 20
    while await zone.sets() != planned(stack):
        if time.monotonic() > deadline:
            raise RuntimeError("the zone did not come to hold the plan")
        await asyncio.sleep(0.05)
    # No write for the provider's min_interval (scores move weights now and then), so a failover starts
    # unpaced; one that still lands within it is counted as deferred.
    while True:
        writes = proxy.requests["ChangeResourceRecordSets"]
        await asyncio.sleep(Route53Provider.tuning.min_interval)
        if proxy.requests["ChangeResourceRecordSets"] == writes:
            return


async def trial(stack: DemoStack, zone: Zone, region: str, mode: FaultMode) -> float:
    sim = stack.fleet[region]
    start = time.perf_counter()
    await sim.set_fault(FaultSpec(mode=mode))
    try:
        while time.perf_counter() - start < TRIAL_LIMIT:
            held = [ws[region] for ws in (await zone.sets()).values() if region in ws]
            if held and not any(held):
                return time.perf_counter() - start
            await asyncio.sleep(POLL)
        raise RuntimeError(f"{region} ({mode}) still weighted in the zone after {TRIAL_LIMIT:g} s")
    finally:
        await sim.set_fault(FaultSpec())


def demo_with_route53(proxy_url: str) -> str:
    """The demo policy on free ports, its eu group placed in Route 53's EU, and a zone on the proxy."""
    dns_port = free_port()
    data = yaml.safe_load(loopback_policy(REGION_PORT, dns_port, f"127.0.0.1:{free_port()}"))
    for group in data["client_groups"]:
        if group["name"] == "eu":
            group["geo"] = {"continents": ["EU"]}
    data["providers"]["route53"] = {"zone": ZONE, "endpoint_url": proxy_url, "owner": OWNER}
    return str(yaml.safe_dump(data, sort_keys=False))


async def bench(url: str, trials: int) -> None:
    zone = await asyncio.to_thread(Zone, url)
    async with FaultProxy(url) as proxy:
        with tempfile.TemporaryDirectory() as tmp:
            policy_path = Path(tmp) / "policy.yaml"
            policy_path.write_text(demo_with_route53(proxy.url), encoding="utf-8")
            async with demo_stack(
                policy_path, Path(tmp) / "state", haproxy=False, api_port=free_port(), handle_signals=False
            ) as stack:
                await steady(stack, zone, proxy)
                proxy.reset_stats()
                decisions = stack.daemon.counters.plan_changes
                results: dict[str, list[float]] = {m.value: [] for m in MODES}
                first_writes: list[int] = []
                deferred = 0
                pacing = stack.daemon.reconciler.stats[f"route53:{ZONE}"]
                for i in range(trials):
                    await steady(stack, zone, proxy)
                    mode, region = MODES[i % len(MODES)], REGIONS[(i // len(MODES)) % len(REGIONS)]
                    writes, held_back = proxy.requests["ChangeResourceRecordSets"], pacing.deferred
                    took = await trial(stack, zone, region, mode)
                    first_writes.append(proxy.requests["ChangeResourceRecordSets"] - writes)
                    deferred += pacing.deferred > held_back
                    results[mode.value].append(took)
                    print(
                        f"  trial {i + 1:2d}: {region:<10} {mode.value:<11} weight 0 in Route 53 after "
                        f"{took * 1000:6.0f} ms ({first_writes[-1]} ChangeResourceRecordSets"
                        f"{', deferred by min_interval' if pacing.deferred > held_back else ''})",
                        flush=True,
                    )
                await steady(stack, zone, proxy)
                decisions = stack.daemon.counters.plan_changes - decisions
                stats = proxy.stats()
                policy = stack.daemon.policy
    everything = [t for ts in results.values() for t in ts]
    p, h = policy.probes, policy.health
    print(
        f"fault -> Route 53 record change (moto, read directly), {len(everything)} trials "
        f"(probe every {p.interval}s, fast {p.fast_interval}s, timeout {p.timeout}s, "
        f"rise {h.rise}, fall {h.fall}):"
    )
    print(
        f"  all        p50 {statistics.median(everything) * 1000:5.0f} ms  "
        f"p99 {(quantile(everything, 0.99) or 0.0) * 1000:5.0f} ms  max {max(everything) * 1000:5.0f} ms"
        f"   (goal p99 <= 2000 ms; {deferred} deferred by min_interval)"
    )
    for name, ts in results.items():
        if ts:
            print(
                f"  {name:<10} p50 {statistics.median(ts) * 1000:5.0f} ms  max {max(ts) * 1000:5.0f} ms"
                f"  ({len(ts)} trials)"
            )
    requests: dict[str, int] = stats["requests"]
    writes = requests.get("ChangeResourceRecordSets", 0)
    print(
        f"API calls, whole run (failovers and recoveries): {stats['total']} requests {requests}, "
        f"{decisions} plan changes -> {stats['total'] / max(decisions, 1):.2f} requests and "
        f"{writes / max(decisions, 1):.2f} ChangeResourceRecordSets per decision; "
        f"from fault to record change: {statistics.mean(first_writes):.2f} ChangeResourceRecordSets; "
        f"peak {stats['peak_rate']} requests/s (limit 5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    trials = parser.parse_args().trials
    # Dummy credentials for the daemon's provider, which takes boto3's standard chain: moto checks none.
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true"
    )
    with moto_on_path() as url:
        asyncio.run(bench(url, trials))


if __name__ == "__main__":
    main()
