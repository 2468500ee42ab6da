"""Each provider at its own pace: reads only when what it holds is unknown or old, writes at most once per
its min_interval, never when nothing changed, and nothing it declared it cannot do."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from controlplane.providers.base import Capabilities, PermanentProviderError, TransientProviderError, Tuning
from controlplane.reconciler import Reconciler, check_capabilities
from tests.builders import plan, policy
from tests.fakes.providers import Fault, FlakyProvider

POLICY = policy()
FULL = plan({"global": {"us-east": 40, "us-west": 30, "eu-west": 20, "eu-central": 10}})
SHIFTED = plan({"global": {"us-east": 0, "us-west": 50, "eu-west": 30, "eu-central": 20}})


def cloud(resync: float = 60.0, min_interval: float = 0.0) -> FlakyProvider:
    provider = FlakyProvider(POLICY, "cloud")
    provider.tuning = Tuning(timeout=5.0, min_interval=min_interval, resync=resync)
    return provider


async def test_what_was_written_is_trusted_until_the_resync_period() -> None:
    provider, rec = cloud(), Reconciler([])
    rec.providers = [provider]
    for _ in range(5):
        await rec.reconcile(POLICY, FULL)
    await rec.reconcile(POLICY, SHIFTED)
    await rec.reconcile(POLICY, SHIFTED)
    assert provider.reads == 1, "one read to learn the state; every later diff is against what was written"
    assert len(provider.sent) == 2, "one change set per change of plan, none when nothing changed"
    assert await provider.current() == provider.render(SHIFTED)


async def test_a_provider_without_a_resync_period_is_read_before_every_diff() -> None:
    provider = cloud(resync=0.0)
    rec = Reconciler([provider])
    for _ in range(3):
        await rec.reconcile(POLICY, FULL)
    assert provider.reads == 3 and len(provider.sent) == 1


async def test_a_failed_apply_forces_a_read_before_the_next_diff() -> None:
    provider = cloud()
    rec = Reconciler([provider], attempts=1, backoff_initial=0.0, backoff_max=0.0)
    await rec.reconcile(POLICY, FULL)
    provider.faults.append(Fault(PermanentProviderError("refused"), applied_first=2))
    (failed,) = await rec.reconcile(POLICY, SHIFTED)
    assert failed.error is not None
    reads = provider.reads
    (outcome,) = await rec.reconcile(POLICY, SHIFTED)
    assert provider.reads == reads + 1
    # The diff was against what the backend really held after the half-applied set, not a replay.
    assert outcome.applied and len(outcome.changes) == len(failed.changes) - 2
    assert await provider.current() == provider.render(SHIFTED)


async def test_changes_wait_for_the_providers_min_interval() -> None:
    provider = cloud(min_interval=3600.0)
    rec = Reconciler([provider])
    await rec.reconcile(POLICY, FULL)
    (outcome,) = await rec.reconcile(POLICY, SHIFTED)
    assert outcome.deferred and not outcome.applied and outcome.error is None and outcome.changes
    assert len(provider.sent) == 1 and rec.stats["cloud"].deferred == 1


def test_weights_beyond_what_a_provider_takes_are_refused_before_apply() -> None:
    provider = cloud()
    provider.capabilities = Capabilities(client_groups=True, weights=True, max_weight=10)
    with pytest.raises(PermanentProviderError, match=r"weight 40 outside 0\.\.10"):
        check_capabilities(provider, provider.render(FULL))


def test_a_provider_blind_to_client_groups_is_never_given_several() -> None:
    provider = cloud()
    provider.capabilities = replace(provider.capabilities, client_groups=False)
    two = plan({"global": {"us-east": 100}, "eu": {"eu-west": 100}})
    with pytest.raises(PermanentProviderError, match="cannot tell client groups apart"):
        check_capabilities(provider, provider.render(two))
    check_capabilities(provider, provider.render(FULL))


async def test_a_retry_of_the_same_change_set_is_paced_by_the_backoff_not_the_min_interval() -> None:
    provider = cloud(min_interval=3600.0)
    provider.faults.append(Fault(TransientProviderError("throttled")))
    rec = Reconciler([provider], backoff_initial=0.0, backoff_max=0.0)
    (outcome,) = await rec.reconcile(POLICY, FULL)
    assert outcome.applied and not outcome.deferred
    assert len(provider.sent) == 2


async def test_a_deferred_change_says_when_it_may_go_out() -> None:
    provider = cloud(min_interval=30.0)
    rec = Reconciler([provider])
    await rec.reconcile(POLICY, FULL)
    assert rec.next_due() is None
    before = time.monotonic()
    (outcome,) = await rec.reconcile(POLICY, SHIFTED)
    due = rec.next_due()
    assert outcome.deferred and due is not None and before + 29 < due <= time.monotonic() + 30
    rec.providers = []  # a provider gone since: nothing waits for it
    assert rec.next_due() is None
