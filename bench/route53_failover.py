"""Route 53 provider, 50 regions: API calls and seconds per decision on moto_server behind chaos.faultproxy
(create, one region failing over, an unchanged plan, a forced resync), with the production pacing.

Run from the project root: python -m bench.route53_failover. Prints one JSON line per step; asserts
nothing. Goals (issue 6): one ChangeResourceRecordSets per decision, zero writes when nothing changed,
at most 5 requests in any second including reads. Needs moto_server (pip's moto[server]).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request

import boto3

from chaos.faultproxy import FaultProxy
from chaos.loopback import free_port
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.route53 import Route53Provider
from controlplane.reconciler import Reconciler

ZONE = "llm.example.com"
REGIONS = 50  # half EU, half US


def policy(url: str) -> Policy:
    regions = [
        {
            "name": f"r{i:02d}",
            "endpoint": f"http://198.51.100.{i + 1}:8000",
            "jurisdiction": "EU" if i % 2 else "US",
        }
        for i in range(REGIONS)
    ]
    return Policy.model_validate(
        {
            "version": 1,
            "regions": regions,
            "client_groups": [
                {"name": "eu", "geo": {"continents": ["EU"]}, "allowed_jurisdictions": ["EU"]},
                {"name": "global", "allowed_jurisdictions": ["US", "EU"]},
            ],
            "default_client_group": "global",
            "services": [
                {"name": "chat", "dns_name": f"chat.{ZONE}", "regions": [r["name"] for r in regions]}
            ],
            "providers": {"route53": {"zone": ZONE, "endpoint_url": url, "owner": "bench"}},
        }
    )


def spread(names: list[str], down: frozenset[str]) -> tuple[RouteWeight, ...]:
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


async def bench(url: str) -> None:
    session = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench")
    client = session.client("route53", endpoint_url=url, region_name="us-east-1")
    client.create_hosted_zone(Name=ZONE, CallerReference="bench")
    async with FaultProxy(url) as proxy:
        p = policy(proxy.url)
        provider = Route53Provider(p, p.providers.route53_list[0], session=session)
        await provider.start()
        reconciler = Reconciler([provider])
        steps = [
            ("create", plan(p), False),
            ("fail over r01", plan(p, frozenset({"r01"})), False),
            ("unchanged", plan(p, frozenset({"r01"})), False),
            ("resync, unchanged", plan(p, frozenset({"r01"})), True),
        ]
        for step, target, resync in steps:
            await asyncio.sleep(provider.tuning.min_interval)
            if resync:
                reconciler.forget(provider.name)
            proxy.reset_stats()
            started = time.monotonic()
            (outcome,) = await reconciler.reconcile(p, target)
            seconds = time.monotonic() - started
            print(
                json.dumps(
                    {
                        "step": step,
                        "changes": len(outcome.changes),
                        "error": outcome.error,
                        "seconds": round(seconds, 3),
                        "requests": dict(proxy.requests),
                        "peak_per_second": proxy.peak_rate(),
                    }
                ),
                flush=True,
            )
        await provider.close()


def main() -> None:
    binary = shutil.which("moto_server")
    if binary is None:
        raise SystemExit("moto_server not found: pip install 'moto[server]'")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("moto_server did not come up") from None
                time.sleep(0.1)
        asyncio.run(bench(url))
    finally:
        server.terminate()
        server.wait(timeout=5)


if __name__ == "__main__":
    main()
