"""The status page's HTTP side over a running daemon: the page and its assets with their security headers, and the
JSON it polls (regions, weights, a bounded history, the audit log's tail, overrides), read-only and tokenless."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chaos.loopback import DEMO_POLICY
from chaos.simregion import SimFleet
from controlplane.demo import guide
from controlplane.policy import load_policy
from controlplane.statuspage import History, Sample, read_tail, summarize
from tests.conftest import until
from tests.integration.daemon_helpers import (
    FULL,
    SERVICE,
    TOKEN,
    Plane,
    fault,
    policy_data,
    running_plane,
    write_policy,
)

MARKUP = '<img src=x onerror=alert(1)> & "quotes"'


@pytest.fixture
async def plane(fleet: SimFleet, tmp_path: Path) -> AsyncIterator[Plane]:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    async with running_plane(policy, tmp_path / "state") as running:
        await running.settled(FULL)
        yield running


async def test_the_page_and_its_assets(plane: Plane) -> None:
    for path, kind in (("/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        async with plane.session.get(plane.api + path) as response:
            assert response.status == 200, path
            assert response.content_type == kind
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    status, page = await plane.get("/")
    assert status == 200
    # No inline script or style for the policy to allow: both come from files.
    assert '<script src="/ui/app.js"' in page and "<script>" not in page and "style=" not in page
    for missing in ("/ui/nothing.js", "/ui/index.html", "/ui/..%2Fstatuspage.py"):
        assert (await plane.get(missing))[0] == 404, missing


async def data(plane: Plane) -> dict[str, Any]:
    status, body = await plane.get("/ui/data")
    assert status == 200
    return body  # type: ignore[no-any-return]


async def test_data_has_regions_weights_and_a_history_that_records_a_failure(
    plane: Plane, fleet: SimFleet
) -> None:
    body = await data(plane)
    assert list(body["regions"]) == ["us-east", "us-west", "eu-west", "eu-central"]
    assert body["regions"]["eu-west"]["jurisdiction"] == "EU"
    chat = body["services"][SERVICE]
    assert {r: w["weight"] for r, w in chat["global"]["weights"].items()} == FULL["global"]
    assert body["history"]["every"] == 1.0
    assert body["audit"][0]["ts"] >= body["audit"][-1]["ts"]  # newest first

    def states(found: dict[str, Any]) -> list[tuple[str, int | None]]:
        return [
            (s["health"]["eu-central"], s["weights"].get(f"{SERVICE}/eu", {}).get("eu-central"))
            for s in found["history"]["samples"]
        ]

    async def sampled_healthy() -> bool:
        return ("healthy", 33) in states(await data(plane))

    await until(sampled_healthy, within=5, what="a sample of eu-central healthy")
    async with aiohttp.ClientSession() as session:
        await fault(session, fleet["eu-central"], mode="down")

    async def recorded() -> dict[str, Any] | None:
        found = await data(plane)
        seen = states(found)
        return found if ("unhealthy", 0) in seen[seen.index(("healthy", 33)) :] else None

    # The history is sampled once a second by the API itself, whether or not anyone polls.
    found = await until(recorded, within=15, what="the history to record eu-central failing")
    samples = found["history"]["samples"]
    assert all(b["at"] - a["at"] >= 1.0 for a, b in itertools.pairwise(samples))
    changes = [e for e in found["audit"] if e["event"] == "plan_changed"]
    assert any(
        d.startswith(f"{SERVICE}/eu eu-central: 33 -> 0 (unhealthy: ") for e in changes for d in e["details"]
    ), changes


async def test_overrides_show_with_their_reason_as_given_and_the_data_needs_no_token(plane: Plane) -> None:
    body = {"region": "us-west", "action": "drain", "duration": 60, "reason": MARKUP}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert (await plane.request("POST", "/overrides", headers=headers, json=body))[0] == 201
    found = await data(plane)
    assert [(o["region"], o["reason"]) for o in found["overrides"]] == [("us-west", MARKUP)]

    async def audited() -> list[str] | None:
        entries = [e for e in (await data(plane))["audit"] if e["event"] == "override_added"]
        return entries[0]["details"] if entries else None

    assert await until(audited, what="the override in the audit tail") == [f"drain us-west: {MARKUP}"]
    # Read-only: the page's endpoint takes no writes.
    assert (await plane.request("POST", "/ui/data", headers=headers))[0] == 405


def test_history_keeps_changes_looked_at_once_a_second_within_its_window() -> None:
    history = History(every=1.0, keep=10.0)

    def at(t: float, state: str) -> None:
        history.add(Sample(t, {"r": state}, {"chat/global": {"r": 0 if state == "down" else 100}}))

    for t, state in ((0.0, "up"), (0.5, "down"), (1.0, "up"), (2.0, "down"), (3.0, "down"), (4.0, "up")):
        at(t, state)
    # 0.5 came too soon after 0, 1.0 and 3.0 changed nothing.
    assert [(s.at, s.health["r"]) for s in history.samples] == [(0.0, "up"), (2.0, "down"), (4.0, "up")]
    window = history.to_json(now=13.0)
    # The window starts at 3.0: the sample of 2.0 is the state then, shown from the window's start.
    assert window["start"] == 3.0
    assert [(s["at"], s["health"]["r"]) for s in window["samples"]] == [(3.0, "down"), (4.0, "up")]
    at(20.0, "down")  # 4.0's successor is 20.0; 4.0 itself is kept as the state at 20.0 - 10.0
    assert [s.at for s in history.samples] == [4.0, 20.0]
    for t in range(21, 60):
        at(float(t), "up" if t % 2 else "down")
    assert len(history.samples) == 10  # at most keep / every, however much flaps


def test_the_audit_tail_reads_a_capped_end_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = [json.dumps({"ts": n, "event": "tick", "n": n, "pad": "x" * 100}) for n in range(1000)]
    log.write_text("\n".join([*lines, '{"ts": 1000, "event": "torn'])[:-1], encoding="utf-8")
    found = read_tail(log, entries=5, cap=2000)
    assert [e["ts"] for e in found] == [999, 998, 997, 996, 995]
    assert found[0]["details"][0] == "n: 999"
    assert len(read_tail(log, entries=100, cap=2000)) < 20  # no more than the capped bytes hold
    assert read_tail(tmp_path / "absent.jsonl") == []


def test_an_applied_entry_reads_as_one_line_per_provider() -> None:
    entry = {
        "ts": 1.0,
        "event": "applied",
        "providers": [
            {"provider": "memory", "changes": 2, "applied": True, "error": None},
            {"provider": "route53", "changes": 2, "applied": False, "error": "Throttling"},
        ],
        "changes": [{"big": "x" * 1000}],
    }
    assert summarize(entry)["details"] == [
        "memory: 2 change(s) applied",
        "route53: 2 change(s) not applied: Throttling",
    ]


def test_the_demo_guide_points_at_the_page(tmp_path: Path) -> None:
    text = guide(load_policy(DEMO_POLICY), tmp_path, "t0ken", with_haproxy=False)
    assert (
        "Status page (live; paste the token below into it to drain and undrain): http://127.0.0.1:8080/"
        in text
    )
