"""chaos.faultproxy in front of a real moto_server, driven by boto3 (in a thread: the proxy runs on the
test's event loop)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from chaos.faultproxy import CONTROL_PREFIX, Fault, FaultProxy, operation_name, peak_rate, route53_routes
from tests.fakes.moto import moto_fixture, moto_server_fixture, route53_client  # noqa: F401

ZONE = "llm.example.com"
RECORD = {
    "Name": f"chat.{ZONE}",
    "Type": "A",
    "TTL": 60,
    "SetIdentifier": "eu-west",
    "Weight": 10,
    "ResourceRecords": [{"Value": "192.0.2.1"}],
}


# moto_server tells the APIs apart by the credential scope of a request's signature, which it never checks.
ROUTE53_AUTH = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/route53/aws4_request, "
    "SignedHeaders=host, Signature=0"
}


class Clock:
    """A clock the test moves by hand: fault windows end without anyone sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def proxy(moto: str, clock: Clock) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(moto, clock=clock) as proxy:
        yield proxy


def _create_zone(url: str) -> str:
    return route53_client(url).create_hosted_zone(Name=ZONE, CallerReference=ZONE)["HostedZone"]["Id"]


def _write(url: str, zone: str, max_attempts: int = 1) -> dict[str, object]:
    client = route53_client(url, max_attempts=max_attempts)
    batch = {"Changes": [{"Action": "UPSERT", "ResourceRecordSet": RECORD}]}
    return dict(client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=batch))  # type: ignore[arg-type]


def _error(call: object) -> dict[str, object]:
    assert callable(call)
    with pytest.raises(ClientError) as caught:
        call()
    return dict(caught.value.response)


@pytest.mark.needs_binary("moto_server")
async def test_relays_to_moto_and_counts_each_operation(proxy: FaultProxy) -> None:
    def session() -> list[dict[str, object]]:
        client = route53_client(proxy.url)
        zone = _create_zone(proxy.url)
        change = _write(proxy.url, zone)
        client.get_change(Id=change["ChangeInfo"]["Id"])  # type: ignore[index]
        return list(client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"])  # type: ignore[arg-type]

    records = await asyncio.to_thread(session)
    assert any(r.get("SetIdentifier") == "eu-west" for r in records)
    assert proxy.requests == Counter(
        {"CreateHostedZone": 1, "ChangeResourceRecordSets": 1, "GetChange": 1, "ListResourceRecordSets": 1}
    )
    assert not proxy.faulted


@pytest.mark.needs_binary("moto_server")
@pytest.mark.parametrize(
    ("fault", "status", "code", "kind"),
    [
        (Fault.THROTTLING, 400, "Throttling", "Sender"),
        (Fault.PRIOR_REQUEST_NOT_COMPLETE, 400, "PriorRequestNotComplete", "Sender"),
        (Fault.SERVICE_UNAVAILABLE, 503, "ServiceUnavailable", "Receiver"),
    ],
)
async def test_botocore_reads_each_fault_as_route53_says_it_and_retries_only_as_configured(
    proxy: FaultProxy, fault: Fault, status: int, code: str, kind: str
) -> None:
    zone = await asyncio.to_thread(_create_zone, proxy.url)
    proxy.fail(fault, count=1, operations=["ChangeResourceRecordSets"])
    error = await asyncio.to_thread(_error, lambda: _write(proxy.url, zone, max_attempts=1))
    assert error["Error"] == {"Type": kind, "Code": code, "Message": error["Error"]["Message"]}  # type: ignore[index]
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status  # type: ignore[index]
    assert error["ResponseMetadata"]["RetryAttempts"] == 0  # type: ignore[index]

    proxy.fail(fault, count=1, operations=["ChangeResourceRecordSets"])
    written = await asyncio.to_thread(_write, proxy.url, zone, 2)
    # botocore took the fault for a retryable one and hid it: only the count shows it.
    assert written["ResponseMetadata"]["RetryAttempts"] == 1  # type: ignore[index]
    assert proxy.requests["ChangeResourceRecordSets"] == 3
    assert proxy.faulted == Counter({"ChangeResourceRecordSets": 2})


@pytest.mark.needs_binary("moto_server")
async def test_a_default_boto3_client_retries_throttling_on_its_own(proxy: FaultProxy) -> None:
    """Why the provider must configure retries: without a Config, boto3 absorbs throttling silently."""
    zone = await asyncio.to_thread(_create_zone, proxy.url)
    proxy.fail(Fault.THROTTLING, count=1)

    def default_client_lists() -> int:
        client = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        ).client("route53", endpoint_url=proxy.url)
        reply = client.list_resource_record_sets(HostedZoneId=zone)
        return int(reply["ResponseMetadata"]["RetryAttempts"])

    assert await asyncio.to_thread(default_client_lists) == 1
    assert proxy.faulted == Counter({"ListResourceRecordSets": 1})


