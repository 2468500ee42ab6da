"""The engine's weight gate: a region without the service's model version verified gets no weight for it,
and ArtifactView, the pure record of what each bucket holds that the gate reads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.engine import decide
from controlplane.plan import GroupMode, RoutingPlan
from controlplane.weights.artifacts import ArtifactView
from controlplane.weights.manifest import FileEntry
from controlplane.weights.planner import DestinationPlan
from controlplane.weights.sync import DestinationResult, SyncReport
from probes.health import State
from tests.builders import MODEL, REGIONS, all_healthy, artifacts, model_policy, plan, policy, view

NOW = 10_000.0
EVERYWHERE = dict.fromkeys(REGIONS, "v1")


def weights(p: RoutingPlan, group: str = "global") -> dict[str, int]:
    found = p.group("chat", group)
    assert found is not None
    return found.as_dict()


def reason(p: RoutingPlan, region: str, group: str = "global") -> str:
    found = p.group("chat", group)
    assert found is not None
    return next(w.reason for w in found.weights if w.region == region)


@pytest.mark.parametrize(
    ("held", "says"),
    [
        ({**EVERYWHERE, "us-west": None}, "model llm version v1 is not current and verified"),
        ({**EVERYWHERE, "us-west": "v0"}, "wants model llm version v1, bucket last surveyed for version v0"),
        ({r: v for r, v in EVERYWHERE.items() if r != "us-west"}, "model llm version v1 not surveyed yet"),
    ],
    ids=["not-verified", "older-version", "never-surveyed"],
)
def test_a_region_without_the_version_gets_no_weight_and_the_reason_says_why(held, says):
    p = decide(model_policy(), all_healthy(), None, NOW, artifacts=artifacts(held))
    assert weights(p) == {"us-east": 33, "us-west": 0, "eu-west": 33, "eu-central": 34}
    assert says in reason(p, "us-west")


def test_with_every_region_verified_the_plan_is_the_ungated_one():
    gated = decide(model_policy(), all_healthy(), None, NOW, artifacts=artifacts(EVERYWHERE))
    assert gated == decide(policy(), all_healthy(), None, NOW)


def test_services_without_a_model_ignore_the_view():
    empty = ArtifactView()
    assert decide(policy(), all_healthy(), None, NOW, artifacts=empty) == decide(
        policy(), all_healthy(), None, NOW
    )


def test_a_region_the_model_may_not_be_stored_in_gets_nothing_even_unsurveyed():
    # No view at all (a one-shot plan): residency still gates, from the policy alone.
    p = decide(model_policy(jurisdictions=["EU"]), all_healthy(), None, NOW)
    assert weights(p) == {"us-east": 0, "us-west": 0, "eu-west": 50, "eu-central": 50}
    assert "may not be stored here: model llm may be stored only in EU" in reason(p, "us-east")


def test_lacking_weights_outranks_fail_open():
    down = view(dict.fromkeys(REGIONS, State.UNHEALTHY), at=NOW)
    held = {**EVERYWHERE, "us-east": None}
    p = decide(model_policy(when_all_down="fail-open"), down, None, NOW, artifacts=artifacts(held))
    group = p.group("chat", "global")
    assert group is not None and group.mode is GroupMode.FAIL_OPEN
    assert weights(p) == {"us-east": 0, "us-west": 33, "eu-west": 33, "eu-central": 34}
    assert "not current and verified" in reason(p, "us-east")
    assert "fail-open" in reason(p, "us-west")


def test_freeze_keeps_only_the_regions_that_still_hold_the_weights():
    down = view(dict.fromkeys(REGIONS, State.UNHEALTHY), at=NOW)
    before = plan({"global": {"us-east": 50, "us-west": 50, "eu-west": 0, "eu-central": 0}}, at=NOW - 1)
    held = {**EVERYWHERE, "us-east": None}
    p = decide(model_policy(when_all_down="freeze"), down, before, NOW, artifacts=artifacts(held))
    assert weights(p) == {"us-east": 0, "us-west": 100, "eu-west": 0, "eu-central": 0}
    group = p.group("chat", "global")
    assert group is not None and group.mode is GroupMode.FROZEN


@pytest.mark.parametrize("when_all_down", ["fail-open", "freeze", "fail-closed"])
def test_no_region_holding_the_weights_fails_closed_whatever_all_down_says(when_all_down):
    before = plan({"global": dict.fromkeys(REGIONS, 25)}, at=NOW - 1)
    p = decide(
        model_policy(when_all_down=when_all_down),
        all_healthy(),
        before,
        NOW,
        artifacts=artifacts(dict.fromkeys(REGIONS)),
    )
    group = p.group("chat", "global")
    assert group is not None and group.mode is GroupMode.FAIL_CLOSED
    assert set(weights(p).values()) == {0}
    assert all("not current and verified" in w.reason for w in group.weights)


def test_weight_leaves_at_once_and_comes_back_damped_once_the_weights_land():
    p = model_policy(max_shift=10)
    steady = decide(p, all_healthy(), None, NOW, artifacts=artifacts(EVERYWHERE))
    lost = decide(p, all_healthy(), steady, NOW + 1, artifacts=artifacts({**EVERYWHERE, "us-west": None}))
    assert weights(lost)["us-west"] == 0  # no damping on the way out: it cannot serve the model
    back = decide(p, all_healthy(), lost, NOW + 2, artifacts=artifacts(EVERYWHERE))
    assert 0 < weights(back)["us-west"] < 25
    assert "damped" in reason(back, "us-west")


# ---------------------------------------------------------------- ArtifactView from sync reports

ENTRY = FileEntry(path="w.bin", size=3, sha256="0" * 64)


def result(region: str, **plan_fields: object) -> DestinationResult:
    failures = plan_fields.pop("failures", ())
    promoted = bool(plan_fields.pop("promoted", False))
    copied = int(plan_fields.pop("bytes_copied", 0))  # type: ignore[call-overload]
    surveyed = bool(plan_fields.pop("surveyed", True))
    jurisdiction = REGIONS[region]
    return DestinationResult(
        DestinationPlan(region, jurisdiction, f"file:///b/{region}", **plan_fields),  # type: ignore[arg-type]
        tuple(failures),  # type: ignore[arg-type]
        promoted,
        copied,
        surveyed=surveyed,
    )


def report(*results: DestinationResult, version: str = "v1", error: str | None = None) -> SyncReport:
    return SyncReport(MODEL, version, False, tuple(results), error=error)


def test_a_survey_showing_the_version_current_verifies_it_and_a_sync_that_promoted_it_too():
    view_ = ArtifactView().with_report(
        report(
            result("us-east", skip=(ENTRY,), current=True, holds="v1"),
            result("us-west", copy=(ENTRY,), promoted=True, bytes_copied=3, holds="v0"),
            result("eu-west", copy=(ENTRY,), failures=("boom",), holds="v0"),
        ),
        ["us-east", "us-west", "eu-west"],
        NOW,
    )
    east, west, eu = (view_.get(r, MODEL) for r in ("us-east", "us-west", "eu-west"))
    assert east is not None and east.verified and east.current == "v1"
    assert west is not None and west.verified and west.bytes_copied == 3 and west.current == "v1"
    assert eu is not None and not eu.verified and eu.error == "boom" and eu.current == "v0"


def test_an_unreachable_bucket_keeps_the_last_verified_answer_with_its_age():
    surveyed = ArtifactView().with_report(
        report(result("us-east", current=True, skip=(ENTRY,))), ["us-east"], NOW
    )
    later = surveyed.with_report(
        report(result("us-east", failures=("timed out",), surveyed=False)), ["us-east"], NOW + 60
    )
    kept = later.get("us-east", MODEL)
    assert kept is not None
    assert kept.verified and kept.surveyed_at == NOW and kept.synced_at == NOW + 60
    assert kept.error == "timed out"
    source_down = later.with_report(report(error="source unreadable"), ["us-east"], NOW + 120)
    still = source_down.get("us-east", MODEL)
    assert still is not None and still.verified and still.error == "source unreadable"


def test_an_unreachable_bucket_proves_nothing_about_a_new_version():
    surveyed = ArtifactView().with_report(
        report(result("us-east", current=True, skip=(ENTRY,))), ["us-east"], NOW
    )
    bumped = surveyed.with_report(
        report(result("us-east", failures=("timed out",), surveyed=False), version="v2"), ["us-east"], NOW + 1
    )
    p = model_policy(version="v2")
    why = bumped.lacks(p.region("us-east"), p.models[0])
    assert why is not None and "not surveyed yet; last error: timed out" in why


def test_bytes_copied_add_up_over_syncs_of_the_same_bucket():
    first = ArtifactView().with_report(
        report(result("us-east", copy=(ENTRY,), promoted=True, bytes_copied=3)), ["us-east"], NOW
    )
    second = first.with_report(
        report(result("us-east", repair=(), copy=(ENTRY,), promoted=True, bytes_copied=3)),
        ["us-east"],
        NOW + 1,
    )
    found = second.get("us-east", MODEL)
    assert found is not None and found.bytes_copied == 6


# ---------------------------------------------------------------- properties

states = st.fixed_dictionaries({r: st.sampled_from(list(State)) for r in REGIONS})
held = st.fixed_dictionaries({r: st.sampled_from(["v1", "v0", None, "unsurveyed"]) for r in REGIONS})
services = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["active-active", "active-passive"]),
        "max_shift": st.integers(1, 100),
        "trickle": st.integers(0, 50),
        "when_all_down": st.sampled_from(["fail-open", "fail-closed", "freeze"]),
    }
)
stored_in = st.sampled_from([None, ("EU",), ("US",)])


def _artifacts(found: dict[str, str | None]) -> ArtifactView:
    return artifacts({r: v for r, v in found.items() if v != "unsurveyed"})


@settings(max_examples=200, deadline=None)
@given(services, stored_in, st.lists(st.tuples(states, held), min_size=1, max_size=5))
def test_a_region_lacking_the_version_never_gets_weight_nor_leaves_its_jurisdictions(service, where, history):
    p = model_policy(jurisdictions=where, **service)
    previous: RoutingPlan | None = None
    for i, (health, found) in enumerate(history):
        now = NOW + i
        out = decide(p, view(health, at=now), previous, now, artifacts=_artifacts(found))
        for g in out:
            allowed = set(p.client_group(g.group).allowed_jurisdictions)
            for w in g.weights:
                region = p.region(w.region)
                assert region.jurisdiction in allowed
                holds = found[w.region] == "v1" and (where is None or region.jurisdiction in where)
                if not holds:
                    assert w.weight == 0, (g, found)
            assert sum(w.weight for w in g.weights) in (0, 100)
        previous = out


@settings(max_examples=200, deadline=None)
@given(services, st.lists(states, min_size=1, max_size=5))
def test_with_every_region_verified_the_gate_changes_nothing(service, history):
    gated, plain = model_policy(**service), policy(**service)
    before_gated: RoutingPlan | None = None
    before_plain: RoutingPlan | None = None
    for i, health in enumerate(history):
        now = NOW + i
        before_gated = decide(gated, view(health, at=now), before_gated, now, artifacts=artifacts(EVERYWHERE))
        before_plain = decide(plain, view(health, at=now), before_plain, now)
        assert before_gated == before_plain
