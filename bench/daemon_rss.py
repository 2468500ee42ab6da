"""The daemon's resident memory: (a) with 1,000 regions, goal <= 150 MB; (b) with one hostile region streaming
an endless /health body and an endless inference stream beside four normal ones, goal: bounded by the caps.

Run from the project root: python -m bench.daemon_rss [--steady 20]. Prints figures; asserts nothing.
Each scenario runs in a fresh process (python -m bench.daemon_rss --scenario a|b), so its figures are its
own; the regions it probes run in child processes (chaos.simregion, chaos.hostile), outside the figures.
Loopback only; about 80 s in all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import yaml

from chaos.hostile import Hostility
from chaos.loopback import free_port
from controlplane.daemon import Daemon, DaemonConfig
from controlplane.policy import load_policy
from controlplane.providers.factory import build_providers
from probes.health import State

SIM_HOSTS = ("127.0.2.1", "127.0.2.2", "127.0.2.3", "127.0.2.4")
HOSTILE_HOST = "127.0.2.9"
MB = 1e6
# (a): 1,000 regions spread over four simulated servers. Periods a 2-core box sustains with the servers
# on the same cores: 200 liveness, 50 metrics and 50 inference probes a second.
A_REGIONS = 1000
A_PROBES = {
    "interval": 5.0,
    "fast_interval": 1.0,
    "timeout": 2.0,
    "inference": {"interval": 20.0, "timeout": 5.0, "model": "demo-llm", "max_tokens": 2},
    "metrics": {"interval": 20.0},
}
# (b): few regions, probed often, so the hostile one is read to its caps several times a second.
B_PROBES = {
    "interval": 0.5,
    "fast_interval": 0.2,
    "timeout": 2.0,
    "inference": {"interval": 1.0, "timeout": 3.0, "model": "demo-llm", "max_tokens": 2},
    "metrics": {"interval": 1.0},
}


def status(field: str) -> float:
    """A /proc/self/status figure (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MB
    raise LookupError(field)


def rss() -> str:
    return f"VmRSS {status('VmRSS'):6.1f} MB  VmHWM {status('VmHWM'):6.1f} MB"


def policy(regions: list[dict[str, Any]], probes: dict[str, Any]) -> dict[str, Any]:
    longest = max(probes["interval"], probes["inference"]["interval"], probes["metrics"]["interval"])
    return {
        "version": 1,
        "regions": regions,
        "client_groups": [{"name": "global", "allowed_jurisdictions": ["US"]}],
        "default_client_group": "global",
        "services": [
            {
                "name": "chat",
                "dns_name": "chat.llm.test",
                "regions": [r["name"] for r in regions],
                "max_shift": 100,
                "slow_start": 0,
            }
        ],
        "probes": {**probes, "jitter": 0.1},
        "health": {"rise": 1, "fall": 2, "stale_after": 3 * longest},
        "providers": {"memory": True},
    }


@contextlib.contextmanager
def servers(commands: list[list[str]]) -> Iterator[None]:
    children = [
        subprocess.Popen([sys.executable, "-m", *c], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for c in commands
    ]
    try:
        yield
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=10)


def sims(ports: list[int]) -> list[list[str]]:
    return [
        [
            *("chaos.simregion", "--host", host, "--port", str(port), "--control-port", str(free_port())),
            *("--ttft", "0.01", "--token-interval", "0.002"),
        ]
        for host, port in zip(SIM_HOSTS, ports, strict=True)
    ]


def listening(host: str, port: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.asynccontextmanager
async def daemon(data: dict[str, Any]) -> AsyncIterator[Daemon]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        config = DaemonConfig(policy_path=path, state_dir=Path(tmp) / "state", api_port=0)
        plane = Daemon(config, await asyncio.to_thread(load_policy, path), build_providers)
        task = asyncio.create_task(plane.run(handle_signals=False))
        try:
            started = time.monotonic()
            while not plane.ready:
                if task.done():
                    task.result()
                await asyncio.sleep(0.1)
            print(f"  ready after {time.monotonic() - started:.1f} s: {rss()}")
            yield plane
        finally:
            plane.request_stop()
            await task


def share(plane: Daemon, region: str) -> str:
    plan = plane.plan
    group = plan.group("chat", "global") if plan else None
    weights = group.as_dict() if group else {}
    total = sum(weights.values())
    return f"{100 * weights.get(region, 0) / total:.0f} %" if total else "no plan"


async def scenario_a(steady: float, top: bool) -> None:
    ports = [free_port() for _ in SIM_HOSTS]
    regions = [
        {
            "name": f"r{i}",
            "endpoint": f"http://{SIM_HOSTS[i % len(SIM_HOSTS)]}:{ports[i % len(SIM_HOSTS)]}",
            "jurisdiction": "US",
        }
        for i in range(A_REGIONS)
    ]
    print(f"(a) {A_REGIONS} regions on {len(SIM_HOSTS)} simulated servers; probes {A_PROBES}")
    print(f"  before the daemon: {rss()}")
    if top:
        tracemalloc.start(8)
    with servers(sims(ports)):
        for host, port in zip(SIM_HOSTS, ports, strict=True):
            listening(host, port)
        async with daemon(policy(regions, A_PROBES)) as plane:
            before = sum(plane.counters.observations.values())
            for _ in range(int(steady // 5)):
                await asyncio.sleep(5)
                print(f"  +{(_ + 1) * 5:3d} s: {rss()}  probes in flight {plane.scheduler.in_flight}")
            healthy = sum(1 for h in plane.health().regions.values() if h.state is State.HEALTHY)
            rate = (sum(plane.counters.observations.values()) - before) / (steady // 5 * 5)
            print(f"  healthy: {healthy} of {A_REGIONS}; {rate:.0f} probe results/s while steady")
            print(f"  schedule lag p99 {plane.scheduler.stats.p99:.3f} s, shed {plane.scheduler.stats.shed}")
            if top:
                snapshot = tracemalloc.take_snapshot()
                print("  tracemalloc top 15 by line:")
                for stat in snapshot.statistics("lineno")[:15]:
                    print(f"    {stat.size / MB:6.2f} MB {stat.count:7d} blocks  {stat.traceback[0]}")


async def scenario_b(steady: float) -> None:
    ports = [free_port() for _ in SIM_HOSTS]
    hostile_port = free_port()
    regions = [
        {"name": f"normal{i}", "endpoint": f"http://{host}:{port}", "jurisdiction": "US"}
        for i, (host, port) in enumerate(zip(SIM_HOSTS, ports, strict=True))
    ]
    hostile = f"http://{HOSTILE_HOST}:{hostile_port}/{Hostility.ENDLESS_STREAM.value}"
    regions.append({"name": "hostile", "endpoint": hostile, "jurisdiction": "US"})
    print("(b) 4 normal regions and one streaming endless /health, /metrics and inference bodies;")
    print(f"    probes {B_PROBES}")
    print(f"  before the daemon: {rss()}")
    command = ["chaos.hostile", "--host", HOSTILE_HOST, "--port", str(hostile_port)]
    with servers([*sims(ports), [*command, "--lifetime", str(steady + 30)]]):
        for host, port in [*zip(SIM_HOSTS, ports, strict=True), (HOSTILE_HOST, hostile_port)]:
            listening(host, port)
        async with daemon(policy(regions, B_PROBES)) as plane:
            for second in range(2, int(steady) + 1, 2):
                await asyncio.sleep(2)
                seen = plane.counters.observations
                hostile_seen = sum(n for (region, _, _), n in seen.items() if region == "hostile")
                print(
                    f"  +{second:3d} s: {rss()}  hostile probed {hostile_seen:4d} times,"
                    f" its share of answers {share(plane, 'hostile')}"
                )
            for (region, kind), health in plane.tracker.kinds.items():
                if region == "hostile":
                    print(f"  hostile {kind.value}: {health.last.error}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.daemon_rss", description=__doc__)
    parser.add_argument("--scenario", choices=("a", "b"), help="run one scenario in this process")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of steady running measured")
    parser.add_argument("--top", action="store_true", help="(a): tracemalloc's top allocations at the end")
    args = parser.parse_args()
    if args.scenario == "a":
        asyncio.run(scenario_a(args.steady, args.top))
    elif args.scenario == "b":
        asyncio.run(scenario_b(args.steady))
    else:
        for scenario in ("a", "b"):
            extra = ["--top"] if args.top and scenario == "a" else []
            command = ["-m", "bench.daemon_rss", "--scenario", scenario, "--steady", str(args.steady)]
            subprocess.run([sys.executable, *command, *extra], check=True)


if __name__ == "__main__":
    main()
