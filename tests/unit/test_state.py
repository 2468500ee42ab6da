"""state.json is validated field by field and kept aside when bad; the audit log never tears a line."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

from controlplane.overrides import Override, OverrideAction
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.state import AuditLog, StateStore, parse_state
from controlplane.weights.artifacts import Artifact, ArtifactView

GOOD_OVERRIDE = {"region": "us-west", "action": "drain", "until": 4_000_000_000.0, "reason": "upgrade"}


def plan_json(weights: dict[str, int]) -> dict[str, object]:
    return {
        "generated_at": 1000.0,
        "groups": [
            {
                "service": "chat",
                "group": "global",
                "mode": "normal",
                "weights": [{"region": r, "weight": w, "reason": "r"} for r, w in weights.items()],
            }
        ],
    }


def kept_aside(directory: Path) -> list[str]:
    return [p.read_text() for p in directory.glob("state.json.bad-*")]


def sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir()}


def test_a_wrongly_typed_override_costs_only_itself() -> None:
    bad = {**GOOD_OVERRIDE, "region": "eu-west", "until": "2099-01-01"}
    state = parse_state({"plan": None, "overrides": [bad, GOOD_OVERRIDE]})
    assert [o.region for o in state.overrides] == ["us-west"]
    assert isinstance(state.overrides[0].until, float)
    assert any(p.startswith("overrides.0.until") for p in state.problems)


def test_an_override_with_an_unknown_action_or_infinite_expiry_is_dropped() -> None:
    state = parse_state(
        {
            "overrides": [
                {**GOOD_OVERRIDE, "action": "explode"},
                {**GOOD_OVERRIDE, "until": float("inf")},
                {**GOOD_OVERRIDE, "weight": -5},
            ]
        }
    )
    assert state.overrides == ()
    assert len(state.problems) == 3


def test_weights_from_the_past_are_clamped_to_percentages() -> None:
    state = parse_state({"plan": plan_json({"us-east": 1_000_000, "us-west": 0}), "overrides": []})
    assert state.plan is not None
    assert state.plan.groups[0].as_dict() == {"us-east": 100, "us-west": 0}
    assert any("clamped" in p for p in state.problems)


def test_weights_that_overflow_the_total_are_brought_back_to_100() -> None:
    state = parse_state({"plan": plan_json({"a": 80, "b": 80, "c": -3})})
    assert state.plan is not None
    weights = state.plan.groups[0].as_dict()
    assert weights == {"a": 50, "b": 50, "c": 0}


def test_a_bad_group_is_dropped_and_the_rest_kept() -> None:
    data = plan_json({"us-east": 100})
    groups = data["groups"]
    assert isinstance(groups, list)
    groups.append({"service": "chat", "group": "eu", "mode": "sideways", "weights": []})
    state = parse_state({"plan": data})
    assert state.plan is not None and [g.group for g in state.plan] == ["global"]
    assert any(p.startswith("plan.groups.1") for p in state.problems)


def test_a_truncated_file_is_kept_aside_and_survives_the_next_save(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    whole = json.dumps({"plan": plan_json({"us-east": 100}), "overrides": [GOOD_OVERRIDE]})
    store.path.write_text(whole[: len(whole) // 2])
    state = store.load()
    assert state.plan is None and state.overrides == ()
    assert state.problems and "not valid JSON" in state.problems[0]
    assert kept_aside(tmp_path) == [whole[: len(whole) // 2]]


async def test_the_kept_copy_outlives_a_save(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text("{")
    store.load()
    await store.save(None, (), ArtifactView())
    await store.close()
    assert kept_aside(tmp_path) == ["{"]
    assert json.loads(store.path.read_text()) == {"artifacts": [], "overrides": [], "plan": None}


async def test_what_the_buckets_held_survives_a_restart(tmp_path: Path) -> None:
    held = Artifact("eu-west", "llm", "v2", verified=True, surveyed_at=10.0, synced_at=11.0, bytes_copied=7)
    store = StateStore(tmp_path)
    await store.save(None, (), ArtifactView({("eu-west", "llm"): held}))
    await store.close()
    state = StateStore(tmp_path).load()
    assert state.problems == ()
    assert state.artifacts.get("eu-west", "llm") == held


def test_a_bad_artifact_costs_only_itself() -> None:
    good = {"region": "eu-west", "model": "llm", "version": "v1", "verified": True, "surveyed_at": 1.0}
    bad = {**good, "region": "us-east", "verified": "yes"}
    state = parse_state({"plan": None, "artifacts": [bad, good]})
    assert state.problems and state.problems[0].startswith("artifacts.0.verified")
    assert set(state.artifacts.entries) == {("eu-west", "llm")}


def test_a_valid_file_round_trips_without_problems(tmp_path: Path) -> None:
    plan = RoutingPlan(
        5.0, (GroupPlan("chat", "global", GroupMode.NORMAL, (RouteWeight("us-east", 100, "healthy"),)),)
    )
    override = Override("us-west", OverrideAction.WEIGHT, 4e9, weight=300, reason="r", created_at=1.0)
    store = StateStore(tmp_path)
    store.path.write_text(
        json.dumps({"plan": plan.to_json(), "overrides": [override.to_json()]}), encoding="utf-8"
    )
    state = store.load()
    assert state.problems == ()
    assert state.plan is not None and state.plan.groups[0].as_dict() == {"us-east": 100}
    assert state.overrides == (override,)
    assert kept_aside(tmp_path) == []


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail part-way (EFBIG), as on a disk that fills up mid-write."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


async def test_a_write_that_fails_part_way_leaves_no_torn_line(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    await audit.write("first", n=1)
    size = audit.path.stat().st_size
    with file_size_limit(size + 20):
        await audit.write("too_big", payload="x" * 200)  # 20 bytes fit: the rest fails
    assert audit.path.stat().st_size == size
    assert audit.health.failing and audit.health.failures == 1
    await audit.write("after", n=2)
    lines = audit.path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["first", "after"]
    assert not audit.health.failing
    await audit.close()


async def test_a_line_torn_before_us_does_not_swallow_the_next(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"event": "whole"}\n{"event": "to')
    audit = AuditLog(path)
    await audit.write("next")
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "next"
    assert lines[1] == '{"event": "to'
    await audit.close()


async def test_the_audit_log_rotates_by_size(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", rotate_bytes=300, keep=2)
    for n in range(20):
        await audit.write("tick", n=n)
    await audit.close()
    assert sizes(tmp_path).keys() == {"audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"}
    assert max(sizes(tmp_path).values()) <= 300
    newest = [json.loads(line)["n"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert newest[-1] == 19


async def test_an_oversized_audit_line_is_cut_not_written_whole(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    await audit.write("huge", blob="x" * 2_000_000)
    await audit.close()
    [line] = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["cut"] is True and len(line) < 200


async def test_writes_to_an_unwritable_place_never_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    store = StateStore(blocker)  # its directory is a file: every write fails
    audit = AuditLog(blocker / "audit.jsonl")
    await store.save(None, (), ArtifactView())
    await audit.write("x")
    assert store.health.failing and audit.health.failing
    assert store.health.last_error and audit.health.last_error
    await store.close()
    await audit.close()
