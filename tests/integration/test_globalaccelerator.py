"""The Global Accelerator provider against the fake service through a real boto3 client: dials follow the
plan (shift, fail over, recover), nothing is written when nothing changed, a foreign endpoint group and
every field but the dial stay as they were, throttling is retried, and each request fits the service model
as botocore's Stubber checks it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from controlplane.changes import diff
from controlplane.policy import Policy
from controlplane.providers.base import PermanentProviderError
from controlplane.providers.globalaccelerator import API_REGION, GlobalAcceleratorProvider
from controlplane.reconciler import Reconciler
from tests.builders import plan, policy_data
from tests.fakes.globalaccelerator import Endpoint, FakeGlobalAccelerator

pytestmark = pytest.mark.usefixtures("aws_credentials")

ALB_EAST = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/chat/0123456789abcdef"
EIP_EAST = "eipalloc-0123456789abcdef0"
ALB_WEST = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/chat/fedcba9876543210"
NLB_WEST = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/net/chat/00112233aabbccdd"
EIP_SOUTH = "eipalloc-0fedcba9876543210"
AWS_REGIONS = {"us-east": "us-east-1", "eu-west": "eu-west-1"}

EVEN = plan({"global": {"us-east": 50, "eu-west": 50}})
SHIFTED = plan({"global": {"us-east": 80, "eu-west": 20}})
FAILED_OVER = plan({"global": {"us-east": 100, "eu-west": 0}})
FAIL_CLOSED = plan({"global": {"us-east": 0, "eu-west": 0}})


@dataclass
class Listener:
    ga: FakeGlobalAccelerator
    arn: str
    east: str
    west: str
    foreign: str  # an endpoint group in a Region the policy does not name: never the plane's
    policy: Policy


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    async with FakeGlobalAccelerator() as ga:
        arn = ga.create_listener(ga.create_accelerator())
        east = ga.create_endpoint_group(
            arn, "us-east-1", [Endpoint(ALB_EAST, weight=200), Endpoint(EIP_EAST, weight=55)]
        )
        west = ga.create_endpoint_group(
            arn, "eu-west-1", [ALB_WEST, Endpoint(NLB_WEST, weight=0, client_ip_preservation=True)]
        )
        foreign = ga.create_endpoint_group(arn, "ap-south-1", [EIP_SOUTH], traffic_dial=40.0)
        regions = [
            {"name": "us-east", "endpoint": "http://127.0.0.11:8000", "jurisdiction": "US"},
            {"name": "eu-west", "endpoint": "http://127.0.0.13:8000", "jurisdiction": "EU"},
        ]
        settings = {
            "endpoint_url": ga.endpoint_url,
            "listener_arn": arn,
            "service": "chat",
            "client_group": "global",
            "endpoint_groups": AWS_REGIONS,
        }
        data = policy_data(regions, providers={"global_accelerator": settings})
        yield Listener(ga, arn, east, west, foreign, Policy.model_validate(data))


@pytest.fixture
async def provider(listener: Listener) -> AsyncIterator[GlobalAcceleratorProvider]:
    (settings,) = listener.policy.providers.global_accelerator_list
    provider = GlobalAcceleratorProvider(listener.policy, settings)
    await provider.start()
    yield provider
    await provider.close()


def reconciler(provider: GlobalAcceleratorProvider, attempts: int = 3) -> Reconciler:
    # Each step of a test is a new decision: the API's write spacing is not under test here.
    provider.tuning = replace(provider.tuning, min_interval=0.0)
    return Reconciler([provider], attempts=attempts, backoff_initial=0.01, backoff_max=0.02)


def dials(listener: Listener) -> dict[str, float]:
    groups = {"us-east": listener.east, "eu-west": listener.west}
    return {region: listener.ga.endpoint_group(arn).traffic_dial for region, arn in groups.items()}


async def test_dials_follow_the_plan_through_shift_failover_and_recovery(
    listener: Listener, provider: GlobalAcceleratorProvider
) -> None:
    rec = reconciler(provider)
    steps = [
        (SHIFTED, {"us-east": 100.0, "eu-west": 25.0}),
        (FAILED_OVER, {"us-east": 100.0, "eu-west": 0.0}),
        (FAIL_CLOSED, {"us-east": 0.0, "eu-west": 0.0}),
        (EVEN, {"us-east": 100.0, "eu-west": 100.0}),
    ]
    for step, expected in steps:
        (outcome,) = await rec.reconcile(listener.policy, step)
        assert outcome.error is None and outcome.applied
        assert dials(listener) == expected
        assert await provider.current() == provider.render(step)
    # One UpdateEndpointGroup per dial that moved: 1 + 1 + 1 + 2.
    assert listener.ga.count("UpdateEndpointGroup") == 5


async def test_an_unchanged_plan_writes_nothing(
    listener: Listener, provider: GlobalAcceleratorProvider
) -> None:
    rec = reconciler(provider)
    # The groups start at dial 100, which is what an even plan renders to: nothing to write from the start.
    for step in (EVEN, EVEN, SHIFTED, SHIFTED, SHIFTED):
        await rec.reconcile(listener.policy, step)
    assert listener.ga.count("UpdateEndpointGroup") == 1
    rec.forget(provider.name)  # a fresh read of the real state diffs to nothing as well
    (outcome,) = await rec.reconcile(listener.policy, SHIFTED)
    assert not outcome.changes and listener.ga.count("UpdateEndpointGroup") == 1


async def test_a_foreign_endpoint_group_is_never_read_back_nor_touched(
    listener: Listener, provider: GlobalAcceleratorProvider, caplog: pytest.LogCaptureFixture
) -> None:
    before = listener.ga.endpoint_group(listener.foreign)
    rec = reconciler(provider)
    for step in (FAILED_OVER, FAIL_CLOSED, EVEN):
        rec.forget(provider.name)  # a read at every step
        await rec.reconcile(listener.policy, step)
    # start() warned about it; the same foreign group is not warned about at every read.
    assert not [r for r in caplog.records if "not in the policy" in r.getMessage()]
    assert listener.ga.endpoint_group(listener.foreign) == before
    assert {record.target for record in await provider.current()} == {"us-east-1", "eu-west-1"}
    sent_to = {
        call.params["EndpointGroupArn"]
        for call in listener.ga.calls
        if call.operation == "UpdateEndpointGroup"
    }
    assert sent_to == {listener.east, listener.west}


async def test_every_field_but_the_dial_stays_even_when_edited_between_read_and_write(
    listener: Listener, provider: GlobalAcceleratorProvider
) -> None:
    """UpdateEndpointGroup replaces any endpoint list it is given, and GA has no conditional write: a
    provider sending the list it read would undo an operator's edit made in between."""
    operator = boto3.client(
        "globalaccelerator",
        endpoint_url=listener.ga.endpoint_url,
        region_name=API_REGION,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    try:
        await asyncio.to_thread(
            operator.update_endpoint_group,
            EndpointGroupArn=listener.west,
            HealthCheckProtocol="HTTP",
            HealthCheckPath="/health",
            HealthCheckIntervalSeconds=10,
            PortOverrides=[{"ListenerPort": 443, "EndpointPort": 8443}],
        )
        changes = diff(provider.name, provider.render(FAILED_OVER), await provider.current())
        # The operator adds an endpoint after the plane's read, before its write.
        await asyncio.to_thread(
            operator.update_endpoint_group,
            EndpointGroupArn=listener.west,
            EndpointConfigurations=[
                {"EndpointId": ALB_WEST, "Weight": 128, "ClientIPPreservationEnabled": True},
                {"EndpointId": NLB_WEST, "Weight": 0, "ClientIPPreservationEnabled": True},
                {"EndpointId": EIP_SOUTH, "Weight": 7},
            ],
        )
    finally:
        operator.close()
    east, west = listener.ga.endpoint_group(listener.east), listener.ga.endpoint_group(listener.west)

    await provider.apply(changes)
    assert listener.ga.endpoint_group(listener.west) == replace(west, traffic_dial=0.0)
    changes = diff(provider.name, provider.render(EVEN), await provider.current())
    await provider.apply(changes)
    assert listener.ga.endpoint_group(listener.west) == west
    assert listener.ga.endpoint_group(listener.east) == east
    assert [e.endpoint_id for e in west.endpoints] == [ALB_WEST, NLB_WEST, EIP_SOUTH]


@pytest.mark.parametrize(
    ("code", "status"), [("ThrottlingException", 400), ("InternalServiceErrorException", 500)]
)
async def test_throttling_and_service_errors_are_retried_until_the_dial_is_set(
    listener: Listener, provider: GlobalAcceleratorProvider, code: str, status: int
) -> None:
    rec = reconciler(provider, attempts=3)
    await rec.reconcile(listener.policy, EVEN)  # learns the state; the next diff needs no read
    first = len(listener.ga.calls)
    listener.ga.fail_next(2, code, status)
    (outcome,) = await rec.reconcile(listener.policy, FAILED_OVER)
    assert outcome.error is None and outcome.applied
    assert dials(listener) == {"us-east": 100.0, "eu-west": 0.0}
    # The write refused, the re-read refused, then a re-read and the write: each once, so botocore retried
    # nothing by itself and every retry diffed against a fresh read.
    assert [call.operation for call in list(listener.ga.calls)[first:]] == [
        "UpdateEndpointGroup",
        "ListEndpointGroups",
        "ListEndpointGroups",
        "UpdateEndpointGroup",
    ]


async def test_a_refusal_is_permanent_and_not_retried(
    listener: Listener, provider: GlobalAcceleratorProvider
) -> None:
    rec = reconciler(provider, attempts=3)
    await rec.reconcile(listener.policy, EVEN)
    first = len(listener.ga.calls)
    listener.ga.fail_next(1, "AccessDeniedException", 400, "not allowed")
    (outcome,) = await rec.reconcile(listener.policy, FAILED_OVER)
    assert outcome.error is not None and "PermanentProviderError" in outcome.error
    assert "AccessDeniedException (HTTP 400): not allowed" in outcome.error
    assert [call.operation for call in list(listener.ga.calls)[first:]] == ["UpdateEndpointGroup"]
    assert dials(listener)["eu-west"] == 100.0


async def test_a_missing_endpoint_group_is_refused_not_created(listener: Listener) -> None:
    data = listener.policy.model_dump(mode="json")
    data["providers"]["global_accelerator"]["endpoint_groups"] = {"us-east": "us-east-2"}
    policy = Policy.model_validate(data)
    (settings,) = policy.providers.global_accelerator_list
    provider = GlobalAcceleratorProvider(policy, settings)
    try:
        with pytest.raises(PermanentProviderError, match=r"no endpoint group in \['us-east-2'\]"):
            await provider.start()
    finally:
        await provider.close()


async def test_every_request_fits_the_service_model_as_stubber_checks_it(
    listener: Listener, provider: GlobalAcceleratorProvider
) -> None:
    """Stubber checks each request against botocore's model of the real service and against the exact
    parameters expected (the dial as a float, no endpoint list, the next page's token); the answers given
    are checked against the model too."""

    def group(arn: str, region: str) -> dict[str, Any]:
        return {"EndpointGroupArn": arn, "EndpointGroupRegion": region, "TrafficDialPercentage": 100.0}

    def update(arn: str, dial: float) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return "update_endpoint_group", {}, {"EndpointGroupArn": arn, "TrafficDialPercentage": dial}

    client = provider._client
    assert client is not None
    with Stubber(client) as stubber:
        stubber.add_response(
            "list_endpoint_groups",
            {"EndpointGroups": [group(listener.east, "us-east-1")], "NextToken": "page-2"},
            {"ListenerArn": listener.arn, "MaxResults": 100},
        )
        stubber.add_response(
            "list_endpoint_groups",
            {"EndpointGroups": [group(listener.west, "eu-west-1")]},
            {"ListenerArn": listener.arn, "MaxResults": 100, "NextToken": "page-2"},
        )
        # A shift moves one dial; failing closed lowers both (neither is raised, so in key order).
        for expected in (update(listener.west, 25.0), update(listener.west, 0.0), update(listener.east, 0.0)):
            stubber.add_response(*expected)
        held = await provider.current()
        assert [(r.region, r.weight) for r in held] == [("eu-west", 100), ("us-east", 100)]
        await provider.apply(diff(provider.name, provider.render(SHIFTED), held))
        await provider.apply(diff(provider.name, provider.render(FAIL_CLOSED), held))
        stubber.assert_no_pending_responses()
    assert listener.ga.count("UpdateEndpointGroup") == 0  # the stubbed client sent nothing
