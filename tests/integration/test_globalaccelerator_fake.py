"""The Global Accelerator fake, reached through a real boto3 client as the provider will reach it: what it
answers, how it refuses, its fault knob and call log, and that its requests and answers fit the model that
botocore's Stubber checks against."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError
from botocore.stub import Stubber

from tests.fakes.globalaccelerator import (
    CONTENT_TYPE,
    MAX_BODY,
    TARGET_PREFIX,
    Endpoint,
    FakeGlobalAccelerator,
    ServiceError,
)

ALB_EAST = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/chat/0123456789abcdef"
ALB_WEST = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/chat/fedcba9876543210"
EIP_EAST = "eipalloc-0123456789abcdef0"
NLB_EAST = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/chat/00112233aabbccdd"


def make_client(endpoint_url: str, region: str = "us-west-2", attempts: int = 1) -> Any:
    """The client as production builds it; botocore's retries are off unless asked, so that each call is
    one request."""
    return boto3.client(
        "globalaccelerator",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}),
    )


@pytest.fixture
async def ga() -> AsyncIterator[FakeGlobalAccelerator]:
    async with FakeGlobalAccelerator() as fake:
        yield fake


@pytest.fixture
def client(ga: FakeGlobalAccelerator) -> Iterator[Any]:
    client = make_client(ga.endpoint_url)
    yield client
    client.close()


@pytest.fixture
def listener(ga: FakeGlobalAccelerator) -> str:
    return ga.create_listener(ga.create_accelerator())


@pytest.fixture
def east(ga: FakeGlobalAccelerator, listener: str) -> str:
    """us-east-1's group: an Application Load Balancer and an Elastic IP, both healthy."""
    return ga.create_endpoint_group(listener, "us-east-1", [ALB_EAST, EIP_EAST])


async def call(client: Any, method: str, **params: Any) -> dict[str, Any]:
    """One API call off the event loop, which serves the fake: boto3 blocks."""
    response: dict[str, Any] = await asyncio.to_thread(getattr(client, method), **params)
    return response


