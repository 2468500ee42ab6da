"""The daemon, its admin API and four simulated regions, all real and on loopback, for the integration tests.

Regions listen on 127.0.0.41-44 (ports the OS picks); the admin API and the embedded DNS on free ports of
127.0.0.1, so a running `controlplane demo` (8000, 8080, 5353, 9000, 9999) is left alone.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chaos.loopback import free_port
from chaos.simregion import SimFleet, SimRegion
from controlplane.api import serve
from controlplane.daemon import Daemon, DaemonConfig, ProviderFactory
from controlplane.policy import load_policy
from controlplane.providers.base import ManagedProvider
from controlplane.providers.factory import build_providers
from controlplane.providers.memory import MemoryProvider
from tests import builders
from tests.conftest import until

T = TypeVar("T")

# name, loopback address, jurisdiction, capacity
REGIONS = (
    ("us-east", "127.0.0.41", "US", 40),
    ("us-west", "127.0.0.42", "US", 30),
    ("eu-west", "127.0.0.43", "EU", 20),
    ("eu-central", "127.0.0.44", "EU", 10),
)
ADDRESS = {name: host for name, host, _, _ in REGIONS}
SERVICE = "chat"
DNS_NAME = "chat.llm.test"
EU_CLIENT = "127.0.1.5"  # inside the eu group's 127.0.1.0/24
# Every region healthy, score 1 (TTFT far below target), capacities 40/30/20/10:
FULL = {
    "global": {"us-east": 40, "us-west": 30, "eu-west": 20, "eu-central": 10},
    "eu": {"eu-west": 67, "eu-central": 33},
}
TOKEN = "integration-token"


@asynccontextmanager
async def sim_fleet() -> AsyncIterator[SimFleet]:
    regions = [
        SimRegion(name, host, port=0, control_port=0, ttft=0.01, token_interval=0.002)
        for name, host, _, _ in REGIONS
    ]
    async with SimFleet(regions) as fleet:
        yield fleet


async def fault(session: aiohttp.ClientSession, sim: SimRegion, **spec: object) -> None:
    """Break or mend a region through its real control API (POST /fault)."""
    async with session.post(f"{sim.control_url}/fault", json=spec) as response:
        assert response.status == 200, await response.text()


def policy_data(
    fleet: SimFleet,
    *,
    capacities: dict[str, int] | None = None,
    drop: Sequence[str] = (),
    max_shift: int = 100,
    probe_timeout: float = 0.5,
    inference_timeout: float = 1.0,
    dns_port: int | None = None,
    memory: bool = True,
) -> dict[str, Any]:
    """A policy over the fleet: fast probes, rise 1, no slow start, and damping off (max_shift 100)."""
    capacities = capacities or {}
    providers: dict[str, Any] = {"memory": memory}
    if dns_port is not None:
        providers["localdns"] = {"listen": "127.0.0.1", "port": dns_port, "zone": "llm.test"}
    return builders.policy_data(
        [
            {
                "name": name,
                "endpoint": fleet[name].endpoint,
                "jurisdiction": jurisdiction,
                "capacity": capacities.get(name, capacity),
            }
            for name, _, jurisdiction, capacity in REGIONS
            if name not in drop
        ],
        service={
            "dns_name": DNS_NAME,
            "ttl": 5,
            "max_shift": max_shift,
            "slow_start": 0,
            "when_all_down": "fail-closed",
        },
        probes={
            "interval": 0.1,
            "fast_interval": 0.05,
            "timeout": probe_timeout,
            "jitter": 0.1,
            "inference": {
                "interval": 0.2,
                "timeout": inference_timeout,
                "model": "demo-llm",
                "max_tokens": 2,
            },
            "metrics": {"interval": 0.2},
        },
        health={"rise": 1, "fall": 3, "stale_after": 3.0},
        providers=providers,
    )


def write_policy(path: Path, data: dict[str, Any] | str) -> str:
    """Replace the policy file atomically (as editors that save safely do); returns the text written."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return text


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based (line, column) of the first occurrence of `needle` in `text`."""
    index = text.index(needle)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def read_audit(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(sample name, labels): value}; the parser raises on anything malformed."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@dataclass
class Plane:
    """A running daemon with its admin API, and ways to look at it from outside."""

    daemon: Daemon
    task: asyncio.Task[None]
    api: str
    token: str | None
    policy_path: Path
    state_dir: Path
    session: aiohttp.ClientSession

    def weights(self, group: str = "global") -> dict[str, int]:
        plan = self.daemon.plan
        found = plan.group(SERVICE, group) if plan else None
        return found.as_dict() if found else {}

    def provider(self, name: str = "memory") -> ManagedProvider:
        return next(p for p in self.daemon.providers if p.name == name)

    def memory(self, name: str = "memory") -> MemoryProvider:
        provider = self.provider(name)
        assert isinstance(provider, MemoryProvider)
        return provider

    async def held(self, group: str = "global", provider: str = "memory") -> dict[str, int]:
        """Weights the provider really holds for `group` (what clients would be sent by)."""
        records = await self.provider(provider).current()
        return {r.region: r.weight for r in records if r.group == group}

    async def settled(self, expected: dict[str, dict[str, int]], provider: str = "memory") -> None:
        """Wait until both the plan and the provider's records show `expected` weights for every group."""

        async def done() -> bool:
            for group, weights in expected.items():
                if self.weights(group) != weights or await self.held(group, provider) != weights:
                    return False
            return True

        await until(done, within=8, what=f"weights {expected}")

    def audit(self) -> list[dict[str, Any]]:
        return read_audit(self.state_dir)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.audit() if line["event"] == name]

    def auth(self, token: str | None = None) -> dict[str, str]:
        token = token or self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        """(status, body): the body decoded as JSON when it is JSON, else the text."""
        async with asyncio.timeout(5):
            async with self.session.request(method, self.api + path, headers=headers, **kwargs) as response:
                text = await response.text()
                if response.content_type == "application/json":
                    return response.status, json.loads(text)
                return response.status, text

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.request("GET", path)

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = await self.get("/metrics")
        assert status == 200
        return parse_metrics(text)

    async def ready(self) -> None:
        await until(lambda: self.daemon.ready, within=8, what="the first full probe round")

    async def stop(self) -> None:
        self.daemon.request_stop()
        async with asyncio.timeout(10):
            await self.task


