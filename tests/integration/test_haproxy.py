"""A real HAProxy in front of real HTTP backends on loopback: the provider moves real requests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from chaos.loopback import free_port
from controlplane.changes import Action, Change, ChangeSet, Record, diff
from controlplane.haproxy_process import HaproxyProcess, HaproxyProcessError, render_config
from controlplane.providers.base import PermanentProviderError, TransientProviderError
from controlplane.providers.haproxy import HaproxyProvider, RuntimeApi, ServerState, parse_servers_state
from tests.builders import converge, haproxy_policy, plan
from tests.conftest import require_binary

OWNED = ("us-east", "us-west", "eu-west", "eu-central")
# In the HAProxy backend but not named by the provider's policy: it must never be touched.
FOREIGN = "foreign"
HOSTS = {region: f"127.0.0.{31 + i}" for i, region in enumerate((*OWNED, FOREIGN))}


@dataclass
class Stack:
    frontend: str
    endpoints: dict[str, str]
    stats: str
    api: RuntimeApi  # raw runtime API, to look at and poke HAProxy behind the provider's back
    process: HaproxyProcess
    provider: HaproxyProvider

    def provider_for(self, servers: tuple[str, ...], backend: str = "chat") -> HaproxyProvider:
        return HaproxyProvider(
            haproxy_policy(self.stats, servers, endpoints=self.endpoints, backend=backend), timeout=1.0
        )

    async def servers(self) -> dict[str, ServerState]:
        return {s.name: s for s in parse_servers_state(await self.api.send("show servers state chat"))}


def answer_with(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text=name)

    return handler


@pytest.fixture
async def endpoints() -> AsyncIterator[dict[str, str]]:
    """One tiny HTTP server per region, each answering with its own region name."""
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    try:
        for region, host in HOSTS.items():
            app = web.Application()
            app.router.add_get("/", answer_with(region))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, 0).start()
            urls[region] = f"http://{host}:{runner.addresses[0][1]}"
        yield urls
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def stack(endpoints: dict[str, str]) -> AsyncIterator[Stack]:
    require_binary("haproxy")
    frontend, stats = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = render_config(
        haproxy_policy(stats, (*OWNED, FOREIGN), endpoints=endpoints), frontend=frontend, stats=stats
    )
    async with HaproxyProcess(config) as process:
        yield Stack(
            frontend=f"http://{frontend}/",
            endpoints=endpoints,
            stats=stats,
            api=RuntimeApi.at(stats),
            process=process,
            provider=HaproxyProvider(haproxy_policy(stats, OWNED, endpoints=endpoints), timeout=1.0),
        )


async def spread(session: aiohttp.ClientSession, url: str, requests: int = 400) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(requests):
        async with session.get(url) as response:
            assert response.status == 200
            counts[await response.text()] += 1
    return counts


# ---------------------------------------------------------------- traffic


async def test_weights_split_real_traffic(stack: Stack, session: aiohttp.ClientSession) -> None:
    await stack.api.send(f"set server chat/{FOREIGN} weight 0")  # so the owned servers share all traffic
    await converge(stack.provider, plan({"global": {"us-east": 75, "us-west": 25}}))
    counts = await spread(session, stack.frontend)
    assert 270 <= counts["us-east"] <= 330
    assert 70 <= counts["us-west"] <= 130
    assert counts["eu-west"] == counts["eu-central"] == counts[FOREIGN] == 0


async def test_drain_takes_a_server_out_and_ready_brings_it_back(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    await stack.api.send(f"set server chat/{FOREIGN} state maint")
    await converge(stack.provider, plan({"global": {"us-east": 50, "us-west": 50}}))
    assert set(await spread(session, stack.frontend, 40)) == {"us-east", "us-west"}

    changes = await converge(stack.provider, plan({"global": {"us-east": 100}}))
    assert [(c.record.region, c.record.weight) for c in changes.changes] == [("us-east", 100), ("us-west", 0)]
    assert set(await spread(session, stack.frontend, 40)) == {"us-east"}
    us_west = (await stack.servers())["us-west"]
    assert us_west.admin_state & 0x08  # forced drain, not a weight of 0
    assert us_west.weight == 50

    await converge(stack.provider, plan({"global": {"us-east": 50, "us-west": 50}}))
    assert set(await spread(session, stack.frontend, 40)) == {"us-east", "us-west"}


async def test_current_reads_back_what_apply_set(stack: Stack) -> None:
    weights = {"us-east": 60, "us-west": 30, "eu-west": 10}
    await converge(stack.provider, plan({"global": weights}))
    assert await stack.provider.current() == stack.provider.render(plan({"global": weights}))
    assert not diff(
        "haproxy", stack.provider.render(plan({"global": weights})), await stack.provider.current()
    )
    servers = await stack.servers()
    assert {r: servers[r].weight for r in weights} == weights
    assert servers["eu-central"].effective_weight == 0


async def test_fail_closed_plan_drains_every_owned_server(stack: Stack) -> None:
    await converge(stack.provider, plan({"global": {"us-east": 100}}))
    await converge(stack.provider, plan({"global": {}}))
    assert all(r.weight == 0 for r in await stack.provider.current())


# ---------------------------------------------------------------- ownership


async def test_a_server_the_policy_does_not_name_is_never_touched(stack: Stack) -> None:
    await stack.api.send(f"set server chat/{FOREIGN} weight 7")
    before = (await stack.servers())[FOREIGN]
    await converge(stack.provider, plan({"global": {"us-east": 100}}))
    await converge(stack.provider, plan({"global": {}}))
    assert {r.region for r in await stack.provider.current()} == set(OWNED)
    foreign_change = Change(Action.UPDATE, None, Record("chat", "*", "us-east", FOREIGN, 0, rtype="server"))
    with pytest.raises(PermanentProviderError, match="not a server this policy owns"):
        await stack.provider.apply(ChangeSet("haproxy", (foreign_change,)))
    after = (await stack.servers())[FOREIGN]
    assert (after.weight, after.admin_state) == (before.weight, before.admin_state)
    assert after.weight == 7


async def test_a_named_server_missing_from_haproxy_is_permanent(stack: Stack) -> None:
    endpoints = {**stack.endpoints, "ghost": "http://127.0.0.36:1"}
    provider = HaproxyProvider(haproxy_policy(stack.stats, ("us-east", "ghost"), endpoints=endpoints))
    with pytest.raises(PermanentProviderError, match=r"has no server\(s\) \['ghost'\]"):
        await provider.current()
    ghost = Change(Action.UPDATE, None, Record("chat", "*", "ghost", "ghost", 5, rtype="server"))
    with pytest.raises(PermanentProviderError, match="No such server"):
        await provider.apply(ChangeSet("haproxy", (ghost,)))


async def test_a_missing_backend_is_permanent(stack: Stack) -> None:
    provider = stack.provider_for(OWNED, backend="nope")
    with pytest.raises(PermanentProviderError, match="Can't find backend"):
        await provider.current()
    with pytest.raises(PermanentProviderError, match="No such backend"):
        await converge_blind(provider, {"us-east": 100})


async def converge_blind(provider: HaproxyProvider, weights: dict[str, int]) -> None:
    """Apply a plan without reading first, as a retry of an earlier change set would."""
    desired = provider.render(plan({"global": weights}))
    await provider.apply(ChangeSet("haproxy", tuple(Change(Action.UPDATE, None, r) for r in desired)))


# ---------------------------------------------------------------- HAProxy down


async def test_a_stopped_haproxy_is_transient(stack: Stack) -> None:
    await stack.process.stop()
    assert not stack.process.running
    with pytest.raises(TransientProviderError, match=r"haproxy at 127\.0\.0\.1"):
        await stack.provider.current()
    with pytest.raises(TransientProviderError):
        await converge_blind(stack.provider, {"us-east": 100})


async def test_a_silent_peer_times_out_as_transient() -> None:
    handled = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns once the client gives up and closes
        writer.close()
        await writer.wait_closed()
        handled.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TransientProviderError, match=r"no reply to 'show info' within 0\.2s"):
            await RuntimeApi(("127.0.0.1", port), timeout=0.2).send("show info")
        await asyncio.wait_for(handled.wait(), 2)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_missing_unix_socket_is_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientProviderError, match="No such file"):
        await RuntimeApi.at(str(tmp_path / "absent.sock")).send("show info")


# ---------------------------------------------------------------- the process


async def test_unix_socket_runtime_api(tmp_path: Path, endpoints: dict[str, str]) -> None:
    require_binary("haproxy")
    stats = str(tmp_path / "admin.sock")
    policy = haproxy_policy(stats, OWNED, endpoints=endpoints)
    async with HaproxyProcess(render_config(policy, frontend=f"127.0.0.1:{free_port()}", stats=stats)):
        provider = HaproxyProvider(policy)
        await converge(provider, plan({"global": {"eu-west": 100}}))
        assert {r.region: r.weight for r in await provider.current()} == {
            "us-east": 0,
            "us-west": 0,
            "eu-west": 100,
            "eu-central": 0,
        }


async def test_a_refused_config_reports_haproxy_output() -> None:
    require_binary("haproxy")
    process = HaproxyProcess(f"global\n    stats socket 127.0.0.1:{free_port()}\n    bogus_keyword 1\n")
    with pytest.raises(
        HaproxyProcessError, match=r"exited with status 1(.|\n)*unknown keyword 'bogus_keyword'"
    ):
        await process.start()
    assert not process.running


async def test_a_stats_address_in_use_is_not_mistaken_for_ours(stack: Stack) -> None:
    config = render_config(
        haproxy_policy(stack.stats, OWNED, endpoints=stack.endpoints),
        frontend=f"127.0.0.1:{free_port()}",
        stats=stack.stats,
    )
    second = HaproxyProcess(config)
    try:
        with pytest.raises(HaproxyProcessError, match="cannot bind"):
            await second.start()
    finally:
        await second.stop()
    assert stack.process.running


def test_a_config_without_a_runtime_api_is_refused() -> None:
    with pytest.raises(ValueError, match="no `stats socket` line"):
        HaproxyProcess("global\n    maxconn 10\n")


async def test_a_missing_binary_is_a_clear_error() -> None:
    process = HaproxyProcess("global\n    stats socket 127.0.0.1:1\n", binary="no-such-haproxy")
    with pytest.raises(HaproxyProcessError, match="'no-such-haproxy' is not installed"):
        await process.start()


async def test_https_endpoints_render_a_config_haproxy_accepts(tmp_path: Path) -> None:
    haproxy = require_binary("haproxy")
    endpoints = {"us-east": "https://127.0.0.31:8443", "us-west": "http://[::1]:8000"}
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        render_config(
            haproxy_policy("127.0.0.1:1", tuple(endpoints), endpoints=endpoints), stats="127.0.0.1:1"
        )
    )
    check = await asyncio.create_subprocess_exec(
        haproxy, "-c", "-f", str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await check.communicate()
    assert check.returncode == 0, output.decode()
