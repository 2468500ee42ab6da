from __future__ import annotations

from controlplane.policy import HealthSettings
from probes.health import HealthTracker, State, health_view, score
from probes.observation import Observation, ProbeKind
from tests.builders import policy

P = policy().model_copy(
    update={
        "health": HealthSettings(
            rise=2, fall=3, stale_after=5.0, ttft_target=0.5, queue_target=10, recover_after=0.0
        )
    }
)


def obs(region: str, kind: ProbeKind, ok: bool, at: float, **kw: float) -> Observation:
    return Observation(region, kind, ok, at, 0.01, None if ok else "boom", **kw)


def feed(
    tracker: HealthTracker,
    region: str,
    results: list[bool],
    start: float,
    kinds=(ProbeKind.LIVENESS, ProbeKind.INFERENCE),
) -> HealthTracker:
    for i, ok in enumerate(results):
        for k in kinds:
            tracker.observe(obs(region, k, ok, start + i), P.health)
    return tracker


def view(tracker: HealthTracker, at: float):
    return health_view(tracker.kinds, P, at)


def test_unknown_until_every_decisive_kind_has_spoken():
    t = HealthTracker()
    t.observe(obs("us-east", ProbeKind.LIVENESS, True, 1.0), P.health)
    assert view(t, 1.0).get("us-east").state is State.UNKNOWN
    t.observe(obs("us-east", ProbeKind.INFERENCE, True, 1.0, ttft_s=0.1, tokens_per_s=80.0), P.health)
    h = view(t, 1.0).get("us-east")
    assert h.state is State.HEALTHY and h.ttft_s == 0.1 and h.tokens_per_s == 80.0
    assert view(t, 1.0).get("us-west").state is State.UNKNOWN


def test_fall_needs_consecutive_failures_and_rise_consecutive_successes():
    t = feed(HealthTracker(), "us-east", [True, False, False, True, False, False], 0.0)
    assert view(t, 5.0).get("us-east").state is State.HEALTHY, "a broken streak resets"
    assert t.transitioning("us-east", ProbeKind.LIVENESS)
    feed(t, "us-east", [False], 6.0)
    h = view(t, 6.0).get("us-east")
    assert h.state is State.UNHEALTHY and h.score == 0.0 and "boom" in h.reasons[0]
    assert not t.transitioning("us-east", ProbeKind.LIVENESS), "a verdict just flipped; no streak is running"
    feed(t, "us-east", [True], 7.0)
    assert view(t, 7.0).get("us-east").state is State.UNHEALTHY
    feed(t, "us-east", [True], 8.0)
    h = view(t, 8.0).get("us-east")
    assert h.state is State.HEALTHY and h.since == 8.0, "recovery time feeds slow start"


DAMPED = HealthSettings(rise=2, fall=2, recover_after=2.0, flap_window=30.0, max_recover_after=8.0)


def liveness(tracker: HealthTracker, results: str, start: float, step: float = 0.5) -> float:
    """Feed liveness results ('+' ok, '-' failed) every `step` seconds from `start`; returns the next time."""
    for i, mark in enumerate(results):
        tracker.observe(obs("us-east", ProbeKind.LIVENESS, mark == "+", start + i * step), DAMPED)
    return start + len(results) * step


def healthy(tracker: HealthTracker) -> bool | None:
    return tracker.kinds[("us-east", ProbeKind.LIVENESS)].healthy


def test_a_recovery_needs_recover_after_seconds_of_success_not_just_rise_in_a_row():
    t = HealthTracker()
    now = liveness(t, "+--", 0.0)  # down at 1.0
    now = liveness(t, "+++", now)  # 1.5, 2.0, 2.5: rise met, but 1 s of success, not 2
    assert healthy(t) is False
    h = health_view(t.kinds, P.model_copy(update={"health": DAMPED}), 2.5).get("us-east")
    assert any("recovering, healthy for 1.0s of the 2s" in r for r in h.reasons), h.reasons
    liveness(t, "++", now)  # 3.0, 3.5: 2 s since the first success at 1.5
    assert healthy(t) is True


def test_each_flap_doubles_the_wait_up_to_the_cap_and_a_quiet_spell_resets_it():
    t = HealthTracker()
    now = liveness(t, "+--", 0.0)
    now = liveness(t, "+++++", now)  # back after 2 s of success
    assert healthy(t) is True
    now = liveness(t, "--", now)  # fails again within flap_window: the next recovery needs 4 s
    now = liveness(t, "+++++++", now)  # 3 s of success
    assert healthy(t) is False
    now = liveness(t, "++", now)  # 4 s
    assert healthy(t) is True
    for _ in range(3):  # flapping on: 8 s, then the cap (8 s), not 16
        now = liveness(t, "--", now)
        now = liveness(t, "+" * 17, now)
        assert healthy(t) is True
    assert t.kinds[("us-east", ProbeKind.LIVENESS)].hold == 8.0
    now = liveness(t, "+" * 80, now)  # 40 s without a failure: the next failure is no flap
    now = liveness(t, "--", now)
    assert t.kinds[("us-east", ProbeKind.LIVENESS)].hold == 2.0


def test_a_region_bouncing_faster_than_its_recovery_wait_stays_out() -> None:
    t = HealthTracker()
    now = liveness(t, "+--", 0.0)
    for _ in range(5):  # up 1 s, down 1 s: never 2 s of unbroken success
        now = liveness(t, "++", now)
        now = liveness(t, "--", now)
        assert healthy(t) is False
    assert t.kinds[("us-east", ProbeKind.LIVENESS)].changed_at == 1.0  # one failure, no flaps in between


def test_a_view_is_a_snapshot_that_later_observations_do_not_change():
    t = feed(HealthTracker(), "us-east", [True], 0.0)
    before = view(t, 1.0)
    feed(t, "us-east", [False, False, False], 1.0)
    assert before.get("us-east").state is State.HEALTHY
    assert view(t, 4.0).get("us-east").state is State.UNHEALTHY


def test_forgetting_a_region_keeps_the_others():
    t = feed(feed(HealthTracker(), "us-east", [True], 0.0), "eu-west", [True], 0.0)
    t.forget_regions(["eu-west"])
    assert view(t, 1.0).get("us-east").state is State.UNKNOWN
    assert view(t, 1.0).get("eu-west").state is State.HEALTHY


def test_stale_results_make_a_region_unknown_never_healthy():
    t = feed(HealthTracker(), "us-east", [True], 0.0)
    assert view(t, 4.9).get("us-east").state is State.HEALTHY
    h = view(t, 5.1).get("us-east")
    assert h.state is State.UNKNOWN and "stale" in h.reasons[0]


def test_metrics_failures_do_not_take_a_region_out_but_load_lowers_its_score():
    t = feed(HealthTracker(), "us-east", [True], 0.0)
    t.observe(obs("us-east", ProbeKind.METRICS, False, 0.5), P.health)
    assert view(t, 1.0).get("us-east").score == 1.0
    t.observe(obs("us-east", ProbeKind.METRICS, True, 0.6, queue_depth=40.0, kv_cache_usage=0.2), P.health)
    assert view(t, 1.0).get("us-east").score == 0.25


def test_score_table():
    h = P.health
    assert score(h, None, None, None) == 1.0
    assert score(h, 1.0, None, None) == 0.5
    assert score(h, 0.5, 20, None) == 0.5
    assert score(h, 50.0, 1000, 0.99) == h.min_score