async def refusal(client: Any, method: str, **params: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await call(client, method, **params)
    return caught.value


async def test_describe_listener_and_endpoint_group(
    ga: FakeGlobalAccelerator, client: Any, listener: str, east: str
) -> None:
    described = await call(client, "describe_listener", ListenerArn=listener)
    assert described["Listener"] == {
        "ListenerArn": listener,
        "PortRanges": [{"FromPort": 443, "ToPort": 443}],
        "Protocol": "TCP",
        "ClientAffinity": "NONE",
    }
    group = (await call(client, "describe_endpoint_group", EndpointGroupArn=east))["EndpointGroup"]
    assert (group["EndpointGroupArn"], group["EndpointGroupRegion"], group["TrafficDialPercentage"]) == (
        east,
        "us-east-1",
        100.0,
    )
    # Defaults as the service documents them: weight 128, client IP preserved for an ALB only.
    assert group["EndpointDescriptions"] == [
        {
            "EndpointId": ALB_EAST,
            "Weight": 128,
            "HealthState": "HEALTHY",
            "ClientIPPreservationEnabled": True,
        },
        {
            "EndpointId": EIP_EAST,
            "Weight": 128,
            "HealthState": "HEALTHY",
            "ClientIPPreservationEnabled": False,
        },
    ]


async def test_endpoint_groups_are_listed_in_pages(
    ga: FakeGlobalAccelerator, client: Any, listener: str
) -> None:
    regions = ["us-east-1", "us-east-2", "us-west-1", "eu-west-1", "eu-central-1"]
    arns = [ga.create_endpoint_group(listener, region, [EIP_EAST]) for region in regions]
    other = ga.create_listener(ga.create_accelerator())
    ga.create_endpoint_group(other, "ap-south-1")

    pages: list[list[str]] = []
    token: dict[str, str] = {}
    while True:
        page = await call(client, "list_endpoint_groups", ListenerArn=listener, MaxResults=2, **token)
        pages.append([group["EndpointGroupArn"] for group in page["EndpointGroups"]])
        if "NextToken" not in page:
            break
        token = {"NextToken": page["NextToken"]}
    assert pages == [arns[0:2], arns[2:4], arns[4:]]

    # Without MaxResults a page holds 10, so all five come at once and no token follows.
    whole = await call(client, "list_endpoint_groups", ListenerArn=listener)
    assert [group["EndpointGroupArn"] for group in whole["EndpointGroups"]] == arns
    assert "NextToken" not in whole

    first = await call(client, "list_endpoint_groups", ListenerArn=listener, MaxResults=1)
    stolen = await refusal(client, "list_endpoint_groups", ListenerArn=other, NextToken=first["NextToken"])
    assert stolen.response["Error"]["Code"] == "InvalidNextTokenException"


async def test_update_replaces_the_endpoint_list_and_sets_the_dial(
    ga: FakeGlobalAccelerator, client: Any, east: str
) -> None:
    ga.set_health(east, EIP_EAST, "UNHEALTHY")
    updated = await call(
        client,
        "update_endpoint_group",
        EndpointGroupArn=east,
        EndpointConfigurations=[
            {"EndpointId": EIP_EAST, "Weight": 0},
            {"EndpointId": NLB_EAST, "Weight": 255, "ClientIPPreservationEnabled": True},
        ],
        TrafficDialPercentage=25.0,
    )
    # The ALB, not listed, is gone; the EIP keeps its health (the checks' business), the NLB is new.
    expected = [
        {
            "EndpointId": EIP_EAST,
            "Weight": 0,
            "HealthState": "UNHEALTHY",
            "ClientIPPreservationEnabled": False,
        },
        {
            "EndpointId": NLB_EAST,
            "Weight": 255,
            "HealthState": "INITIAL",
            "ClientIPPreservationEnabled": True,
        },
    ]
    assert updated["EndpointGroup"]["EndpointDescriptions"] == expected
    assert updated["EndpointGroup"]["TrafficDialPercentage"] == 25.0

    # What the update left out stays as it was: the dial here, the endpoints below.
    redialled = await call(client, "update_endpoint_group", EndpointGroupArn=east, TrafficDialPercentage=0.0)
    assert redialled["EndpointGroup"]["EndpointDescriptions"] == expected
    stored = ga.endpoint_group(east)
    assert (stored.traffic_dial, [e.endpoint_id for e in stored.endpoints]) == (0.0, [EIP_EAST, NLB_EAST])

    emptied = await call(client, "update_endpoint_group", EndpointGroupArn=east, EndpointConfigurations=[])
    assert emptied["EndpointGroup"]["EndpointDescriptions"] == []


FOREIGN_GROUP = "arn:aws:globalaccelerator::123456789012:accelerator/abc/listener/def/endpoint-group/123"
FOREIGN_LISTENER = "arn:aws:globalaccelerator::123456789012:accelerator/abc/listener/def"


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("describe_endpoint_group", {"EndpointGroupArn": FOREIGN_GROUP}, "EndpointGroupNotFoundException"),
        (
            "update_endpoint_group",
            {"EndpointGroupArn": FOREIGN_GROUP, "TrafficDialPercentage": 0.0},
            "EndpointGroupNotFoundException",
        ),
        ("describe_listener", {"ListenerArn": FOREIGN_LISTENER}, "ListenerNotFoundException"),
        ("list_endpoint_groups", {"ListenerArn": FOREIGN_LISTENER}, "ListenerNotFoundException"),
        ("describe_listener", {"ListenerArn": FOREIGN_GROUP}, "InvalidArgumentException"),
        ("describe_endpoint_group", {"EndpointGroupArn": "arn:aws:s3:::bucket"}, "InvalidArgumentException"),
        (
            "list_endpoint_groups",
            {"ListenerArn": FOREIGN_LISTENER, "MaxResults": 101},
            "InvalidArgumentException",
        ),
    ],
)
async def test_unknown_and_malformed_arns_are_refused_with_the_models_errors(
    ga: FakeGlobalAccelerator, client: Any, method: str, params: dict[str, Any], code: str
) -> None:
    error = await refusal(client, method, **params)
    assert error.response["Error"]["Code"] == code
    assert isinstance(error, getattr(client.exceptions, code))
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"EndpointConfigurations": [{"EndpointId": EIP_EAST, "Weight": 256}]}, "256 is more than 255"),
        ({"TrafficDialPercentage": 100.5}, "100.5 is more than 100"),
        ({"EndpointConfigurations": [{"EndpointId": "sg-0123456789abcdef0"}]}, "not a valid endpoint id"),
        ({"EndpointConfigurations": [{"EndpointId": ALB_WEST}]}, "is in eu-west-1"),
        ({"EndpointConfigurations": [{"EndpointId": EIP_EAST}, {"EndpointId": EIP_EAST}]}, "listed twice"),
        ({"EndpointConfigurations": [{"Weight": 1}]}, "EndpointId is required"),
        ({"HealthCheckProtocol": "UDP"}, "is not one of"),
    ],
)
async def test_invalid_updates_are_refused_and_change_nothing(
    ga: FakeGlobalAccelerator, client: Any, east: str, change: dict[str, Any], says: str
) -> None:
    before = ga.endpoint_group(east)
    error = await refusal(client, "update_endpoint_group", EndpointGroupArn=east, **change)
    assert isinstance(error, client.exceptions.InvalidArgumentException)
    assert says in error.response["Error"]["Message"]
    assert ga.endpoint_group(east) == before


async def test_failures_on_demand_then_recovery_all_in_the_call_log(
    ga: FakeGlobalAccelerator, client: Any, east: str
) -> None:
    ga.fail_next(2)
    ga.fail_next(1, "InternalServiceErrorException", 500, "try again")
    for code, status in [("ThrottlingException", 400)] * 2 + [("InternalServiceErrorException", 500)]:
        error = await refusal(
            client, "update_endpoint_group", EndpointGroupArn=east, TrafficDialPercentage=0.0
        )
        assert (error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]) == (
            code,
            status,
        )
    assert ga.endpoint_group(east).traffic_dial == 100.0  # a refused call changed nothing
    await call(client, "update_endpoint_group", EndpointGroupArn=east, TrafficDialPercentage=0.0)
    assert ga.endpoint_group(east).traffic_dial == 0.0
    assert ga.count("UpdateEndpointGroup") == 4
    assert [call.params for call in ga.calls] == [
        {"EndpointGroupArn": east, "TrafficDialPercentage": 0.0}
    ] * 4


