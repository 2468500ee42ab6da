from __future__ import annotations

from controlplane.policy import HealthSettings
from probes.health import State, TrackerState, health_view, is_transitioning, record, score
from probes.observation import Observation, ProbeKind
from tests.unit.builders import policy

P = policy().model_copy(
    update={"health": HealthSettings(rise=2, fall=3, stale_after=5.0, ttft_target=0.5, queue_target=10)}
)


def obs(region: str, kind: ProbeKind, ok: bool, at: float, **kw: float) -> Observation:
    return Observation(region, kind, ok, at, 0.01, None if ok else "boom", **kw)


def feed(
    state: TrackerState,
    region: str,
    results: list[bool],
    start: float,
    kinds=(ProbeKind.LIVENESS, ProbeKind.INFERENCE),
):
    for i, ok in enumerate(results):
        state = record(state, [obs(region, k, ok, start + i) for k in kinds], P.health)
    return state


def test_unknown_until_every_decisive_kind_has_spoken():
    s = record(TrackerState(), [obs("us-east", ProbeKind.LIVENESS, True, 1.0)], P.health)
    assert health_view(s, P, 1.0).get("us-east").state is State.UNKNOWN
    s = record(s, [obs("us-east", ProbeKind.INFERENCE, True, 1.0, ttft_s=0.1)], P.health)
    assert health_view(s, P, 1.0).get("us-east").state is State.HEALTHY
    assert health_view(s, P, 1.0).get("us-west").state is State.UNKNOWN


def test_fall_needs_consecutive_failures_and_rise_consecutive_successes():
    s = feed(TrackerState(), "us-east", [True, False, False, True, False, False], 0.0)
    assert health_view(s, P, 5.0).get("us-east").state is State.HEALTHY, "a broken streak resets"
    assert is_transitioning(s, "us-east", ProbeKind.LIVENESS)
    s = feed(s, "us-east", [False], 6.0)
    h = health_view(s, P, 6.0).get("us-east")
    assert h.state is State.UNHEALTHY and h.score == 0.0 and "boom" in h.reasons[0]
    s = feed(s, "us-east", [True], 7.0)
    assert health_view(s, P, 7.0).get("us-east").state is State.UNHEALTHY
    s = feed(s, "us-east", [True], 8.0)
    h = health_view(s, P, 8.0).get("us-east")
    assert h.state is State.HEALTHY and h.since == 8.0, "recovery time feeds slow start"


def test_stale_results_make_a_region_unknown_never_healthy():
    s = feed(TrackerState(), "us-east", [True], 0.0)
    assert health_view(s, P, 4.9).get("us-east").state is State.HEALTHY
    h = health_view(s, P, 5.1).get("us-east")
    assert h.state is State.UNKNOWN and "stale" in h.reasons[0]


def test_metrics_failures_do_not_take_a_region_out_but_load_lowers_its_score():
    s = feed(TrackerState(), "us-east", [True], 0.0)
    s = record(s, [obs("us-east", ProbeKind.METRICS, False, 0.5)], P.health)
    assert health_view(s, P, 1.0).get("us-east").score == 1.0
    s = record(
        s, [obs("us-east", ProbeKind.METRICS, True, 0.6, queue_depth=40.0, kv_cache_usage=0.2)], P.health
    )
    assert health_view(s, P, 1.0).get("us-east").score == 0.25


def test_score_table():
    h = P.health
    assert score(h, None, None, None) == 1.0
    assert score(h, 1.0, None, None) == 0.5
    assert score(h, 0.5, 20, None) == 0.5
    assert score(h, 50.0, 1000, 0.99) == h.min_score