@pytest.mark.needs_binary("moto_server")
async def test_a_fault_window_ends_on_the_clock_and_spares_other_operations(
    proxy: FaultProxy, clock: Clock
) -> None:
    zone = await asyncio.to_thread(_create_zone, proxy.url)
    proxy.fail(Fault.THROTTLING, seconds=2.0, operations=["ChangeResourceRecordSets"])
    client = route53_client(proxy.url)
    await asyncio.to_thread(client.list_resource_record_sets, HostedZoneId=zone)
    for _ in range(3):
        await asyncio.to_thread(_error, lambda: _write(proxy.url, zone))
    clock.now += 2.0
    await asyncio.to_thread(_write, proxy.url, zone)
    assert proxy.faulted == Counter({"ChangeResourceRecordSets": 3})
    assert proxy.requests == Counter(
        {"CreateHostedZone": 1, "ListResourceRecordSets": 1, "ChangeResourceRecordSets": 4}
    )


@pytest.mark.needs_binary("moto_server")
async def test_slow_mode_delays_answers(proxy: FaultProxy, session: aiohttp.ClientSession) -> None:
    proxy.slow(0.3)
    started = time.monotonic()
    async with session.get(f"{proxy.url}/2013-04-01/hostedzone", headers=ROUTE53_AUTH) as reply:
        assert reply.status == 200
    assert time.monotonic() - started >= 0.3
    proxy.slow(0)
    async with session.get(f"{proxy.url}/2013-04-01/hostedzone", headers=ROUTE53_AUTH) as reply:
        assert reply.status == 200
    assert proxy.requests == Counter({"ListHostedZones": 2})


@pytest.mark.needs_binary("moto_server")
async def test_control_endpoint(proxy: FaultProxy, session: aiohttp.ClientSession) -> None:
    control = f"{proxy.url}{CONTROL_PREFIX}"
    for bad in (
        {"fault": "meltdown"},
        {"fault": "throttling", "count": 0},
        {"fault": "throttling", "seconds": -1},
    ):
        async with session.post(f"{control}/fault", json=bad) as reply:
            assert reply.status == 400, bad
    async with session.post(f"{control}/fault", json={"fault": "throttling", "count": 1}) as reply:
        assert reply.status == 200
    async with session.get(f"{proxy.url}/2013-04-01/hostedzone", headers=ROUTE53_AUTH) as reply:
        assert reply.status == 400
        body = await reply.text()
    assert "<Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>" in body
    assert "<RequestId>" in body
    async with session.get(f"{proxy.url}/2013-04-01/hostedzone", headers=ROUTE53_AUTH) as reply:
        assert reply.status == 200
    async with session.get(f"{control}/stats") as reply:
        stats = await reply.json()
    assert stats == {
        "requests": {"ListHostedZones": 2},
        "faulted": {"ListHostedZones": 1},
        "total": 2,
        "peak_rate": 2,
    }
    async with session.post(f"{control}/reset") as reply:
        assert (await reply.json())["total"] == 0


@pytest.mark.needs_binary("moto_server")
async def test_json_protocol_apis_get_their_own_error_shape(proxy: FaultProxy) -> None:
    proxy.fail(Fault.THROTTLING)

    def list_accelerators() -> None:
        boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-west-2"
        ).client(
            "globalaccelerator",
            endpoint_url=proxy.url,
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        ).list_accelerators()

    error = await asyncio.to_thread(_error, list_accelerators)
    assert error["Error"]["Code"] == "ThrottlingException"  # type: ignore[index]
    assert proxy.faulted == Counter({"ListAccelerators": 1})


def test_refuses_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match="upstream"):
        FaultProxy("http://192.0.2.1:5000")
    with pytest.raises(ValueError, match="host"):
        FaultProxy("http://127.0.0.1:5000", host="0.0.0.0")


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("POST", "/2013-04-01/hostedzone/Z123/rrset/", "ChangeResourceRecordSets"),
        ("GET", "/2013-04-01/hostedzone/Z123/rrset", "ListResourceRecordSets"),
        ("GET", "/2013-04-01/hostedzone/Z123/rrset?maxitems=300", "ListResourceRecordSets"),
        ("GET", "/2013-04-01/change/C42", "GetChange"),
        ("GET", "/2013-04-01/hostedzone/Z123", "GetHostedZone"),
        ("GET", "/2013-04-01/hostedzonecount", "GetHostedZoneCount"),
        ("GET", "/2013-04-01/hostedzonesbyname", "ListHostedZonesByName"),
        ("DELETE", "/2013-04-01/hostedzone/Z123", "DeleteHostedZone"),
        ("PUT", "/2013-04-01/hostedzone/Z123", "Unknown"),
        ("GET", "/2013-04-01/hostedzone//rrset", "Unknown"),
    ],
)
def test_operation_names_come_from_botocores_model(method: str, path: str, name: str) -> None:
    assert operation_name(method, path, None, route53_routes()) == name


def test_operation_name_of_a_json_protocol_request() -> None:
    target = "GlobalAccelerator_V20180706.UpdateEndpointGroup"
    assert operation_name("POST", "/", target, route53_routes()) == "UpdateEndpointGroup"


@pytest.mark.parametrize(
    ("times", "window", "peak"),
    [
        ([], 1.0, 0),
        ([5.0], 1.0, 1),
        ([0.0, 0.5, 0.99, 1.0, 1.5], 1.0, 3),  # [0, 1) holds three; 1.0 starts the next second
        ([3.0, 0.0, 2.0, 1.0], 1.0, 1),  # one a second, arrival order aside
        ([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 0.25, 3),
    ],
)
def test_peak_rate(times: list[float], window: float, peak: int) -> None:
    assert peak_rate(times, window) == peak
