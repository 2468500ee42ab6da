"""The reconciler's retry path and isolation, against the reference provider with scripted backend faults."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.changes import Action
from controlplane.providers.base import PermanentProviderError, Provider, TransientProviderError
from controlplane.providers.memory import MemoryProvider
from controlplane.reconciler import Reconciler, ResidencyViolation
from tests.builders import plan, policy
from tests.conftest import until
from tests.fakes.providers import BrokenProvider, Fault, FlakyProvider

POLICY = policy()
PLAN = plan(
    {
        "global": {"us-east": 40, "us-west": 30, "eu-west": 20, "eu-central": 10},
        "eu": {"eu-west": 70, "eu-central": 30},
    }
)
RECORDS = 6  # four regions for the global group, the two EU ones for the eu group
BLIP = Fault(TransientProviderError("flaky: throttled"))


def reconciler(*providers: Provider, attempts: int = 3, timeout: float = 5.0) -> Reconciler:
    # No backoff: the waits between attempts are tenacity's business; what is retried, and how often, is ours.
    return Reconciler(
        list(providers), attempts=attempts, timeout=timeout, backoff_initial=0.0, backoff_max=0.0
    )


@pytest.mark.parametrize("blips", [1, 2])
async def test_a_transient_failure_is_retried_and_the_change_set_applied_once(blips: int) -> None:
    provider = FlakyProvider(POLICY, faults=[BLIP] * blips)
    (outcome,) = await reconciler(provider).reconcile(POLICY, PLAN)

    assert outcome.applied and outcome.error is None
    assert await provider.current() == provider.render(PLAN)
    assert len(provider.sent) == blips + 1, "each failed attempt, then the one that worked"
    assert all(sent == provider.sent[0] for sent in provider.sent), "nothing landed, so the same set again"


async def test_stats_count_one_apply_of_the_whole_set_after_retries() -> None:
    provider = FlakyProvider(POLICY, faults=[BLIP, BLIP])
    rec = reconciler(provider)
    await rec.reconcile(POLICY, PLAN)
    stats = rec.stats["flaky"]
    assert (stats.applies, stats.changes, stats.errors, stats.consecutive_errors) == (1, RECORDS, 0, 0)
    # A converged provider needs nothing: no apply, nothing counted.
    (outcome,) = await rec.reconcile(POLICY, PLAN)
    assert not outcome.changes and not outcome.applied
    assert (stats.applies, stats.changes) == (1, RECORDS)
    assert len(provider.sent) == 3


async def test_every_attempt_diffs_against_what_the_provider_holds_now_not_a_replay() -> None:
    # The backend makes the first two changes of the set, then fails: a half-applied change set.
    provider = FlakyProvider(POLICY, faults=[Fault(TransientProviderError("flaky: connection reset"), 2)])
    (outcome,) = await reconciler(provider).reconcile(POLICY, PLAN)

    assert outcome.applied and outcome.error is None, outcome.error
    assert provider.reads == 2, "current() is read again for the retry"
    assert await provider.current() == provider.render(PLAN)
    first, second = provider.sent
    assert len(first) == RECORDS and all(c.action is Action.CREATE for c in first.changes)
    # Replaying `first` would re-create two records that now exist (the reference provider refuses that);
    # the retry sends only what is still missing.
    assert second.changes == first.changes[2:]


async def test_a_permanent_failure_is_not_retried() -> None:
    provider = FlakyProvider(POLICY, faults=[Fault(PermanentProviderError("flaky: permission denied"))])
    rec = reconciler(provider)
    (outcome,) = await rec.reconcile(POLICY, PLAN)

    assert not outcome.applied
    assert outcome.error == "PermanentProviderError: flaky: permission denied"
    assert len(provider.sent) == 1 and provider.reads == 1
    assert await provider.current() == []
    stats = rec.stats["flaky"]
    assert (stats.applies, stats.errors, stats.consecutive_errors) == (0, 1, 1)
    assert stats.last_error == outcome.error


async def test_attempts_are_bounded_and_the_next_reconcile_starts_afresh() -> None:
    provider = FlakyProvider(POLICY, faults=[BLIP] * 5)
    rec = reconciler(provider, attempts=3)

    (outcome,) = await rec.reconcile(POLICY, PLAN)
    assert not outcome.applied and outcome.error == "TransientProviderError: flaky: throttled"
    assert len(provider.sent) == 3 and await provider.current() == []
    stats = rec.stats["flaky"]
    assert (stats.applies, stats.errors, stats.consecutive_errors) == (0, 1, 1)

    (outcome,) = await rec.reconcile(POLICY, PLAN)  # two faults left, then the backend works again
    assert outcome.applied
    assert len(provider.sent) == 6 and await provider.current() == provider.render(PLAN)
    assert (stats.applies, stats.changes, stats.errors, stats.consecutive_errors) == (1, RECORDS, 1, 0)


async def test_a_hung_provider_does_not_hold_up_the_others() -> None:
    release = asyncio.Event()
    hung = FlakyProvider(
        POLICY, "hung", faults=[Fault(TransientProviderError("hung: gave up"), release=release)]
    )
    healthy = MemoryProvider(POLICY)
    # Its timeout is far beyond until()'s patience: only running side by side lets `healthy` converge.
    task = asyncio.create_task(reconciler(hung, healthy, attempts=1, timeout=60).reconcile(POLICY, PLAN))

    # The healthy provider converges while the hung one is still waiting on its backend.
    async def converged() -> bool:
        return await healthy.current() == healthy.render(PLAN)

    await until(converged, what="the healthy provider to converge")
    assert not task.done()
    release.set()
    hung_outcome, healthy_outcome = await task
    assert healthy_outcome.applied and not hung_outcome.applied


async def test_a_provider_that_times_out_or_raises_anything_stops_only_itself() -> None:
    hung = FlakyProvider(
        POLICY, "hung", faults=[Fault(TransientProviderError("never"), release=asyncio.Event())]
    )
    healthy = MemoryProvider(POLICY)
    rec = reconciler(BrokenProvider(POLICY), hung, healthy, timeout=0.5)
    broken_outcome, hung_outcome, healthy_outcome = await rec.reconcile(POLICY, PLAN)

    assert broken_outcome.error == "RuntimeError: backend exploded"
    assert hung_outcome.error == "TimeoutError"
    assert healthy_outcome.applied and await healthy.current() == healthy.render(PLAN)
    assert {name: s.errors for name, s in rec.stats.items()} == {"broken": 1, "hung": 1, "memory": 0}


async def test_a_residency_violation_reaches_no_provider() -> None:
    provider = FlakyProvider(POLICY)
    rec = reconciler(provider)
    with pytest.raises(ResidencyViolation) as refused:
        await rec.reconcile(POLICY, plan({"eu": {"eu-west": 50, "us-east": 50}}))
    assert [(v.group, v.region, v.weight) for v in refused.value.violations] == [("eu", "us-east", 50)]
    assert provider.reads == 0 and provider.sent == [] and rec.stats == {}
