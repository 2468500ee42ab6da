"""Traffic profiles: the three ways to write a rate, hour-of-week arithmetic, FILE:LINE:COL refusals, and the
names a profile shares with its policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.cost.traffic import TrafficError, check_traffic, load_traffic, parse_traffic
from controlplane.policy import Policy, load_policy
from tests.builders import DEMO, demo_data

PROFILE = """\
version: 1
groups:
  global:
    tokens_in: 600
    tokens_out: 250
    requests_per_s: {RATE}
"""


def rate(text: str) -> str:
    return PROFILE.replace("{RATE}", text)


def test_a_constant_rate_holds_every_hour() -> None:
    group = parse_traffic(rate("12.5")).groups["global"]
    assert {group.rps(h) for h in range(168)} == {12.5}
    assert group.bytes_per_token == 230.0 and group.home is None and group.service is None


def test_weekday_and_weekend_shapes_fall_on_the_right_hours() -> None:
    weekday = list(range(24))
    weekend = [100 + h for h in range(24)]
    group = parse_traffic(rate(f"{{weekday: {weekday}, weekend: {weekend}}}")).groups["global"]
    # Hour 0 is Monday 00:00 UTC: Friday 23:00 is hour 4*24+23 = 119, Saturday 00:00 is hour 120.
    assert group.rps(0) == 0 and group.rps(13) == 13
    assert group.rps(119) == 23
    assert group.rps(120) == 100
    assert group.rps(167) == 123
    with pytest.raises(ValueError, match=r"outside 0\.\.167"):
        group.rps(168)


def test_an_hourly_rate_is_168_numbers_monday_first() -> None:
    hours = [float(h) for h in range(168)]
    group = parse_traffic(rate(f"{{hourly: {hours}}}")).groups["global"]
    assert [group.rps(h) for h in range(168)] == hours


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "-3",
            "t.yaml:6:21: groups.global.requests_per_s: Input should be greater than or equal to 0, got -3",
        ),
        ("{weekday: [1, 2]}", "t.yaml:6:21: groups.global.requests_per_s.weekend: required field is missing"),
        (
            "{weekday: [1, 2]}",
            "t.yaml:6:31: groups.global.requests_per_s.weekday: Tuple should have at least 24",
        ),
        ("{hourly: [1, 2], x: 3}", "t.yaml:6:38: groups.global.requests_per_s.x: unknown field"),
        (
            "{hourly: [1, 2]}",
            "t.yaml:6:30: groups.global.requests_per_s.hourly: Tuple should have at least 168",
        ),
        (".inf", "groups.global.requests_per_s: Input should be a finite number"),
    ],
)
def test_a_bad_rate_is_refused_where_it_is_written(text: str, says: str) -> None:
    with pytest.raises(TrafficError) as caught:
        parse_traffic(rate(text), "t.yaml")
    assert says in str(caught.value)
    # One form's mistake is not also reported as the other forms' (a number is not a mapping, ...).
    assert "valid dictionary" not in str(caught.value)


def test_unknown_fields_and_bad_model_sources_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "traffic.yaml"
    path.write_text(
        rate("1")
        + "    tokens_outt: 3\nmodels:\n  llama-8b: {size_gb: 16, updates_per_month: 2, source: s3://bucket}\n",
        encoding="utf-8",
    )
    with pytest.raises(TrafficError) as caught:
        load_traffic(path)
    assert str(caught.value).splitlines() == [
        f"{path}:7:5: groups.global.tokens_outt: unknown field",
        f"{path}:9:57: models.llama-8b.source: String should match pattern "
        "'^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$', got 's3://bucket'",
    ]


def test_check_traffic_names_what_the_policy_lacks() -> None:
    data = demo_data()
    data["services"].append({**data["services"][0], "name": "embed", "dns_name": "embed.llm.internal"})
    policy = Policy.model_validate(data)
    profile = parse_traffic(
        """\
version: 1
groups:
  global: {tokens_in: 1, tokens_out: 1, requests_per_s: 1, home: mars}
  nordic: {tokens_in: 1, tokens_out: 1, requests_per_s: 1, service: search}
models:
  llama-8b: {size_gb: 16, updates_per_month: 2, source: aws/us-east-1}
"""
    )
    assert check_traffic(policy, profile) == [
        "groups.global.service: required, the policy has several services: ['chat', 'embed']",
        "groups.global.home: unknown region 'mars'; defined: ['eu-central', 'eu-west', 'us-east', 'us-west']",
        "groups.nordic: unknown client group 'nordic'; defined: ['eu', 'global']",
        "groups.nordic.service: unknown service 'search'; defined: ['chat', 'embed']",
        "models.llama-8b: unknown model 'llama-8b'; the policy defines []",
    ]
    assert profile.groups["nordic"].service_of(policy) is None
    assert profile.groups["global"].service_of(policy) is None
    assert profile.models["llama-8b"].cloud == "aws" and profile.models["llama-8b"].region == "us-east-1"


def test_the_demo_profile_fits_the_demo_policy() -> None:
    policy = load_policy(DEMO)
    profile = load_traffic(DEMO.parent / "traffic" / "demo.yaml")
    assert check_traffic(policy, profile) == []
    assert set(profile.groups) == {g.name for g in policy.client_groups}
    for group in profile.groups.values():
        assert group.service_of(policy) is policy.services[0]
        week = [group.rps(h) for h in range(168)]
        weekday, weekend = sum(week[: 5 * 24]) / 5, sum(week[5 * 24 :]) / 2
        assert 0.4 < weekend / weekday < 0.8  # a business service: weekends are quieter
