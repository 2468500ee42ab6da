"""The admin API of a running daemon over real HTTP: health, status, Prometheus metrics, overrides."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaos.simregion import SimFleet
from controlplane.api import MAX_OVERRIDE_SECONDS
from tests.conftest import until
from tests.integration.daemon_helpers import (
    ADDRESS,
    FULL,
    SERVICE,
    TOKEN,
    Plane,
    fault,
    policy_data,
    running_plane,
    write_policy,
)

US_WEST_DRAINED = {"us-east": 57, "us-west": 0, "eu-west": 29, "eu-central": 14}
REGION_NAMES = sorted(ADDRESS)


async def start(fleet: SimFleet, tmp_path: Path, token: str | None = TOKEN) -> AsyncIterator[Plane]:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    async with running_plane(policy, tmp_path / "state", token=token) as plane:
        await plane.settled(FULL)
        yield plane


@pytest.fixture
async def plane(fleet: SimFleet, tmp_path: Path) -> AsyncIterator[Plane]:
    async for running in start(fleet, tmp_path):
        yield running


async def post_override(plane: Plane, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    return await plane.request("POST", "/overrides", headers=plane.auth(token), **kwargs)


def state_overrides(plane: Plane) -> list[dict[str, Any]]:
    return json.loads((plane.state_dir / "state.json").read_text())["overrides"]  # type: ignore[no-any-return]


async def test_health_readiness_and_status(plane: Plane, fleet: SimFleet) -> None:
    assert await plane.get("/healthz") == (200, {"ok": True})
    assert await plane.get("/readyz") == (200, {"ready": True})
    status, body = await plane.get("/status")
    assert status == 200
    now = time.time()
    assert body["ready"] is True and body["dry_run"] is False
    assert body["policy"] == str(plane.policy_path)
    assert body["started_at"] == plane.daemon.started_at
    assert body["started_at"] <= body["last_change"] <= now
    assert body["overrides"] == []
    assert list(body["regions"]) == ["us-east", "us-west", "eu-west", "eu-central"]
    for name, region in body["regions"].items():
        assert region["state"] == "healthy", region
        assert region["score"] == 1.0 and region["reasons"] == []
        assert region["endpoint"] == fleet[name].endpoint
        assert region["jurisdiction"] == ("US" if name.startswith("us") else "EU")
        assert 0.005 < region["ttft_s"] < 1.0  # the simulator answers after 10 ms; the target is 1 s
        assert region["queue_depth"] == 0 and 0 <= region["kv_cache_usage"] < 0.1
        assert now - 3 < region["last_observed"] <= now
    chat = body["services"][SERVICE]
    assert set(chat) == {"global", "eu"}
    for group, weights in FULL.items():
        assert chat[group]["mode"] == "normal"
        assert {r: w["weight"] for r, w in chat[group]["weights"].items()} == weights
    assert chat["global"]["weights"]["us-east"]["reason"] == "healthy: capacity 40 x score 1.00"
    memory = body["providers"]["memory"]
    assert memory["applies"] >= 1 and memory["changes"] >= 6
    assert (memory["errors"], memory["consecutive_errors"], memory["last_error"]) == (0, 0, None)

    # A region that stops answering shows as unhealthy, with why, and loses its traffic.
    async with aiohttp.ClientSession() as session:
        await fault(session, fleet["eu-central"], mode="down")

    async def eu_central_down() -> dict[str, Any] | None:
        region = (await plane.get("/status"))[1]["regions"]["eu-central"]
        return region if region["state"] == "unhealthy" else None

    region = await until(eu_central_down, what="eu-central to be seen down")
    assert region["score"] == 0.0
    assert any("connect failed: Connection refused" in r for r in region["reasons"])
    await until(lambda: plane.weights()["eu-central"] == 0, what="eu-central to lose its weight")
    chat = (await plane.get("/status"))[1]["services"][SERVICE]
    assert chat["eu"]["weights"]["eu-central"]["reason"].startswith("unhealthy: ")
    assert chat["eu"]["weights"]["eu-west"]["weight"] == 100


async def test_metrics_are_valid_prometheus_text(plane: Plane, fleet: SimFleet) -> None:
    async with plane.session.get(plane.api + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["controlplane_weight_percent"].type == "gauge"
    assert families["controlplane_region_health"].type == "gauge"
    assert families["controlplane_probe_results"].type == "counter"
    weights = {
        (s.labels["group"], s.labels["region"]): s.value
        for s in families["controlplane_weight_percent"].samples
        if s.labels["service"] == SERVICE
    }
    assert weights == {(g, r): float(w) for g, ws in FULL.items() for r, w in ws.items()}
    health = {s.labels["region"]: s.value for s in families["controlplane_region_health"].samples}
    assert health == dict.fromkeys(ADDRESS, 1.0)
    metrics = await plane.metrics()
    assert metrics[("controlplane_ready", frozenset())] == 1.0
    assert metrics[("controlplane_reconciles_total", frozenset())] >= 1
    assert metrics[("controlplane_plan_changes_total", frozenset())] >= 1
    assert metrics[("controlplane_policy_reloads_rejected_total", frozenset())] == 0
    for kind in ("liveness", "inference", "metrics"):
        labels = frozenset({("region", "us-east"), ("kind", kind), ("ok", "true")})
        assert metrics[("controlplane_probe_results_total", labels)] >= 1

    async with aiohttp.ClientSession() as session:
        await fault(session, fleet["us-west"], mode="down")

    async def us_west_out() -> bool:
        m = await plane.metrics()
        region = frozenset({("region", "us-west")})
        weight = frozenset({("service", SERVICE), ("group", "global"), ("region", "us-west")})
        return (
            m[("controlplane_region_health", region)] == 0.0
            and m[("controlplane_weight_percent", weight)] == 0
        )

    await until(us_west_out, what="us-west to read unhealthy with weight 0 in /metrics")
    failed = frozenset({("region", "us-west"), ("kind", "liveness"), ("ok", "false")})
    assert (await plane.metrics())[("controlplane_probe_results_total", failed)] >= 1


async def test_changes_need_the_right_bearer_token(plane: Plane) -> None:
    drain = {"region": "us-west", "duration": 60}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer "},
        {"Authorization": TOKEN + "x"},
        {"Authorization": TOKEN},
        {"Authorization": f"Token {TOKEN}"},
    ):
        status, body = await plane.request("POST", "/overrides", headers=headers, json=drain)
        assert status == 401, headers
        assert body == {"error": "missing or wrong bearer token"}
    status, _ = await plane.request("DELETE", "/overrides/us-west", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    assert await plane.get("/overrides") == (200, [])  # reading needs no token
    assert plane.daemon.overrides == ()
    assert plane.events("override_added") == []
    # The scheme is case-insensitive (RFC 9110); the token is not.
    status, _ = await plane.request(
        "POST", "/overrides", headers={"Authorization": f"bearer {TOKEN}"}, json=drain
    )
    assert status == 201
    await until(lambda: plane.weights().get("us-west") == 0, what="the accepted drain taking effect")


async def test_without_a_token_the_api_is_read_only(fleet: SimFleet, tmp_path: Path) -> None:
    async for plane in start(fleet, tmp_path, token=None):
        status, body = await post_override(plane, {"region": "us-west", "duration": 60}, token="anything")
        assert status == 403
        assert "CONTROLPLANE_TOKEN" in body["error"]
        status, _ = await plane.request("DELETE", "/overrides/us-west")
        assert status == 403
        assert (await plane.get("/status"))[0] == 200
        assert plane.daemon.overrides == ()


BAD_BODIES: list[tuple[Any, str]] = [
    (b"{not json", "body must be JSON"),
    (b"\xff\xfe", "body must be JSON"),
    ([], "body must be a JSON object"),
    ({"region": "mars", "duration": 60}, f"region: must be one of {REGION_NAMES}, got 'mars'"),
    ({"duration": 60}, f"region: must be one of {REGION_NAMES}, got None"),
    ({"region": ["us-west"], "duration": 60}, f"region: must be one of {REGION_NAMES}, got ['us-west']"),
    ({"region": {"us-west": 1}, "duration": 60}, "region: must be one of"),
    (
        {"region": "us-west", "action": "explode", "duration": 60},
        "action: must be one of ['drain', 'weight'], got 'explode'",
    ),
    (
        {"region": "us-west", "action": ["drain"], "duration": 60},
        "action: must be one of ['drain', 'weight']",
    ),
    ({"region": "us-west"}, f"duration: seconds, more than 0 and at most {MAX_OVERRIDE_SECONDS}, got None"),
    ({"region": "us-west", "duration": 0}, "duration: seconds, more than 0"),
    ({"region": "us-west", "duration": -5}, "duration: seconds, more than 0"),
    ({"region": "us-west", "duration": True}, "duration: seconds, more than 0"),
    ({"region": "us-west", "duration": "60"}, "duration: seconds, more than 0"),
    ({"region": "us-west", "duration": MAX_OVERRIDE_SECONDS + 1}, f"at most {MAX_OVERRIDE_SECONDS}"),
    (
        {"region": "us-west", "duration": 60, "colour": "red"},
        "unknown field(s) ['colour']; allowed: ['action', 'duration', 'reason', 'region', 'service', 'weight']",
    ),
    ({"region": "us-west", "duration": 60, "service": "search"}, "service: unknown service 'search'"),
    ({"region": "us-west", "duration": 60, "service": ["chat"]}, "service: unknown service ['chat']"),
    (
        {"region": "us-west", "action": "weight", "duration": 60},
        "weight: an integer 0..1000000 is required for action=weight, got None",
    ),
    (
        {"region": "us-west", "action": "weight", "duration": 60, "weight": 2.5},
        "weight: an integer 0..1000000",
    ),
    (
        {"region": "us-west", "action": "weight", "duration": 60, "weight": -1},
        "weight: an integer 0..1000000",
    ),
    ({"region": "us-west", "duration": 60, "reason": 5}, "reason: a string of at most 500 characters"),
    (
        {"region": "us-west", "duration": 60, "reason": "x" * 501},
        "reason: a string of at most 500 characters",
    ),
]


async def test_bad_override_bodies_are_refused_naming_the_field(plane: Plane) -> None:
    for body, message in BAD_BODIES:
        status, reply = await post_override(plane, body)
        assert (status, type(reply)) == (400, dict), (body, status, reply)
        assert message in reply["error"], (body, reply)
    assert plane.daemon.overrides == ()
    assert await plane.get("/overrides") == (200, [])
    assert plane.events("override_added") == []
    assert plane.weights() == FULL["global"]


async def test_drain_then_delete_restores_the_region(plane: Plane) -> None:
    before = time.time()
    status, body = await post_override(
        plane, {"region": "us-west", "action": "drain", "duration": 600, "reason": "kernel upgrade"}
    )
    assert status == 201, body
    assert (body["region"], body["action"], body["author"], body["reason"]) == (
        "us-west",
        "drain",
        "api",
        "kernel upgrade",
    )
    assert body["service"] is None and body["weight"] is None
    assert before + 600 <= body["until"] <= time.time() + 600
    # max_shift is 100 in this policy: the drain lands in one step, in the plan and at the provider.
    await plane.settled({"global": US_WEST_DRAINED, "eu": FULL["eu"]})
    reason = plane.daemon.plan.group(SERVICE, "global").weights[1].reason  # type: ignore[union-attr]
    assert reason.startswith("drained by override until ") and reason.endswith("(kernel upgrade)")
    assert await plane.get("/overrides") == (200, [body])
    assert (await plane.get("/status"))[1]["overrides"] == [body]
    assert state_overrides(plane) == [body]
    [added] = plane.events("override_added")
    assert added["override"] == body

    status, reply = await plane.request("DELETE", "/overrides/us-west", headers=plane.auth())
    assert (status, reply) == (200, {"removed": 1})
    await plane.settled(FULL)
    assert await plane.get("/overrides") == (200, [])
    assert state_overrides(plane) == []
    [removed] = plane.events("override_removed")
    assert (removed["region"], removed["count"]) == ("us-west", 1)
    assert await plane.request("DELETE", "/overrides/us-west", headers=plane.auth()) == (404, {"removed": 0})
    assert await plane.request("DELETE", "/overrides/mars", headers=plane.auth()) == (404, {"removed": 0})


async def test_weight_override_pins_a_region(plane: Plane) -> None:
    status, body = await post_override(
        plane, {"region": "eu-central", "action": "weight", "weight": 300, "duration": 600}
    )
    assert status == 201 and body["weight"] == 300
    # eu-central weighs 300 instead of its capacity 10: 40/30/20/300 of 390, and 20/300 for the EU group.
    await plane.settled(
        {
            "global": {"us-east": 10, "us-west": 8, "eu-west": 5, "eu-central": 77},
            "eu": {"eu-west": 6, "eu-central": 94},
        }
    )
    group = plane.daemon.plan.group(SERVICE, "global")  # type: ignore[union-attr]
    assert group is not None and group.weights[3].reason == "healthy: pinned weight 300 x score 1.00"


async def test_an_override_expires_by_itself(plane: Plane) -> None:
    status, body = await post_override(plane, {"region": "us-west", "duration": 0.6})
    assert status == 201
    await plane.settled({"global": US_WEST_DRAINED})
    await plane.settled(FULL)  # no one touched it
    assert time.time() >= body["until"]
    assert await plane.get("/overrides") == (200, [])
    [expired] = await until(lambda: plane.events("override_expired"), what="the expiry in the audit log")
    assert expired["overrides"] == [body]
    assert plane.daemon.overrides == ()
    # The expiry is audited first and saved at the end of the same step.
    await until(lambda: state_overrides(plane) == [], what="the expiry in state.json")


async def test_concurrent_override_requests_are_all_kept(plane: Plane) -> None:
    reasons = sorted(f"ticket {i}" for i in range(24))
    bodies = [{"region": "eu-west", "duration": 600, "reason": reason} for reason in reasons]
    replies = await asyncio.gather(*(post_override(plane, b) for b in bodies))
    assert [status for status, _ in replies] == [201] * len(bodies), replies
    assert sorted(o.reason for o in plane.daemon.overrides) == reasons
    # Every request returned after its save: the file holds all of them.
    assert sorted(o["reason"] for o in state_overrides(plane)) == reasons
    assert len(plane.events("override_added")) == len(bodies)
    await plane.settled({"eu": {"eu-west": 0, "eu-central": 100}})


async def test_a_drill_runner_reports_the_last_drill_with_the_token(plane: Plane) -> None:
    result = {
        "drill": "region-outage",
        "passed": False,
        "finished_at": 1_800_000_000.0,
        "expectations": [{"name": "leaves_dns", "passed": False, "message": "<b>never</b> left"}],
        "report": "reports/region-outage",
    }
    status, _ = await plane.request("POST", "/drills", json=result)
    assert status == 401
    for bad, where in (
        ({**result, "passed": "maybe"}, "passed"),
        ({**result, "expectations": [{"name": "x", "passed": True}] * 51}, "expectations"),
        ({**result, "extra": 1}, "extra"),
        ({**result, "finished_at": float("nan")}, "finished_at"),
    ):
        status, body = await plane.request("POST", "/drills", headers=plane.auth(), data=json.dumps(bad))
        assert status == 400 and where in body["error"], (bad, body)
    assert (await plane.get("/status"))[1]["last_drill"] is None
    status, _ = await plane.request("POST", "/drills", headers=plane.auth(), json=result)
    assert status == 201
    assert (await plane.get("/status"))[1]["last_drill"] == result
    [event] = await until(lambda: plane.events("drill_reported"), what="the drill in the audit log")
    assert event["drill"] == "region-outage" and event["passed"] is False
