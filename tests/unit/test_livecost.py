"""The live cost figure's parts: the output-token rate the health tracker keeps from successive scrapes, the
regions' shares of the current weights, and the hourly cost they price (on virtual time)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from controlplane.cost.live import live_cost, weight_shares
from controlplane.cost.model import hourly_cost
from controlplane.cost.prices import PriceBook, load_prices
from controlplane.policy import HealthSettings, Policy
from probes.health import HealthTracker, region_health
from probes.observation import Observation, ProbeKind
from tests.builders import US_ONLY, plan, policy, policy_data

P = policy().model_copy(update={"health": HealthSettings(stale_after=5.0)})


def scrape(at: float, tokens: float | None, ok: bool = True, region: str = "us-east") -> Observation:
    return Observation(
        region, ProbeKind.METRICS, ok, at, 0.01, None if ok else "boom", queue_depth=0.0, output_tokens=tokens
    )


def rates(*scrapes: Observation) -> list[float | None]:
    """The region's output tokens/s after each scrape, as its RegionHealth shows it."""
    tracker = HealthTracker()
    seen: list[float | None] = []
    for obs in scrapes:
        tracker.observe(obs, P.health)
        seen.append(region_health(tracker.kinds, P, obs.region, obs.at).tokens_out_per_s)
    return seen


def test_first_scrape_gives_no_rate_and_each_next_one_the_rate_since_the_last() -> None:
    assert rates(scrape(10.0, 500.0), scrape(12.0, 700.0), scrape(14.0, 700.0), scrape(15.0, 1000.0)) == [
        None,
        100.0,
        0.0,
        300.0,
    ]


def test_a_counter_reset_skips_its_interval_and_the_next_measures_from_the_reset() -> None:
    # 900 -> 40: the server restarted. Neither -860/2 nor 40/2 is what it served, so the rate before
    # stands; the interval after the reset measures again.
    assert rates(scrape(0.0, 700.0), scrape(2.0, 900.0), scrape(4.0, 40.0), scrape(5.0, 340.0)) == [
        None,
        100.0,
        100.0,
        300.0,
    ]


def test_a_failed_scrape_in_between_makes_the_next_good_one_measure_over_the_whole_gap() -> None:
    seen = rates(scrape(0.0, 0.0), scrape(1.0, 50.0), scrape(2.0, None, ok=False), scrape(3.0, 250.0))
    # The failed scrape hides the rate (metrics not fresh); the next measures 200 tokens over 2 s.
    assert seen == [None, 50.0, None, 100.0]


def test_a_server_that_stops_exporting_the_counter_has_no_rate() -> None:
    assert rates(scrape(0.0, 0.0), scrape(1.0, 50.0), scrape(2.0, None), scrape(3.0, 80.0)) == [
        None,
        50.0,
        None,
        None,
    ]


def test_stale_metrics_show_no_rate() -> None:
    tracker = HealthTracker()
    for obs in (scrape(0.0, 0.0), scrape(1.0, 50.0)):
        tracker.observe(obs, P.health)
    assert region_health(tracker.kinds, P, "us-east", 2.0).tokens_out_per_s == 50.0
    assert (
        region_health(tracker.kinds, P, "us-east", 1.0 + P.health.stale_after + 0.1).tokens_out_per_s is None
    )


def test_regions_keep_their_own_rates() -> None:
    tracker = HealthTracker()
    for obs in (scrape(0.0, 0.0), scrape(0.0, 10.0, region="eu-west"), scrape(1.0, 30.0)):
        tracker.observe(obs, P.health)
    tracker.observe(scrape(2.0, 110.0, region="eu-west"), P.health)
    assert region_health(tracker.kinds, P, "us-east", 2.0).tokens_out_per_s == 30.0
    assert region_health(tracker.kinds, P, "eu-west", 2.0).tokens_out_per_s == pytest.approx(50.0)


# ------------------------------------------------------------------ shares and prices

SHEET = """\
version: 1
currency: EUR
date: 2026-11-01
clouds:
  test:
    r1:
      instances:
        gpu: {on_demand: 3.0, reserved_1y: 1.0, source: "https://example.com/gpu"}
        small: {on_demand: 2.0, source: "https://example.com/small"}
      egress: {internet_per_gb: 0.0, inter_region_per_gb: 0.0, source: "https://example.com/egress"}
"""
# a: one reserved gpu ($1/h), more on demand at $3/h, 100 tokens/s each; b: none reserved, smalls at $2/h,
# 50 tokens/s each, at most 3; c: no fleet. Egress is free so every figure is instance hours.
FLEETS = {
    "a": {"cloud": "test", "region": "r1", "instance": "gpu", "reserved": 1, "tokens_per_s": 100},
    "b": {"cloud": "test", "region": "r1", "instance": "small", "on_demand_max": 3, "tokens_per_s": 50},
}


