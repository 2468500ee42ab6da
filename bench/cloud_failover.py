"""Cloud providers, 50 regions: API calls and seconds per decision for Route 53 (moto_server), Cloud DNS
(tests/fakes/clouddns.py) and Global Accelerator (tests/fakes/globalaccelerator.py), each API behind its own
chaos.faultproxy so that every request's arrival is timed the same way, with the production pacing.

Steps per provider, driven through the Reconciler with plans built here (no probing: the regions' TEST-NET
addresses are never reached): create (the first apply), one region failing over (its weight 0, its share
spread over the others), the same plan again, and the same plan after a forced re-read.

Run from the project root: python -m bench.cloud_failover [--json]. Prints a table (or one JSON line per
step); asserts nothing. Requests by operation come from the proxy for Route 53, from the fake's own request
log for Cloud DNS and call log for Global Accelerator. Goals (issue 6): one change call per zone per decision,
zero writes when nothing changed, at most 5 requests in any second including reads. Needs moto_server
(pip's moto[server]). Global Accelerator has about 30 Regions, so 50 endpoint groups on one listener cannot
exist; the fake takes synthetic Region names (zz-bencha-0, ...) to measure the provider at this scale anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import boto3
from google.oauth2.credentials import Credentials

from chaos.emulators import moto_on_path
from chaos.faultproxy import FaultProxy
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import ManagedProvider
from controlplane.providers.clouddns import PAGE_SIZE, CloudDnsProvider
from controlplane.providers.globalaccelerator import GlobalAcceleratorProvider
from controlplane.providers.route53 import Route53Provider
from controlplane.reconciler import Reconciler
from tests.fakes.clouddns import FakeCloudDns, Logged
from tests.fakes.globalaccelerator import FakeGlobalAccelerator

ZONE = "llm.example.com"
PROJECT, MANAGED_ZONE = "bench-project", "llm-zone"
REGIONS = 50  # odd ones EU, even ones US
FAILING = "r01"
MOTO_START = 30.0


def region_names() -> list[str]:
    return [f"r{i:02d}" for i in range(REGIONS)]


def aws_region(region: str) -> str:
    """A synthetic AWS Region name, unique per region; one digit at the end, as every real one has."""
    tens, units = divmod(int(region[1:]), 10)
    return f"zz-bench{chr(ord('a') + tens)}-{units}"


def policy(route53: str, cloud_dns: str, global_accelerator: str, listener_arn: str) -> Policy:
    regions = [
        {
            "name": name,
            "endpoint": f"http://198.51.100.{i + 1}:8000",
            "jurisdiction": "EU" if i % 2 else "US",
        }
        for i, name in enumerate(region_names())
    ]
    return Policy.model_validate(
        {
            "version": 1,
            "regions": regions,
            "client_groups": [
                {
                    "name": "eu",
                    "geo": {"continents": ["EU"], "gcp_regions": ["europe-west1"]},
                    "allowed_jurisdictions": ["EU"],
                },
                {
                    "name": "global",
                    # Cloud DNS answers a location without an item of its own with the nearest item.
                    "geo": {"gcp_regions": ["us-east1"]},
                    "allowed_jurisdictions": ["US", "EU"],
                },
            ],
            "default_client_group": "global",
            "services": [{"name": "chat", "dns_name": f"chat.{ZONE}", "regions": region_names()}],
            "providers": {
                "route53": {"zone": ZONE, "endpoint_url": route53, "owner": "bench"},
                "cloud_dns": {
                    "project": PROJECT,
                    "managed_zone": MANAGED_ZONE,
                    "api_endpoint": cloud_dns,
                    "owner": "bench",
                },
                "global_accelerator": {
                    "endpoint_url": global_accelerator,
                    "listener_arn": listener_arn,
                    "service": "chat",
                    "client_group": "global",
                    "endpoint_groups": {name: aws_region(name) for name in region_names()},
                },
            },
        }
    )


def spread(names: list[str], down: frozenset[str]) -> tuple[RouteWeight, ...]:
    """Whole percents over the live regions, as evenly as they go (the engine's plans are whole percents)."""
    live = [n for n in names if n not in down]
    share, extra = divmod(100, len(live))
    weights = {n: share + (i < extra) for i, n in enumerate(live)}
    return tuple(RouteWeight(n, weights.get(n, 0), "bench") for n in names)


def plan(p: Policy, down: frozenset[str] = frozenset()) -> RoutingPlan:
    eu = [r.name for r in p.regions if r.jurisdiction == "EU"]
    everyone = [r.name for r in p.regions]
    return RoutingPlan(
        time.time(),
        (
            GroupPlan("chat", "eu", GroupMode.NORMAL, spread(eu, down)),
            GroupPlan("chat", "global", GroupMode.NORMAL, spread(everyone, down)),
        ),
    )


def cloud_dns_operation(entry: Logged) -> str:
    """The v1 method a logged request called, by the path's tail (the fake serves no other)."""
    tail = entry.path.rsplit("/managedZones/", 1)[-1].split("/")
    if len(tail) == 1:
        return "managedZones.get"
    if tail[1] == "rrsets":
        return "resourceRecordSets.list" if len(tail) == 2 else "resourceRecordSets.get"
    return "changes.create" if entry.method == "POST" else "changes.get"


@dataclass
class Bench:
    """One provider, the proxy in front of its API, and how to count its API's requests by operation."""

    provider: ManagedProvider
    proxy: FaultProxy
    operations: Callable[[], Counter[str]]


def route53_bench(p: Policy, proxy: FaultProxy) -> Bench:
    session = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench")
    provider = Route53Provider(p, p.providers.route53_list[0], session=session)
    return Bench(provider, proxy, lambda: Counter(proxy.requests))


def cloud_dns_bench(p: Policy, proxy: FaultProxy, fake: FakeCloudDns) -> Bench:
    token = Credentials(token="bench")  # type: ignore[no-untyped-call]
    provider = CloudDnsProvider(p, p.providers.cloud_dns_list[0], credentials=token)
    return Bench(provider, proxy, lambda: Counter(map(cloud_dns_operation, fake.log)))


def global_accelerator_bench(p: Policy, proxy: FaultProxy, fake: FakeGlobalAccelerator) -> Bench:
    provider = GlobalAcceleratorProvider(p, p.providers.global_accelerator_list[0])
    return Bench(provider, proxy, lambda: Counter(call.operation for call in fake.calls))


async def run(bench: Bench, p: Policy) -> list[dict[str, Any]]:
    provider, proxy = bench.provider, bench.proxy
    await provider.start()
    reconciler = Reconciler([provider])
    down = frozenset({FAILING})
    steps = [
        ("create", plan(p), False),
        (f"fail over {FAILING}", plan(p, down), False),
        ("unchanged", plan(p, down), False),
        ("re-read, unchanged", plan(p, down), True),
    ]
    rows = []
    try:
        for step, target, reread in steps:
            # Each step is a new decision: the provider's min_interval would otherwise defer it.
            await asyncio.sleep(provider.tuning.min_interval)
            if reread:
                reconciler.forget(provider.name)
            proxy.reset_stats()
            before = bench.operations()
            started = time.monotonic()
            (outcome,) = await reconciler.reconcile(p, target)
            seconds = time.monotonic() - started
            requests = bench.operations() - before
            rows.append(
                {
                    "provider": provider.name,
                    "step": step,
                    "changes": len(outcome.changes),
                    "error": outcome.error,
                    "seconds": round(seconds, 3),
                    "requests": dict(sorted(requests.items())),
                    "total": sum(requests.values()),
                    "proxied": sum(proxy.requests.values()),
                    "peak_per_second": proxy.peak_rate(),
                }
            )
    finally:
        await provider.close()
    return rows


async def bench_all(moto: str) -> list[dict[str, Any]]:
    client = boto3.client(
        "route53",
        endpoint_url=moto,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    await asyncio.to_thread(client.create_hosted_zone, Name=ZONE, CallerReference="bench")
    async with AsyncExitStack() as stack:
        cloud_dns = await stack.enter_async_context(FakeCloudDns(page_size=PAGE_SIZE))
        cloud_dns.add_zone(PROJECT, MANAGED_ZONE, f"{ZONE}.")
        ga = await stack.enter_async_context(FakeGlobalAccelerator())
        listener = ga.create_listener(ga.create_accelerator())
        for name in region_names():
            ga.create_endpoint_group(listener, aws_region(name))
        r53_proxy = await stack.enter_async_context(FaultProxy(moto))
        dns_proxy = await stack.enter_async_context(FaultProxy(cloud_dns.url))
        ga_proxy = await stack.enter_async_context(FaultProxy(ga.endpoint_url))
        p = policy(r53_proxy.url, dns_proxy.url, ga_proxy.url, listener)
        rows = []
        for bench in (
            route53_bench(p, r53_proxy),
            cloud_dns_bench(p, dns_proxy, cloud_dns),
            global_accelerator_bench(p, ga_proxy, ga),
        ):
            rows += await run(bench, p)
        return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("provider", "step", "changes", "seconds", "peak/s", "requests by operation")
    lines = [
        (
            row["provider"],
            row["step"],
            str(row["changes"]) + (f" ({row['error']})" if row["error"] else ""),
            f"{row['seconds']:.3f}",
            str(row["peak_per_second"]),
            ", ".join(f"{op} {n}" for op, n in row["requests"].items()) or "none",
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in (head, *lines)) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in (head, *lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud_failover", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object per step instead of a table")
    args = parser.parse_args()
    # Global Accelerator's provider takes credentials from the SDK's chain: give it dummy ones, never a
    # real profile's, since nothing here leaves loopback.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    with moto_on_path() as url:
        rows = asyncio.run(bench_all(url))
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(table(rows))


if __name__ == "__main__":
    main()