async def test_botocore_retries_throttling_by_itself(ga: FakeGlobalAccelerator, east: str) -> None:
    """Global Accelerator's model names no throttling error, yet botocore retries the generic one unasked:
    a provider counting its requests must count attempts, which the call log shows."""
    retrying = make_client(ga.endpoint_url, attempts=2)
    try:
        ga.fail_next(1)
        await call(retrying, "describe_endpoint_group", EndpointGroupArn=east)
    finally:
        retrying.close()
    assert ga.count("DescribeEndpointGroup") == 2


async def test_a_client_signing_for_another_region_is_refused(ga: FakeGlobalAccelerator, east: str) -> None:
    elsewhere = make_client(ga.endpoint_url, region="eu-west-1")
    try:
        error = await refusal(elsewhere, "describe_endpoint_group", EndpointGroupArn=east)
    finally:
        elsewhere.close()
    assert error.response["Error"]["Code"] == "InvalidSignatureException"
    assert ga.endpoint_group(east).traffic_dial == 100.0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"EndpointGroupArn": "x", "TrafficDialPercentage": NaN}', 400, "SerializationException"),
        (b"[]", 400, "SerializationException"),
        (b"{" + b" " * MAX_BODY + b"}", 413, None),
    ],
)
async def test_hostile_bodies_are_refused(
    ga: FakeGlobalAccelerator, session: aiohttp.ClientSession, body: bytes, status: int, code: str | None
) -> None:
    headers = {
        "X-Amz-Target": f"{TARGET_PREFIX}UpdateEndpointGroup",
        "Content-Type": CONTENT_TYPE,
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-west-2/globalaccelerator/aws4_request",
    }
    async with session.post(ga.endpoint_url + "/", data=body, headers=headers) as response:
        assert response.status == status
        if code is not None:
            assert json.loads(await response.read())["__type"].endswith(f"#{code}")
    assert ga.count("UpdateEndpointGroup") == 0


async def test_provider_requests_and_fake_answers_fit_the_model_stubber_checks(
    ga: FakeGlobalAccelerator, client: Any, listener: str, east: str
) -> None:
    """The request the provider sends passes the model as botocore's Stubber checks it, and so do the fake's
    answers as sent (the parsed ones have lost what the model lacks): a fake drifting from the real API (a
    member the model does not have, a wrong type) fails here."""
    sent: dict[str, Any] = {}

    def keep_body(http_response: Any, model: Any, **_: Any) -> None:
        sent[model.name] = json.loads(http_response.content)

    client.meta.events.register(f"after-call.{client.meta.service_model.service_id.hyphenize()}", keep_body)
    request: dict[str, Any] = {
        "EndpointGroupArn": east,
        "EndpointConfigurations": [
            {"EndpointId": ALB_EAST, "Weight": 200, "ClientIPPreservationEnabled": True},
            {"EndpointId": EIP_EAST, "Weight": 55, "ClientIPPreservationEnabled": False},
        ],
        "TrafficDialPercentage": 40.0,
    }
    calls: dict[str, dict[str, Any]] = {
        "update_endpoint_group": request,
        "describe_endpoint_group": {"EndpointGroupArn": east},
        "describe_listener": {"ListenerArn": listener},
        "list_endpoint_groups": {"ListenerArn": listener, "MaxResults": 1},
    }
    for method, params in calls.items():
        await call(client, method, **params)

    stubbed = make_client(ga.endpoint_url)
    try:
        with Stubber(stubbed) as stubber:
            for method, params in calls.items():
                answer = sent[stubbed.meta.method_to_api_mapping[method]]
                stubber.add_response(method, answer, params)
                assert getattr(stubbed, method)(**params) == answer
            stubber.assert_no_pending_responses()
            # The check is not vacuous: a weight sent as a string is refused before anything is sent.
            stubber.add_response("update_endpoint_group", {})
            with pytest.raises(ParamValidationError, match="Weight"):
                stubbed.update_endpoint_group(
                    EndpointGroupArn=east, EndpointConfigurations=[{"EndpointId": EIP_EAST, "Weight": "55"}]
                )
    finally:
        stubbed.close()
    assert ga.count("UpdateEndpointGroup") == 1  # the stubbed client sent nothing


def test_set_up_refuses_what_the_service_would() -> None:
    ga = FakeGlobalAccelerator()
    listener = ga.create_listener(ga.create_accelerator())
    ga.create_endpoint_group(listener, "us-east-1", [Endpoint(EIP_EAST, weight=7)])
    with pytest.raises(ServiceError, match="EndpointGroupAlreadyExistsException"):
        ga.create_endpoint_group(listener, "us-east-1")
    with pytest.raises(ServiceError, match="is in eu-west-1"):
        ga.create_endpoint_group(listener, "us-east-2", [ALB_WEST])