@pytest.fixture
def book(tmp_path: Path) -> PriceBook:
    sheet = tmp_path / "test.yaml"
    sheet.write_text(SHEET)
    return load_prices([sheet])


def fleet_policy(fleets: Mapping[str, Mapping[str, Any]] = FLEETS) -> Policy:
    regions = [
        {"name": name, "endpoint": f"http://127.0.0.{i + 1}:8000", "jurisdiction": "US"}
        | ({"fleet": dict(fleets[name])} if name in fleets else {})
        for i, name in enumerate("abc")
    ]
    return Policy.model_validate(policy_data(regions, client_groups=US_ONLY))


def test_shares_sum_each_regions_weight_over_every_service_and_group() -> None:
    two_groups = plan({"global": {"a": 60, "b": 40}, "eu": {"b": 100}})
    assert weight_shares(two_groups) == {"a": 0.3, "b": 0.7}
    closed = plan({"global": {"a": 0, "b": 0}, "eu": {"b": 100}})  # a group failing closed sends nothing
    assert weight_shares(closed) == {"a": 0.0, "b": 1.0}
    assert weight_shares(plan({"global": {"a": 0}})) == {}
    assert weight_shares(None) == {}


@pytest.mark.parametrize(
    ("rate", "running"),
    [(0.0, 1), (99.0, 1), (100.0, 1), (100.5, 2), (450.0, 5), (1000 * 0.3, 3), (1e6, 1 + 1000)],
)
def test_instances_running_at_a_rate_never_fewer_than_reserved_nor_more_than_the_limits(
    rate: float, running: int, book: PriceBook
) -> None:
    # 1000 x 0.3 is 300.00000000000006 in floats: still 3 instances, as the model prices it.
    assert hourly_cost(fleet_policy().region("a"), book, rate).instances == running


def test_the_observed_total_is_spread_by_weight_share_and_priced_per_region(book: PriceBook) -> None:
    policy = fleet_policy()
    served = plan({"global": {"a": 50, "b": 25, "c": 25}})
    # 200 tokens/s counted in all (b's server has no rate yet): a gets 100 (1 reserved gpu, $1),
    # b 50 (1 small on demand, $2); c has no fleet and is not priced, though its weight takes its share.
    cost = live_cost(policy, served, {"a": 120.0, "b": None, "c": 80.0}, book)
    assert cost is not None
    assert (cost.currency, cost.tokens_out_per_s) == ("EUR", 200.0)
    assert [(r.region, r.share, r.tokens_out_per_s, r.instances, r.per_hour) for r in cost.regions] == [
        ("a", 0.5, 100.0, 1, 1.0),
        ("b", 0.25, 50.0, 1, 2.0),
    ]
    assert cost.per_hour == 3.0
    # Twice the tokens: a runs a second gpu on demand ($1 + $3), b a second small ($4).
    doubled = live_cost(policy, served, {"a": 240.0, "c": 160.0}, book)
    assert doubled is not None
    assert [(r.instances, r.per_hour) for r in doubled.regions] == [(2, 4.0), (2, 4.0)]
    assert doubled.per_hour == 8.0
    assert doubled.to_json() == {
        "currency": "EUR",
        "per_hour": 8.0,
        "tokens_out_per_s": 400.0,
        "regions": {
            "a": {"per_hour": 4.0, "tokens_out_per_s": 200.0, "instances": 2, "share": 0.5},
            "b": {"per_hour": 4.0, "tokens_out_per_s": 100.0, "instances": 2, "share": 0.25},
        },
    }


def test_without_a_plan_or_tokens_only_the_reserved_instances_cost(book: PriceBook) -> None:
    for served, rates in ((None, {"a": 500.0}), (plan({"global": {"a": 50, "b": 50}}), {})):
        cost = live_cost(fleet_policy(), served, rates, book)
        assert cost is not None
        assert [(r.instances, r.per_hour) for r in cost.regions] == [(1, 1.0), (0, 0.0)]


def test_a_policy_without_fleets_has_no_live_cost(book: PriceBook) -> None:
    assert live_cost(fleet_policy({}), plan({"global": {"a": 100}}), {"a": 100.0}, book) is None
