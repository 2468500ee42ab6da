"""The demo stack on loopback, on free ports so a running `controlplane demo` is left alone."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from chaos.loopback import free_port, loopback_policy, resolve
from controlplane.demo import DemoStack, demo_stack
from controlplane.haproxy_process import haproxy_available
from controlplane.providers.haproxy import RuntimeApi, parse_servers_state
from tests.builders import DEMO_ADDRESS
from tests.conftest import require_binary, until

REGION_PORT = 18400  # demo regions use 8000; these use 127.0.0.11-14 on another port
ADDRESSES = DEMO_ADDRESS  # the demo policy's regions, on REGION_PORT
US = {ADDRESSES["us-east"], ADDRESSES["us-west"]}
EU_CLIENT = "127.0.1.5"


@dataclass
class Stack:
    demo: DemoStack
    dns_port: int
    api: str
    hap_socket: str | None
    policy_path: Path
    state_dir: Path

    async def ask(self, source: str = "127.0.0.1", count: int = 1) -> list[str]:
        """Addresses answered to `count` A queries from `source`; "" entries are NODATA."""
        return await resolve(self.dns_port, source, count)

    async def fault(self, region: str, **spec: object) -> None:
        url = f"http://{ADDRESSES[region]}:{REGION_PORT + 1}/fault"
        async with (
            aiohttp.ClientSession() as session,
            asyncio.timeout(2),
            session.post(url, json=spec) as response,
        ):
            assert response.status == 200, await response.text()

    async def status(self) -> dict[str, object]:
        async with (
            aiohttp.ClientSession() as session,
            asyncio.timeout(2),
            session.get(f"{self.api}/status") as response,
        ):
            return json.loads(await response.text())  # type: ignore[no-any-return]

    def weights(self, group: str = "global") -> dict[str, int]:
        plan = self.demo.daemon.plan
        g = plan.group("chat", group) if plan else None
        return g.as_dict() if g else {}

    async def haproxy_weights(self) -> dict[str, int]:
        assert self.hap_socket is not None
        reply = await RuntimeApi.at(self.hap_socket).send("show servers state chat")
        return {s.name: s.effective_weight for s in parse_servers_state(reply)}

    async def all_healthy(self) -> None:
        for region in ADDRESSES:
            await self.fault(region, mode="ok")

        def settled() -> bool:
            plan = self.demo.daemon.plan
            group = plan.group("chat", "global") if plan else None
            # Full weight: every region in, none still slow-starting or damped toward its target.
            return group is not None and all(
                w.weight > 0 and "slow start" not in w.reason and "damped" not in w.reason
                for w in group.weights
            )

        await until(settled, within=15, what="every region back at full weight")

    async def mix(self, source: str = "127.0.0.1", count: int = 200) -> Counter[str]:
        return Counter(await self.ask(source, count))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    require_binary("haproxy")
    assert haproxy_available()
    tmp = tmp_path_factory.mktemp("e2e")
    dns_port, api_port, hap_port, front_port = free_port(), free_port(), free_port(), free_port()
    hap_socket = f"127.0.0.1:{hap_port}"
    policy_path = tmp / "policy.yaml"
    policy_path.write_text(loopback_policy(REGION_PORT, dns_port, hap_socket))
    async with demo_stack(
        policy_path,
        tmp / "state",
        haproxy_frontend=f"127.0.0.1:{front_port}",
        api_port=api_port,
        handle_signals=False,
    ) as demo:
        s = Stack(demo, dns_port, f"http://127.0.0.1:{api_port}", hap_socket, policy_path, tmp / "state")
        await until(lambda: len(s.weights()) == 4, within=10, what="the first plan")
        yield s
