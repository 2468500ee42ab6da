"""The live cost of a running plane over real simulated regions: the output tokens their servers count, spread
as the served weights spread traffic, priced per hour from the price sheets, on /status and /metrics; price
sheets checked at start and at each reload; `controlplane run --prices`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chaos.loopback import free_port
from chaos.simregion import SimFleet
from controlplane.cost.live import LiveCost, live_cost
from controlplane.cost.model import hourly_cost
from controlplane.cost.prices import PriceBook, PurchaseOption, load_prices, shipped_sheets
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import Policy, load_policy
from tests.conftest import until
from tests.integration.daemon_helpers import (
    FULL,
    SERVICE,
    Plane,
    policy_data,
    running_plane,
    write_policy,
)

ROOT = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "controlplane.cli")
# Small fleets so that a few streams need more instances than are reserved. Figures from the shipped sheets.
FLEETS: dict[str, dict[str, Any]] = {
    "us-east": {"cloud": "aws", "region": "us-east-1", "instance": "g6e.xlarge", "reserved": 1, "tokens_per_s": 100},
    "eu-west": {"cloud": "aws", "region": "eu-west-1", "instance": "g5.2xlarge", "reserved": 1, "tokens_per_s": 100},
}  # fmt: skip
STREAMS = 6  # concurrent completions kept running at us-east while a test watches the cost rise
MAX_TOKENS = 100  # per completion: 0.2 s at the simulator's 2 ms a token


def with_fleets(fleet: SimFleet, fleets: Mapping[str, Mapping[str, Any]] = FLEETS) -> dict[str, Any]:
    data = policy_data(fleet)
    for region in data["regions"]:
        if region["name"] in fleets:
            region["fleet"] = dict(fleets[region["name"]])
    return data


@pytest.fixture
async def priced(fleet: SimFleet, tmp_path: Path) -> AsyncIterator[Plane]:
    path = tmp_path / "policy.yaml"
    write_policy(path, with_fleets(fleet))
    async with running_plane(path, tmp_path / "state") as plane:
        await plane.settled(FULL)
        yield plane


@contextlib.asynccontextmanager
async def completions(fleet: SimFleet, region: str) -> AsyncIterator[None]:
    """STREAMS clients asking `region` for completions back to back until the block ends."""

    async def client(session: aiohttp.ClientSession) -> None:
        body = {
            "model": "demo-llm",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": MAX_TOKENS,
        }
        while True:
            async with session.post(f"{fleet[region].endpoint}/v1/chat/completions", json=body) as response:
                assert response.status == 200, await response.text()
                await response.read()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(STREAMS)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def shipped() -> PriceBook:
    return load_prices(shipped_sheets())


def floor(policy: Policy, book: PriceBook) -> float:
    """What the fleets cost with no token flowing: their reserved instances."""
    return sum(hourly_cost(r, book, 0.0).per_hour for r in policy.regions if r.fleet)


def one_more_instance(book: PriceBook) -> float:
    """The cheapest on-demand hour among the fleets: the least a cost above the floor adds."""
    return min(
        book.instance_hour(f["cloud"], f["region"], f["instance"], PurchaseOption.ON_DEMAND).amount
        for f in FLEETS.values()
    )


def plan_of(weights: Iterator[tuple[str, str, str, int]]) -> RoutingPlan:
    """A plan from (service, group, region, weight) rows, as /status or /metrics show the served one."""
    groups: dict[tuple[str, str], list[RouteWeight]] = {}
    for service, group, region, weight in weights:
        groups.setdefault((service, group), []).append(RouteWeight(region, weight, ""))
    return RoutingPlan(
        0.0, tuple(GroupPlan(s, g, GroupMode.NORMAL, tuple(w)) for (s, g), w in groups.items())
    )


def expected_from_status(body: dict[str, Any], policy: Policy, book: PriceBook) -> LiveCost | None:
    plan = plan_of(
        (SERVICE, group, region, w["weight"])
        for group, plans in body["services"][SERVICE].items()
        for region, w in plans["weights"].items()
    )
    rates = {name: region["tokens_out_per_s"] for name, region in body["regions"].items()}
    return live_cost(policy, plan, rates, book)


async def test_status_prices_the_observed_tokens_on_the_served_weights(
    priced: Plane, fleet: SimFleet
) -> None:
    policy, book = load_policy(priced.policy_path), shipped()
    bottom = floor(policy, book)
    status, body = await priced.get("/status")
    assert status == 200
    assert body["cost"]["currency"] == "USD" and list(body["cost"]["regions"]) == ["us-east", "eu-west"]
    # Only the probes' own few tokens flow: every fleet runs on its reserved instances.
    assert body["cost"]["per_hour"] < bottom + one_more_instance(book)
    assert all(r["instances"] == 1 for r in body["cost"]["regions"].values())

    async def busy() -> dict[str, Any] | None:
        _, body = await priced.get("/status")
        return body if body["cost"]["per_hour"] > bottom + one_more_instance(book) else None

    async with completions(fleet, "us-east"):
        body = await until(busy, within=10, what="the cost per hour to rise above the reserved floor")
    assert body["regions"]["us-east"]["tokens_out_per_s"] > 200  # the streams, counted by the server
    expected = expected_from_status(body, policy, book)
    assert expected is not None
    cost = body["cost"]
    assert cost["per_hour"] == pytest.approx(expected.per_hour, abs=1e-5)
    assert cost["tokens_out_per_s"] == pytest.approx(expected.tokens_out_per_s, abs=1e-3)
    for row in expected.regions:
        shown = cost["regions"][row.region]
        assert shown["per_hour"] == pytest.approx(row.per_hour, abs=1e-5)
        assert shown["tokens_out_per_s"] == pytest.approx(row.tokens_out_per_s, abs=1e-3)
        assert shown["instances"] == row.instances
    # The weights send eu-west most traffic (global 20 + eu 67 of 200 points): it needed instances added.
    assert cost["regions"]["eu-west"]["instances"] > 1


async def test_metrics_export_the_cost_per_hour_of_each_region_and_in_total(
    priced: Plane, fleet: SimFleet
) -> None:
    policy, book = load_policy(priced.policy_path), shipped()
    bottom = floor(policy, book)

    async def busy() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        samples = await priced.metrics()
        return (
            samples
            if samples[("controlplane_cost_per_hour", frozenset())] > bottom + one_more_instance(book)
            else None
        )

    async with completions(fleet, "us-east"):
        samples = await until(busy, within=10, what="the exported cost to rise above the reserved floor")
    rates = {
        dict(labels)["region"]: value
        for (name, labels), value in samples.items()
        if name == "controlplane_region_output_tokens_per_second"
    }
    assert rates["us-east"] > 200  # a region not yet scraped twice has no rate and adds nothing
    plan = plan_of(
        (d["service"], d["group"], d["region"], int(value))
        for (name, labels), value in samples.items()
        if name == "controlplane_weight_percent"
        for d in [dict(labels)]
    )
    expected = live_cost(policy, plan, rates, book)
    assert expected is not None
    assert samples[("controlplane_cost_per_hour", frozenset())] == pytest.approx(expected.per_hour)
    per_region = {
        dict(labels)["region"]: value
        for (name, labels), value in samples.items()
        if name == "controlplane_region_cost_per_hour"
    }
    assert per_region == {r.region: pytest.approx(r.per_hour) for r in expected.regions}


async def test_the_engine_leans_on_the_prices_of_a_service_with_a_cost_weight(
    fleet: SimFleet, tmp_path: Path
) -> None:
    # Same tokens/s per instance, so a region's cost per token is its on-demand price: us-west's g6e.xlarge
    # costs more an hour than us-east's g5.2xlarge. The EU regions have no fleet, so no figure to lean on.
    leaning = {
        "us-east": {**FLEETS["us-east"], "instance": "g5.2xlarge"},
        "us-west": {"cloud": "aws", "region": "us-west-2", "instance": "g6e.xlarge", "tokens_per_s": 100},
    }
    data = with_fleets(fleet, leaning)
    data["services"][0]["cost_weight"] = 1.0
    path = tmp_path / "policy.yaml"
    write_policy(path, data)
    async with running_plane(path, tmp_path / "state") as plane:
        await plane.ready()
        weights = await until(
            lambda: (w := plane.weights()) and w["us-west"] < FULL["global"]["us-west"] and w,
            what="us-west to get less than its capacity share",
        )
        assert weights["us-east"] > FULL["global"]["us-east"]
        served = plane.daemon.plan
        assert served is not None
        group = served.group(SERVICE, "global")
        assert group is not None
        (reason,) = [w.reason for w in group.weights if w.region == "us-west"]
        assert "cost" in reason


async def test_a_reload_whose_fleet_the_sheets_cannot_price_is_refused(
    priced: Plane, fleet: SimFleet
) -> None:
    unpriced = {**FLEETS, "us-east": {**FLEETS["us-east"], "instance": "g9.imaginary"}}
    write_policy(priced.policy_path, with_fleets(fleet, unpriced))
    rejected = await until(lambda: priced.events("policy_rejected"), what="the reload to be refused")
    problems = rejected[0]["problems"]
    assert [p.split(": no such instance type")[0] for p in problems] == [
        "region us-east: no on-demand price for aws/us-east-1 g9.imaginary",
        "region us-east: no 1-year reserved price for aws/us-east-1 g9.imaginary",
    ]
    fleet_now = priced.daemon.policy.region("us-east").fleet
    assert fleet_now is not None and fleet_now.instance == "g6e.xlarge"  # the last good policy runs on
    _, body = await priced.get("/status")
    assert list(body["cost"]["regions"]) == ["us-east", "eu-west"]


async def test_a_policy_without_fleets_needs_no_price_sheet_and_shows_no_cost(
    fleet: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\ncurrency: [not, a, currency]\n")
    monkeypatch.setattr("controlplane.daemon.shipped_sheets", lambda: [broken])
    path = tmp_path / "policy.yaml"
    write_policy(path, policy_data(fleet))
    async with running_plane(path, tmp_path / "state") as plane:
        await plane.settled(FULL)
        _, body = await plane.get("/status")
        assert body["cost"] is None
        samples = await plane.metrics()
        assert not any(name.startswith("controlplane_cost") or "cost_per_hour" in name for name, _ in samples)
        # The token rates are the servers' whether or not anything is priced.
        await until(
            lambda: plane.daemon.health().get("us-east").tokens_out_per_s is not None, what="a token rate"
        )


SIM_SHEET = """\
version: 1
currency: USD
date: 2026-11-01
clouds:
  aws:
    us-east-1:
      instances:
        sim.gpu: {on_demand: 2.5, reserved_1y: 1.25, source: "https://example.com/sim-gpu-prices"}
