"""The provider fence of replicated planes (issue 11): a deposed leader's write is refused by the provider.

Route 53 runs on moto behind tests.fakes.route53_strict, which checks batches as Route 53 does (moto alone
takes a DELETE of any value a record set ever had, so no fence could be seen on it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from botocore.exceptions import ClientError

from controlplane.changes import ChangeSet, diff
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers import route53
from controlplane.providers.base import Fenced, Tuning
from controlplane.providers.clouddns import CloudDnsProvider
from controlplane.providers.globalaccelerator import GlobalAcceleratorProvider
from controlplane.providers.route53 import LEASE_LABEL, Route53Provider
from controlplane.reconciler import Reconciler
from tests.builders import haproxy_policy, plan
from tests.fakes.clouddns import FakeCloudDns
from tests.fakes.moto import listing, route53_client
from tests.fakes.route53_strict import (  # noqa: F401 - fixtures
    StrictRoute53,
    strict_route53_fixture,
    strict_route53_server_fixture,
)
from tests.integration import test_clouddns as clouddns_tests
from tests.integration import test_globalaccelerator as ga_tests
from tests.integration import test_haproxy as haproxy_tests
from tests.integration.test_route53 import ZONE, chat_plan, cloud_policy, provider

needs_moto = pytest.mark.needs_binary("moto_server")
# The HAProxy and Global Accelerator tests' fixtures, registered here too: pytest finds fixtures by name.
endpoints, stack, listener = haproxy_tests.endpoints, haproxy_tests.stack, ga_tests.listener

LEASE = f"{LEASE_LABEL}.prod.{ZONE}."
A = chat_plan({"eu-west": 50, "eu-central": 50}, {"us-east": 50, "us-west": 30, "eu-west": 20})
B = chat_plan({"eu-west": 50, "eu-central": 50}, {"us-east": 20, "us-west": 60, "eu-west": 20})  # world moves
C = chat_plan({"eu-west": 90, "eu-central": 10}, {"us-east": 50, "us-west": 30, "eu-west": 20})  # eu moves


def at(epoch: int) -> Callable[[], int]:
    return lambda: epoch


def lease_value(epoch: int, owner: str = "prod") -> str:
    return f'"heritage=llm-failover-plane,owner={owner},epoch={epoch}"'


@pytest.fixture
def zone(strict_route53: str) -> str:
    client = route53_client(strict_route53)
    return client.create_hosted_zone(Name=ZONE, CallerReference="fence")["HostedZone"]["Id"]


def batch(url: str, zone_id: str, *changes: tuple[str, Mapping[str, Any]]) -> None:
    route53_client(url).change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [{"Action": a, "ResourceRecordSet": dict(r)} for a, r in changes]},  # type: ignore[typeddict-item]
    )


def txt(name: str, value: str, ttl: int = 60) -> dict[str, Any]:
    return {"Name": name, "Type": "TXT", "TTL": ttl, "ResourceRecords": [{"Value": value}]}


def weighted(name: str, weight: int) -> dict[str, Any]:
    return {
        "Name": name,
        "Type": "A",
        "SetIdentifier": "one",
        "Weight": weight,
        "TTL": 60,
        "ResourceRecords": [{"Value": "203.0.113.1"}],
    }


def refused(url: str, zone_id: str, *changes: tuple[str, Mapping[str, Any]]) -> str:
    with pytest.raises(ClientError) as caught:
        batch(url, zone_id, *changes)
    assert caught.value.response["Error"]["Code"] == "InvalidChangeBatch"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return str(caught.value.response["Error"]["Message"])


def leases(url: str, zone_id: str) -> list[list[str]]:
    """The values of every lease record set in the zone (one list per record set)."""
    return [
        [v["Value"] for v in r["ResourceRecords"]]
        for r in listing(url, zone_id)
        if r["Name"].startswith(f"{LEASE_LABEL}.")
    ]


async def started(url: str, epoch: int | None, policy: Policy | None = None) -> Route53Provider:
    p = provider(policy or cloud_policy(url, "chat"))
    await p.start()
    p.fence = None if epoch is None else at(epoch)
    return p


async def converge(p: Route53Provider, target: RoutingPlan) -> ChangeSet:
    changes = diff(p.name, p.render(target), await p.current())
    await p.apply(changes)
    return changes


# ---------------------------------------------------------------- the strict proxy itself


@needs_moto
async def test_the_proxy_refuses_a_batch_whole_as_route53_does(strict_route53: str, zone: str) -> None:
    url, x, y = strict_route53, f"x.{ZONE}.", f"y.{ZONE}."
    batch(url, zone, ("CREATE", txt(x, '"v1"')), ("CREATE", weighted(f"w.{ZONE}.", 10)))
    held = listing(url, zone)

    message = refused(url, zone, ("CREATE", txt(y, '"new"')), ("DELETE", txt(x, '"v0"')))
    assert message == (
        f"[Tried to delete resource record set [name='{x}', type='TXT'] "
        "but the values provided do not match the current values]"
    )
    message = refused(url, zone, ("DELETE", txt(x, '"v1"', ttl=61)))
    assert "do not match the current values" in message
    message = refused(url, zone, ("DELETE", weighted(f"w.{ZONE}.", 11)))
    assert f"[name='w.{ZONE}.', type='A', set-identifier='one']" in message
    message = refused(url, zone, ("CREATE", txt(x, '"v2"')), ("DELETE", txt(y, '"none"')))
    assert message == (
        f"[Tried to create resource record set [name='{x}', type='TXT'] but it already exists, "
        f"Tried to delete resource record set [name='{y}', type='TXT'] but it was not found]"
    )
    assert listing(url, zone) == held  # nothing of a refused batch landed, y included

    # A DELETE and a CREATE of one name in one batch, also with the very values it holds (moto alone
    # refuses a CREATE of a value it once journalled).
    batch(url, zone, ("DELETE", txt(x, '"v1"')), ("CREATE", txt(x, '"v2"')))
    batch(url, zone, ("DELETE", txt(x, '"v2"')), ("CREATE", txt(x, '"v2"')), ("CREATE", txt(y, '"y"')))
    values = {r["Name"]: r["ResourceRecords"] for r in listing(url, zone) if r["Type"] == "TXT"}
    assert values == {x: [{"Value": '"v2"'}], y: [{"Value": '"y"'}]}
    assert "do not match" in refused(url, zone, ("DELETE", txt(x, '"v1"')))  # moto alone takes it


# ---------------------------------------------------------------- Route 53 under a fence


@needs_moto
async def test_a_fenced_write_carries_the_lease_in_every_batch_and_an_unfenced_one_none(
    strict_route53: str, strict_route53_server: StrictRoute53, zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, proxy = strict_route53, strict_route53_server
    staging = await started(url, None, cloud_policy(url, "embed", owner="staging"))
    await converge(staging, plan({"eu": {"eu-west": 100}, "global": {"us-east": 100}}, service="embed"))
    assert leases(url, zone) == []  # no fence: the zone holds what it always held
    assert all(name != LEASE for sent in proxy.accepted for _, name in sent)
    proxy.accepted.clear()

    # Small batches, so one apply takes several, each with the lease's rewrite first.
    monkeypatch.setattr(route53, "MAX_BATCH_RECORDS", 2 + 6)
    prod = await started(url, 5)
    await converge(prod, A)
    assert leases(url, zone) == [[lease_value(5)]]
    first, *rest = proxy.accepted
    assert len(rest) > 1
    assert first[0] == ("CREATE", LEASE)  # none held yet: Route 53 refuses it if one appears meanwhile
    assert all(sent[:2] == [("DELETE", LEASE), ("CREATE", LEASE)] for sent in rest)
    assert all(name != LEASE for sent in proxy.accepted for _, name in sent[2:])
    await converge(prod, C)  # the steady state: the lease deleted as read, created again at epoch 5
    assert proxy.accepted[-1][:2] == [("DELETE", LEASE), ("CREATE", LEASE)]
    assert leases(url, zone) == [[lease_value(5)]]

    # The lease is no record of any service: current() never reports it, so no diff deletes it, not even
    # when every record of the owner goes; the unfenced owner in the zone leaves it alone.
    assert not [r for r in await prod.current() if LEASE_LABEL in r.name or "epoch" in r.target]
    await converge(staging, plan({"eu": {"eu-central": 100}, "global": {"us-west": 100}}, service="embed"))
    other = cloud_policy(url, "api")
    prod.update_policy(other)
    await converge(prod, plan({"eu": {"eu-west": 100}, "global": {"us-east": 100}}, service="api"))
    names = {r["Name"] for r in listing(url, zone)}
    assert not [n for n in names if n.endswith(f"chat.{ZONE}.")]
    assert leases(url, zone) == [[lease_value(5)]]
    assert not diff(
        prod.name,
        prod.render(plan({"eu": {"eu-west": 100}, "global": {"us-east": 100}}, "api")),
        await prod.current(),
    )
    await staging.close()
    await prod.close()


@needs_moto
async def test_a_deposed_leaders_batch_is_refused_whole_and_a_reader_of_the_newer_lease_sends_nothing(
    strict_route53: str, strict_route53_server: StrictRoute53, zone: str
) -> None:
    url, proxy = strict_route53, strict_route53_server
    old = await started(url, 5)
    await converge(old, A)
    new = await started(url, 7)  # the next leader, another replica's instance
    await converge(new, B)
    assert leases(url, zone) == [[lease_value(7)]]
    held = listing(url, zone)

    # The deposed leader still takes the zone to be what it wrote (its lease at epoch 5) and moves only the
    # EU group's weights, which the new leader left as they were: only the lease can refuse that batch.
    with pytest.raises(Fenced, match=r"holds epoch 7, newer than ours \(5\)"):
        await old.apply(diff(old.name, old.render(C), old.render(A)))
    assert listing(url, zone) == held
    assert len(proxy.refused) == 1 and f"[name='{LEASE}', type='TXT']" in proxy.refused[0]

    # Having read the zone, it knows better than to send anything.
    sent = (len(proxy.accepted), len(proxy.refused))
    with pytest.raises(Fenced, match="holds epoch 7, newer than this leader's 5"):
        await converge(old, C)
    assert (len(proxy.accepted), len(proxy.refused)) == sent
    assert listing(url, zone) == held
    await new.close()
    await old.close()


@needs_moto
async def test_a_new_leader_with_a_stale_view_of_the_lease_takes_over_on_the_retry(
    strict_route53: str, strict_route53_server: StrictRoute53, zone: str
) -> None:
    url, proxy = strict_route53, strict_route53_server
    policy = cloud_policy(url, "chat")
    replica = await started(url, 3, policy)
    replica.tuning = Tuning(timeout=30.0, min_interval=0.0, resync=60.0)
    reconciler = Reconciler([replica], backoff_initial=0.01)
    [outcome] = await reconciler.reconcile(policy, A)
    assert outcome.applied and outcome.error is None
    other = await started(url, 5)  # another replica led meanwhile
    await converge(other, B)

    # Elected again at epoch 7, the replica's view (lease at 3) is older than the zone's: its first batch
    # is refused over the lease, the lease read holds an older epoch than 7, so the retry reads the zone
    # and its batch carries the lease as it is now.
    replica.fence = at(7)
    [outcome] = await reconciler.reconcile(policy, C)
    assert outcome.applied and outcome.error is None, outcome
    assert leases(url, zone) == [[lease_value(7)]]
    assert len(proxy.refused) == 1 and f"[name='{LEASE}', type='TXT']" in proxy.refused[0]
    assert not diff(replica.name, replica.render(C), await replica.current())
    await other.close()
    await replica.close()


# ---------------------------------------------------------------- Cloud DNS under a fence

CLOUD_A = plan({"eu": {"eu-west": 60, "eu-central": 40}, "global": {"us-east": 50, "us-west": 50}})
CLOUD_B = plan({"eu": {"eu-west": 60, "eu-central": 40}, "global": {"us-east": 20, "us-west": 80}})
CLOUD_C = plan({"eu": {"eu-west": 90, "eu-central": 10}, "global": {"us-east": 50, "us-west": 50}})
CLOUD_LEASE = (f"{LEASE_LABEL}.prod.{clouddns_tests.DNS_NAME}", "TXT")


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloudDns]:
    async with FakeCloudDns() as fake:
        fake.add_zone(clouddns_tests.PROJECT, clouddns_tests.ZONE, clouddns_tests.DNS_NAME)
        for rrset in clouddns_tests.FOREIGN:
            fake.seed(clouddns_tests.PROJECT, clouddns_tests.ZONE, rrset)
        yield fake


async def cloud_started(fake: FakeCloudDns, epoch: int | None) -> CloudDnsProvider:
    p = await clouddns_tests.started(fake)
    p.fence = None if epoch is None else at(epoch)
    return p


async def cloud_converge(p: CloudDnsProvider, target: RoutingPlan) -> None:
    await p.apply(diff(p.name, p.render(target), await p.current()))


def cloud_leases(fake: FakeCloudDns) -> list[list[str]]:
    return [
        r["rrdatas"]
        for r in fake.rrsets(clouddns_tests.PROJECT, clouddns_tests.ZONE)
        if r["name"].startswith(f"{LEASE_LABEL}.")
    ]


async def test_cloud_dns_a_fenced_change_carries_the_lease_and_an_unfenced_one_none(
    cloud: FakeCloudDns,
) -> None:
    unfenced = await cloud_started(cloud, None)
    await cloud_converge(unfenced, CLOUD_A)
    assert cloud_leases(cloud) == []
    before = clouddns_tests.zone(cloud)
    await unfenced.close()

    p = await cloud_started(cloud, 5)
    await cloud_converge(p, CLOUD_C)
    assert cloud_leases(cloud) == [[lease_value(5)]]
    await cloud_converge(p, CLOUD_A)  # the steady state: deleted as read, added again at epoch 5
    assert cloud_leases(cloud) == [[lease_value(5)]]
    # The same zone as unfenced, plus the lease; the lease is no record of the service: current() never
    # reports it and no diff deletes it.
    assert clouddns_tests.zone(cloud).keys() - before.keys() == {CLOUD_LEASE}
    records = await p.current()
    assert not [r for r in records if LEASE_LABEL in r.name or "epoch" in r.target]
    assert not diff(p.name, p.render(CLOUD_A), records)
    await p.close()


async def test_cloud_dns_a_deposed_leaders_change_is_refused_whole_and_a_reader_sends_nothing(
    cloud: FakeCloudDns,
) -> None:
    old = await cloud_started(cloud, 5)
    await cloud_converge(old, CLOUD_A)
    new = await cloud_started(cloud, 7)
    await cloud_converge(new, CLOUD_B)
    assert cloud_leases(cloud) == [[lease_value(7)]]
    held = clouddns_tests.zone(cloud)

    # Only the EU group moves, which the new leader left alone: the lease alone refuses the change.
    posts = cloud.calls("POST")
    with pytest.raises(Fenced, match=r"holds epoch 7, newer than ours \(5\)"):
        await old.apply(diff(old.name, old.render(CLOUD_C), old.render(CLOUD_A)))
    assert cloud.calls("POST") == posts + 1
    assert [r.status for r in cloud.log if r.method == "POST"][-1] == 412
    assert clouddns_tests.zone(cloud) == held

    with pytest.raises(Fenced, match="holds epoch 7, newer than this leader's 5"):
        await cloud_converge(old, CLOUD_C)
    assert cloud.calls("POST") == posts + 1
    assert clouddns_tests.zone(cloud) == held
    await new.close()
    await old.close()


async def test_cloud_dns_a_new_leader_with_a_stale_view_of_the_lease_takes_over_on_the_retry(
    cloud: FakeCloudDns,
) -> None:
    replica = await cloud_started(cloud, 3)
    reconciler = clouddns_tests.reconciler(replica)
    [outcome] = await reconciler.reconcile(clouddns_tests.cloud_policy(cloud), CLOUD_A)
    assert outcome.applied and outcome.error is None
    other = await cloud_started(cloud, 5)
    await cloud_converge(other, CLOUD_B)

    replica.fence = at(7)
    [outcome] = await reconciler.reconcile(clouddns_tests.cloud_policy(cloud), CLOUD_C)
    assert outcome.applied and outcome.error is None, outcome
    assert cloud_leases(cloud) == [[lease_value(7)]]
    assert [r.status for r in cloud.log if r.method == "POST"][-2:] == [412, 200]
    assert not diff(replica.name, replica.render(CLOUD_C), await replica.current())
    await other.close()
    await replica.close()


# ---------------------------------------------------------------- HAProxy and Global Accelerator


class Lapsing:
    """A fence that lets `writes` writes through at epoch 5, then says this replica's leadership lapsed."""

    def __init__(self, writes: int) -> None:
        self.left = writes
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.left == 0:
            raise Fenced("leadership lapsed")
        self.left -= 1
        return 5


