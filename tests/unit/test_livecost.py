"""The live cost figure's parts: the output-token rate the health tracker keeps from successive scrapes, the
regions' shares of the current weights, and the hourly cost they price (on virtual time)."""

from __future__ import annotations

import pytest

from controlplane.policy import HealthSettings
from probes.health import HealthTracker, region_health
from probes.observation import Observation, ProbeKind
from tests.builders import policy

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
