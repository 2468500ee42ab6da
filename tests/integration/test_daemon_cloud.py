"""The daemon driving cloud providers built by the factory from the policy: the same loop, probes and
residency gate, with a cloud API (a faithful fake) as the world to make match."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from chaos.simregion import SimFleet
from tests.conftest import until
from tests.fakes.globalaccelerator import FakeGlobalAccelerator
from tests.integration.daemon_helpers import fault, policy_data, running_plane, write_policy

pytestmark = pytest.mark.usefixtures("aws_credentials")
AWS_REGIONS = {
    "us-east": "us-east-1",
    "us-west": "us-west-2",
    "eu-west": "eu-west-1",
    "eu-central": "eu-central-1",
}
EIP = "eipalloc-0123456789abcdef{}"


async def test_global_accelerator_dials_follow_a_region_that_fails_and_recovers(
    fleet: SimFleet, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with FakeGlobalAccelerator() as ga:
        listener = ga.create_listener(ga.create_accelerator())
        groups = {
            region: ga.create_endpoint_group(listener, aws, [EIP.format(i)])
            for i, (region, aws) in enumerate(AWS_REGIONS.items())
        }
        data = policy_data(fleet)
        data["providers"]["global_accelerator"] = {
            "endpoint_url": ga.endpoint_url,
            "listener_arn": listener,
            "service": "chat",
            "client_group": "global",
            "endpoint_groups": AWS_REGIONS,
        }
        policy = tmp_path / "policy.yaml"
        write_policy(policy, data)

        def dials() -> dict[str, float]:
            return {region: ga.endpoint_group(arn).traffic_dial for region, arn in groups.items()}

        async with running_plane(policy, tmp_path / "state") as plane:
            name = next(p.name for p in plane.daemon.providers if p.name.startswith("global_accelerator:"))
            # Capacities 40/30/20/10: the largest share gets dial 100, the others in proportion.
            full = {"us-east": 100.0, "us-west": 75.0, "eu-west": 50.0, "eu-central": 25.0}
            await until(lambda: dials() == full, what="the dials to follow the first plan")
            await fault(session, fleet["us-east"], mode="down")
            await until(lambda: dials()["us-east"] == 0.0, what="us-east's dial to drop")
            assert dials()["us-west"] == 100.0  # now the largest share
            await fault(session, fleet["us-east"], mode="ok")
            await until(lambda: dials() == full, within=10, what="us-east's dial to come back")
            _, body = await plane.get("/status")
            assert body["providers"][name]["errors"] == 0
            # Steady: the reconciler trusts what it wrote, so the API is barely read and not written.
            reads, updates = ga.count("ListEndpointGroups"), ga.count("UpdateEndpointGroup")
            await plane.settled({"global": {"us-east": 40, "us-west": 30, "eu-west": 20, "eu-central": 10}})
            await asyncio.sleep(1.5)  # fifteen reconcile steps
            assert ga.count("UpdateEndpointGroup") == updates and ga.count("ListEndpointGroups") <= reads + 1
