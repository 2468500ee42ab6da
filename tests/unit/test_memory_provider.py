"""The reference provider: rendering weighted records, and all-or-nothing change sets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controlplane.changes import Action, Change, ChangeSet, Record, diff
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy, load_policy
from controlplane.providers.base import (
    PermanentProviderError,
    Provider,
    TransientProviderError,
)
from controlplane.providers.memory import MemoryProvider
from controlplane.providers.records import render_records
from tests.builders import DEMO, DEMO_ADDRESS, converge, plan

PLAN = plan(
    {"global": {"us-east": 50, "us-west": 30, "eu-west": 20}, "eu": {"eu-west": 100, "eu-central": 0}}
)


@pytest.fixture
def policy() -> Policy:
    return load_policy(DEMO)


@pytest.fixture
def provider(policy: Policy) -> MemoryProvider:
    return MemoryProvider(policy)


def test_is_a_provider(provider: MemoryProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.capabilities.client_groups and provider.capabilities.max_weight == 100


def test_render_holds_every_allowed_region_and_only_those(policy: Policy) -> None:
    records = render_records(policy, PLAN)
    assert {(r.group, r.region): r.weight for r in records} == {
        ("global", "us-east"): 50,
        ("global", "us-west"): 30,
        ("global", "eu-west"): 20,
        ("global", "eu-central"): 0,  # absent from the plan: drained, still visible
        ("eu", "eu-west"): 100,
        ("eu", "eu-central"): 0,
    }
    assert all(
        r.name == "chat.llm.internal" and r.ttl == 5 and r.target == DEMO_ADDRESS[r.region] for r in records
    )


def test_render_normalises_the_dns_name(policy: Policy) -> None:
    shouting = policy.model_copy(
        update={"services": (policy.services[0].model_copy(update={"dns_name": "Chat.LLM.Internal."}),)}
    )
    assert {r.name for r in render_records(shouting, PLAN)} == {"chat.llm.internal"}


def test_render_refuses_weight_on_a_region_residency_forbids(policy: Policy) -> None:
    with pytest.raises(PermanentProviderError, match=r"eu traffic to \['us-east'\]"):
        render_records(policy, plan({"eu": {"eu-west": 90, "us-east": 10}}))


def test_render_refuses_unknown_service_or_group(policy: Policy) -> None:
    with pytest.raises(PermanentProviderError, match="'search'"):
        render_records(policy, plan({"global": {"us-east": 100}}, service="search"))
    with pytest.raises(PermanentProviderError, match="'apac'"):
        render_records(policy, plan({"apac": {"us-east": 100}}))


def test_render_refuses_a_group_listed_twice(policy: Policy) -> None:
    twice = RoutingPlan(0.0, PLAN.groups + PLAN.groups[:1])
    with pytest.raises(PermanentProviderError, match="more than once"):
        render_records(policy, twice)


async def test_apply_converges_and_then_has_nothing_to_do(provider: MemoryProvider) -> None:
    first = await converge(provider, PLAN)
    assert {c.action for c in first.changes} == {Action.CREATE}
    assert await provider.current() == provider.render(PLAN)
    assert not await converge(provider, PLAN)
    moved = plan({"global": {"us-east": 0, "us-west": 100}, "eu": {"eu-central": 100}})
    second = await converge(provider, moved)
    assert {c.action for c in second.changes} == {Action.UPDATE}
    assert await provider.current() == provider.render(moved)


async def test_apply_deletes_records_of_a_group_no_longer_planned(provider: MemoryProvider) -> None:
    await converge(provider, PLAN)
    await converge(provider, plan({"eu": {"eu-west": 100}}))
    assert {r.group for r in await provider.current()} == {"eu"}


@pytest.mark.parametrize(
    ("action", "before", "after", "problem"),
    [
        (Action.CREATE, None, "held", "create, but the record exists"),
        (Action.UPDATE, "missing", "missing", "no such record"),
        (Action.DELETE, "missing", None, "no such record"),
        (Action.UPDATE, "stale", "held", "changed since the change set was planned"),
        (Action.DELETE, "stale", None, "changed since the change set was planned"),
        (Action.UPDATE, "held", "other", "same record before and after"),
        (Action.UPDATE, "held", "heavy", "outside 0..100"),
    ],
)
async def test_a_bad_change_refuses_the_whole_set(
    provider: MemoryProvider, action: Action, before: str | None, after: str | None, problem: str
) -> None:
    await converge(provider, PLAN)
    held = (await provider.current())[0]
    records = {
        "held": held,
        "missing": replace(held, group="nobody"),
        "stale": replace(held, weight=held.weight + 1),
        "other": replace(held, region="elsewhere"),
        "heavy": replace(held, weight=101),
    }
    good = Change(Action.CREATE, None, Record("new.llm.internal", "global", "us-east", "127.0.0.11", 100, 5))
    bad = Change(action, records.get(before or ""), records.get(after or ""))
    snapshot = await provider.current()
    with pytest.raises(PermanentProviderError, match=problem):
        await provider.apply(ChangeSet("memory", (good, bad)))
    assert await provider.current() == snapshot


async def test_apply_refuses_another_providers_change_set(provider: MemoryProvider) -> None:
    with pytest.raises(PermanentProviderError, match="'localdns'"):
        await provider.apply(ChangeSet("localdns", ()))


async def test_injected_failures_change_nothing_then_stop(provider: MemoryProvider) -> None:
    changes = diff(provider.name, provider.render(PLAN), [])
    provider.fail_next(2)
    for _ in range(2):
        with pytest.raises(TransientProviderError):
            await provider.apply(changes)
    assert await provider.current() == []
    provider.fail_next(1, transient=False)
    with pytest.raises(PermanentProviderError):
        await provider.apply(changes)
    await provider.apply(changes)
    assert await provider.current() == provider.render(PLAN)


async def test_update_policy_changes_what_is_rendered(provider: MemoryProvider, policy: Policy) -> None:
    service = policy.services[0].model_copy(update={"ttl": 60})
    provider.update_policy(policy.model_copy(update={"services": (service,)}))
    assert {r.ttl for r in provider.render(PLAN)} == {60}