"""


async def test_run_prices_reads_the_users_sheet_over_the_shipped_ones(
    fleet: SimFleet, tmp_path: Path
) -> None:
    sheet, policy = tmp_path / "sim.yaml", tmp_path / "policy.yaml"
    sheet.write_text(SIM_SHEET)
    write_policy(policy, with_fleets(fleet, {"us-east": {**FLEETS["us-east"], "instance": "sim.gpu"}}))
    state = tmp_path / "state"
    # Without the user's sheet the shipped ones cannot price sim.gpu: the daemon does not start.
    refused = await asyncio.create_subprocess_exec(
        *CLI, "run", "--policy", str(policy), "--state-dir", str(state), "--api-port", str(free_port()),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        _, err = await refused.communicate()
    assert refused.returncode == 1 and "Traceback" not in err.decode()
    assert "region us-east: no on-demand price for aws/us-east-1 sim.gpu" in err.decode()

    port = free_port()
    log = tmp_path / "daemon.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "run", "--policy", str(policy), "--state-dir", str(state), "--api-port", str(port),
            "--prices", str(sheet), cwd=ROOT, env=dict(os.environ), stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:

            async def cost() -> dict[str, Any] | None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/status") as response:
                        found: dict[str, Any] | None = (await response.json())["cost"]
                        return found
                except aiohttp.ClientConnectionError:
                    assert proc.returncode is None, log.read_text()
                    return None

            shown = await until(cost, within=15, what="the daemon's cost block")
        # One reserved sim.gpu at the user's $1.25/h; the probes' few tokens/s add at most a little egress.
        assert shown["regions"]["us-east"]["instances"] == 1
        assert 1.25 <= shown["regions"]["us-east"]["per_hour"] < 1.26
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.wait()
    assert proc.returncode == 0, log.read_text()


async def test_the_status_command_and_the_demo_view_show_the_cost(priced: Plane) -> None:
    from rich.console import Console

    from controlplane.demo import render_view
    from tests.integration.test_cli import arun_cli

    result = await arun_cli("status", "--api", priced.api)
    assert result.code == 0, result.err
    shown = [line for line in result.out.splitlines() if line.startswith("  cost: ")]
    assert len(shown) == 1, result.out
    assert re.fullmatch(
        r"  cost: [\d,]+\.\d\d USD/h at [\d,]+ output tokens/s: "
        r"us-east [\d,]+\.\d\d \(\d+ inst\), eu-west [\d,]+\.\d\d \(\d+ inst\)",
        shown[0],
    ), shown[0]
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_view(priced.daemon))
    view = console.export_text()
    assert "USD/h" in view and "(1 inst)" in view and "estimated " in view, view