@pytest.mark.needs_binary("haproxy")
async def test_haproxy_asks_the_fence_before_each_command_and_sends_none_once_fenced(
    stack: haproxy_tests.Stack,
) -> None:
    p = stack.provider
    before = await stack.servers()
    # us-east raised (weight, ready), us-west raised, eu-west and eu-central drained: six commands.
    changes = diff(p.name, p.render(plan({"global": {"us-east": 75, "us-west": 25}})), await p.current())
    p.fence = fence = Lapsing(2)
    with pytest.raises(Fenced, match="leadership lapsed"):
        await p.apply(changes)
    assert fence.calls == 3
    after = await stack.servers()
    assert after["us-east"].weight == 75
    assert {name: after[name] for name in ("us-west", "eu-west", "eu-central", haproxy_tests.FOREIGN)} == {
        name: before[name] for name in ("us-west", "eu-west", "eu-central", haproxy_tests.FOREIGN)
    }

    # Through the reconciler: an error outcome saying so, not retried (a retry would ask the fence again).
    p.fence = fence = Lapsing(0)
    [outcome] = await Reconciler([p], backoff_initial=0.01).reconcile(
        haproxy_policy(stack.stats, haproxy_tests.OWNED, endpoints=stack.endpoints),
        plan({"global": {"us-west": 100}}),
    )
    assert outcome.error == "Fenced: leadership lapsed" and not outcome.applied
    assert fence.calls == 1
    assert await stack.servers() == after


async def test_global_accelerator_asks_the_fence_before_each_update_and_sends_none_once_fenced(
    listener: ga_tests.Listener, aws_credentials: None
) -> None:
    (settings,) = listener.policy.providers.global_accelerator_list
    p = GlobalAcceleratorProvider(listener.policy, settings)
    await p.start()
    changes = diff(p.name, p.render(ga_tests.FAIL_CLOSED), await p.current())
    assert len(changes) == 2
    p.fence = fence = Lapsing(1)
    with pytest.raises(Fenced, match="leadership lapsed"):
        await p.apply(changes)
    assert fence.calls == 2
    assert listener.ga.count("UpdateEndpointGroup") == 1
    assert sorted(ga_tests.dials(listener).values()) == [0.0, 100.0]

    p.fence = fence = Lapsing(0)
    [outcome] = await ga_tests.reconciler(p).reconcile(listener.policy, ga_tests.FAIL_CLOSED)
    assert outcome.error == "Fenced: leadership lapsed" and not outcome.applied
    assert fence.calls == 1
    assert listener.ga.count("UpdateEndpointGroup") == 1
    await p.close()
