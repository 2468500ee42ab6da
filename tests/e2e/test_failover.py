"""Break regions of the running demo stack and watch DNS and HAProxy follow."""

from __future__ import annotations

import pytest

from tests.conftest import until
from tests.e2e.conftest import ADDRESSES, EU_CLIENT, US, Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_every_region_serves_and_eu_clients_stay_in_the_eu(stack: Stack) -> None:
    await stack.all_healthy()
    seen = await stack.mix(count=300)
    assert set(seen) == set(ADDRESSES.values()), seen
    eu = await stack.mix(EU_CLIENT, count=100)
    assert set(eu) == {ADDRESSES["eu-west"], ADDRESSES["eu-central"]}, eu
    assert all(w > 0 for w in (await stack.haproxy_weights()).values())


@pytest.mark.parametrize(
    ("mode", "spec"), [("down", {}), ("hang", {}), ("errors", {"fraction": 1.0}), ("wrong_model", {})]
)
async def test_a_broken_region_leaves_dns_and_haproxy_and_comes_back(
    stack: Stack, mode: str, spec: dict[str, object]
) -> None:
    await stack.all_healthy()
    await stack.fault("us-east", mode=mode, **spec)

    async def gone_from_dns() -> bool:
        return ADDRESSES["us-east"] not in await stack.ask(count=40)

    await until(gone_from_dns, within=5, what=f"us-east ({mode}) to leave DNS answers")
    assert stack.weights()["us-east"] == 0
    assert (await stack.haproxy_weights())["us-east"] == 0
    assert ADDRESSES["us-east"] not in await stack.ask(count=200), "and it stays out"
    region = (await stack.status())["regions"]["us-east"]  # type: ignore[index]
    assert region["state"] == "unhealthy" and region["reasons"], region

    await stack.fault("us-east", mode="ok")
    # Each break here follows the last within a minute, so flap damping doubles the wait for recovery
    # (2, 4, 8 s of success): the bound only proves it comes back.
    await until(lambda: stack.weights()["us-east"] > 0, within=25, what="us-east to come back")

    async def back_in_dns() -> bool:
        return ADDRESSES["us-east"] in await stack.ask(count=40)

    await until(back_in_dns, within=5, what="us-east back in DNS answers")
    assert (await stack.haproxy_weights())["us-east"] > 0


async def test_a_slow_region_keeps_less_traffic(stack: Stack) -> None:
    await stack.all_healthy()
    await until(lambda: stack.weights()["us-east"] >= 30, within=10, what="us-east at full weight")
    before = stack.weights()["us-east"]
    await stack.fault("us-east", mode="slow", factor=25)
    await until(
        lambda: 0 < stack.weights()["us-east"] < before - 10, within=10, what="us-east weight to fall"
    )

    async def haproxy_follows() -> bool:
        return (await stack.haproxy_weights())["us-east"] == stack.weights()["us-east"]

    await until(haproxy_follows, within=3, what="HAProxy to carry the lower weight")
    assert 0 < (await stack.haproxy_weights())["us-east"] < before
    await stack.fault("us-east", mode="ok")


async def test_eu_clients_never_get_a_us_address_even_when_both_eu_regions_are_down(stack: Stack) -> None:
    await stack.all_healthy()
    await stack.fault("eu-west", mode="down")
    await stack.fault("eu-central", mode="hang")
    answers: list[str] = []

    async def eu_closed() -> bool:
        batch = await stack.ask(EU_CLIENT, count=20)
        answers.extend(batch)
        return batch == [""] * 20

    await until(eu_closed, within=6, what="EU group to fail closed")
    answers += await stack.ask(EU_CLIENT, count=100)
    assert not set(answers) & US, "an EU client was sent to the US"
    assert stack.demo.daemon.plan.group("chat", "eu").mode.value == "fail-closed"  # type: ignore[union-attr]
    assert set(await stack.ask(count=100)) <= US, "everyone else is served from the US"
    await stack.all_healthy()
