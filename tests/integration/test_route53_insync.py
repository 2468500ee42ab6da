"""Route 53 acknowledges a change as PENDING and serves it once INSYNC; moto answers INSYNC at once, so the
wait is driven here through botocore's Stubber (which checks each request against the real model)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from botocore.stub import Stubber

from controlplane.changes import diff
from controlplane.providers.base import TransientProviderError
from controlplane.providers.route53 import Route53Provider
from tests.fakes.moto import route53_client
from tests.integration.test_route53 import ZONE, chat_plan, cloud_policy, provider

pytestmark = pytest.mark.needs_binary("moto_server")
NOW = datetime.datetime(2026, 11, 28, tzinfo=datetime.UTC)


def change_info(status: str) -> dict[str, Any]:
    return {"ChangeInfo": {"Id": "/change/C0123456789", "Status": status, "SubmittedAt": NOW}}


async def started(moto: str, zone: str, **options: Any) -> tuple[Route53Provider, Any]:
    p = provider(cloud_policy(moto, "chat"), **options)
    await p.start()
    wanted = chat_plan(
        {"eu-west": 100, "eu-central": 0}, {"us-east": 50, "us-west": 50, "eu-west": 0, "eu-central": 0}
    )
    changes = diff(p.name, p.render(wanted), await p.current())  # read before the client is stubbed
    return p, changes


@pytest.fixture
def zone(moto: str) -> str:
    return route53_client(moto).create_hosted_zone(Name=ZONE, CallerReference="insync")["HostedZone"]["Id"]


async def test_a_pending_change_is_polled_until_insync(moto: str, zone: str) -> None:
    p, changes = await started(moto, zone, insync_poll=0.01)
    assert p._client is not None
    with Stubber(p._client) as stub:
        stub.add_response("change_resource_record_sets", change_info("PENDING"))
        stub.add_response("get_change", change_info("PENDING"), {"Id": "/change/C0123456789"})
        stub.add_response("get_change", change_info("INSYNC"), {"Id": "/change/C0123456789"})
        await p.apply(changes)
        stub.assert_no_pending_responses()
    await p.close()


async def test_a_change_that_never_lands_in_time_is_transient(moto: str, zone: str) -> None:
    p, changes = await started(moto, zone, insync_poll=0.01, insync_timeout=0.05)
    assert p._client is not None
    with Stubber(p._client) as stub:
        stub.add_response("change_resource_record_sets", change_info("PENDING"))
        for _ in range(3):
            stub.add_response("get_change", change_info("PENDING"), {"Id": "/change/C0123456789"})
        with pytest.raises(TransientProviderError, match=r"still PENDING after 0\.05s"):
            await p.apply(changes)
    await p.close()
