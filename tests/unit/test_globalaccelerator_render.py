"""The Global Accelerator provider's pure parts: plan percent -> traffic dial, the records it renders, the
checks a change set passes before anything is sent, the order dials move in, and which errors are retried."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from controlplane.changes import Action, Change, ChangeSet, Record, diff
from controlplane.policy import Policy
from controlplane.providers.base import PermanentProviderError, TransientProviderError
from controlplane.providers.globalaccelerator import (
    ENDPOINT_GROUP,
    GlobalAcceleratorProvider,
    classify,
    dial_updates,
    dial_weight,
    dials,
)
from tests.builders import plan, policy_data

LISTENER = "arn:aws:globalaccelerator::123456789012:accelerator/abc/listener/def"
OTHER_LISTENER = "arn:aws:globalaccelerator::123456789012:accelerator/abc/listener/xyz"
NAME = "global_accelerator:def"
AWS = {"us-east": "us-east-1", "us-west": "us-west-2", "eu-west": "eu-west-1"}


def ga_policy(**settings: Any) -> Policy:
    regions = [
        {"name": "us-east", "endpoint": "http://127.0.0.11:8000", "jurisdiction": "US"},
        {"name": "us-west", "endpoint": "http://127.0.0.12:8000", "jurisdiction": "US"},
        {"name": "eu-west", "endpoint": "http://127.0.0.13:8000", "jurisdiction": "EU"},
    ]
    ga = {"listener_arn": LISTENER, "service": "chat", "client_group": "global", "endpoint_groups": AWS}
    return Policy.model_validate(policy_data(regions, providers={"global_accelerator": {**ga, **settings}}))


POLICY = ga_policy()


def provider(policy: Policy = POLICY) -> GlobalAcceleratorProvider:
    (settings,) = policy.providers.global_accelerator_list
    return GlobalAcceleratorProvider(policy, settings)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"a": 50, "b": 50}, {"a": 100, "b": 100}),  # an even split: proximity alone decides
        ({"a": 80, "b": 20}, {"a": 100, "b": 25}),
        ({"a": 60, "b": 40}, {"a": 100, "b": 67}),
        ({"a": 88, "b": 11, "c": 1}, {"a": 100, "b": 13, "c": 1}),  # 12.5 rounds up; 1.1 stays live
        ({"a": 100, "b": 0}, {"a": 100, "b": 0}),  # failed over: the dead region is dialled to 0
        ({"a": 0, "b": 0}, {"a": 0, "b": 0}),  # failing closed: every dial at 0
        ({"a": 33, "b": 33, "c": 34}, {"a": 100, "b": 100, "c": 100}),  # equal shares, split by rounding
        ({"a": 2, "b": 3, "c": 95}, {"a": 2, "b": 3, "c": 100}),  # within a point of each other, not the top
        ({}, {}),
    ],
)
def test_plan_percent_becomes_a_dial_relative_to_the_largest_share(
    weights: dict[str, int], expected: dict[str, int]
) -> None:
    assert dials(weights) == expected


def test_a_region_is_dialled_to_zero_exactly_when_the_plan_gives_it_nothing() -> None:
    for a, b in itertools.product(range(101), repeat=2):
        got = dials({"a": a, "b": b})
        assert (got["a"] > 0, got["b"] > 0) == (a > 0, b > 0), (a, b, got)
        assert max(got.values()) == (100 if a or b else 0)
        assert (got["a"] >= got["b"]) == (a >= b) or got["a"] == got["b"], (a, b, got)


@pytest.mark.parametrize(
    ("read", "weight"), [(100.0, 100), (0.0, 0), (25.0, 25), (0.4, 1), (33.4, 34), (99.99, 100)]
)
def test_a_dial_someone_set_to_a_fraction_reads_rounded_up_so_it_never_reads_as_drained(
    read: float, weight: int
) -> None:
    assert dial_weight(read) == weight


def test_render_gives_one_endpoint_group_record_per_listener_region() -> None:
    shifted = plan({"global": {"us-east": 60, "us-west": 0, "eu-west": 30, "ap-east": 10}})
    assert provider().render(shifted) == [
        Record(LISTENER, "*", "eu-west", "eu-west-1", 50, 0, ENDPOINT_GROUP),
        Record(LISTENER, "*", "us-east", "us-east-1", 100, 0, ENDPOINT_GROUP),
        Record(LISTENER, "*", "us-west", "us-west-2", 0, 0, ENDPOINT_GROUP),
    ]


def test_render_refuses_a_plan_without_the_configured_client_group() -> None:
    with pytest.raises(PermanentProviderError, match="no weights for service 'chat', client group 'global'"):
        provider().render(plan({"eu": {"eu-west": 100}}))


def held(**weights: int) -> list[Record]:
    return [Record(LISTENER, "*", region, AWS[region], w, 0, ENDPOINT_GROUP) for region, w in weights.items()]


def test_dials_being_raised_are_sent_before_dials_being_lowered() -> None:
    # A swap: us-east goes 100 -> 0 and eu-west 0 -> 100; in key order us-east would be lowered first.
    changes = diff(NAME, held(**{"us-east": 0, "eu-west": 100}), held(**{"us-east": 100, "eu-west": 0}))
    assert [c.record.region for c in changes.changes] == ["eu-west", "us-east"]
    swapped = ChangeSet(NAME, tuple(reversed(changes.changes)))
    (settings,) = POLICY.providers.global_accelerator_list
    assert dial_updates(NAME, settings, swapped) == [("eu-west-1", 100), ("us-east-1", 0)]


def _update(after: Record) -> Change:
    return Change(Action.UPDATE, Record(*after.key, after.target, 100, 0, after.rtype), after)


OURS = held(**{"us-east": 50})[0]


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        (ChangeSet("route53:x", (_update(OURS),)), "sent to 'global_accelerator:def'"),
        (ChangeSet(NAME, (Change(Action.CREATE, None, OURS),)), "create; the plane only turns dials"),
        (ChangeSet(NAME, (Change(Action.DELETE, OURS, None),)), "delete; the plane only turns dials"),
        (
            ChangeSet(
                NAME, (_update(Record(OTHER_LISTENER, "*", "us-east", "us-east-1", 0, 0, ENDPOINT_GROUP)),)
            ),
            "not an endpoint group this policy owns",
        ),
        (
            ChangeSet(NAME, (_update(Record(LISTENER, "*", "us-east", "ap-south-1", 0, 0, ENDPOINT_GROUP)),)),
            "not an endpoint group this policy owns",
        ),
        (
            ChangeSet(NAME, (_update(Record(LISTENER, "*", "ap-east", "us-east-1", 0, 0, ENDPOINT_GROUP)),)),
            "not an endpoint group this policy owns",
        ),
        (
            ChangeSet(NAME, (_update(Record(LISTENER, "eu", "us-east", "us-east-1", 0, 0, ENDPOINT_GROUP)),)),
            "not an endpoint group this policy owns",
        ),
        (
            ChangeSet(NAME, (_update(Record(LISTENER, "*", "us-east", "us-east-1", 0, 0, "A")),)),
            "not an endpoint group this policy owns",
        ),
        (
            ChangeSet(
                NAME, (_update(Record(LISTENER, "*", "us-east", "us-east-1", 101, 0, ENDPOINT_GROUP)),)
            ),
            "dial 101 is not an integer in 0..100",
        ),
        (
            ChangeSet(NAME, (_update(Record(LISTENER, "*", "us-east", "us-east-1", -1, 0, ENDPOINT_GROUP)),)),
            "dial -1 is not an integer in 0..100",
        ),
        (
            ChangeSet(
                NAME, (_update(Record(LISTENER, "*", "us-east", "us-east-1", True, 0, ENDPOINT_GROUP)),)
            ),
            "dial True is not an integer",
        ),
    ],
)
async def test_a_change_set_is_checked_whole_before_anything_is_sent(changes: ChangeSet, says: str) -> None:
    # Unstarted: had the check let the change set through, the error would be "not started".
    with pytest.raises(PermanentProviderError, match=r"refused|sent to") as refused:
        await provider().apply(changes)
    assert says in str(refused.value)


async def test_a_valid_change_set_gets_past_the_checks() -> None:
    with pytest.raises(PermanentProviderError, match="not started"):
        await provider().apply(ChangeSet(NAME, (_update(OURS),)))


def client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "UpdateEndpointGroup")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("ThrottlingException", 400), TransientProviderError),
        (client_error("InternalServiceErrorException", 500), TransientProviderError),
        (client_error("TransactionInProgressException", 400), TransientProviderError),
        (client_error("SomethingNew", 503), TransientProviderError),
        (client_error("AccessDeniedException", 400), PermanentProviderError),
        (client_error("InvalidArgumentException", 400), PermanentProviderError),
        (client_error("EndpointGroupNotFoundException", 400), PermanentProviderError),
        (
            EndpointConnectionError(endpoint_url="https://globalaccelerator.us-west-2.amazonaws.com"),
            TransientProviderError,
        ),
        (
            ReadTimeoutError(endpoint_url="https://globalaccelerator.us-west-2.amazonaws.com"),
            TransientProviderError,
        ),
        (NoCredentialsError(), PermanentProviderError),
    ],
)
def test_which_failures_are_worth_retrying(error: Exception, kind: type[Exception]) -> None:
    assert type(classify(error, "doing")) is kind


def test_update_policy_adopts_new_groups_and_refuses_what_needs_a_new_instance() -> None:
    p = provider()
    narrower = ga_policy(endpoint_groups={"us-east": "us-east-1"})
    p.update_policy(narrower)
    assert [r.region for r in p.render(plan({"global": {"us-east": 100}}))] == ["us-east"]
    with pytest.raises(PermanentProviderError, match="no longer configures"):
        p.update_policy(ga_policy(listener_arn=OTHER_LISTENER))
    with pytest.raises(PermanentProviderError, match="needs a new instance"):
        p.update_policy(ga_policy(endpoint_url="http://127.0.0.1:5001"))
    with pytest.raises(PermanentProviderError, match="needs a new instance"):
        p.update_policy(ga_policy(listener_arn=LISTENER.replace("/abc/", "/abd/")))