@asynccontextmanager
async def running_plane(
    policy_path: Path,
    state_dir: Path,
    *,
    token: str | None = TOKEN,
    provider_factory: ProviderFactory = build_providers,
    reconcile_interval: float = 0.1,
    reload_interval: float = 0.05,
    replica: str = "local",
) -> AsyncIterator[Plane]:
    """The daemon as `controlplane run` starts it (admin API as a supervised task), on a free API port."""
    policy = await asyncio.to_thread(load_policy, policy_path)
    api_port = free_port()
    config = DaemonConfig(
        policy_path=policy_path,
        state_dir=state_dir,
        api_port=api_port,
        token=token,
        reconcile_interval=reconcile_interval,
        reload_interval=reload_interval,
        provider_start_retry=0.2,
        replica=replica,
    )
    daemon = Daemon(config, policy, provider_factory)
    task = asyncio.create_task(
        daemon.run([("api", partial(serve, daemon, config.api_host, api_port))], handle_signals=False)
    )
    async with aiohttp.ClientSession() as session:
        plane = Plane(daemon, task, f"http://127.0.0.1:{api_port}", token, policy_path, state_dir, session)
        try:

            async def listening() -> bool:
                if task.done():
                    task.result()  # the daemon died: raise why
                try:
                    return (await plane.get("/healthz"))[0] == 200
                except aiohttp.ClientConnectionError:
                    return False

            await until(listening, within=5, what="the admin API")
            yield plane
        finally:
            if not task.done():
                daemon.request_stop()
            async with asyncio.timeout(10):
                await task
