"""The daemon against real simulated regions on loopback: warm-up, hot reload, restarts, failing providers."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections import Counter
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chaos.loopback import free_port
from chaos.simregion import SimFleet
from controlplane.overrides import Override, OverrideAction
from controlplane.policy import Policy
from controlplane.providers.base import ManagedProvider
from controlplane.providers.factory import build_providers
from controlplane.providers.memory import MemoryProvider
from controlplane.state import StateStore
from controlplane.weights.artifacts import ArtifactView
from probes.observation import ProbeKind
from tests.conftest import until
from tests.fakes.providers import BrokenProvider
from tests.integration.daemon_helpers import (
    ADDRESS,
    DNS_NAME,
    EU_CLIENT,
    FULL,
    policy_data,
    position,
    read_audit,
    running_plane,
    write_policy,
)
from tests.integration.daemon_helpers import fault as set_fault


async def test_warm_up_changes_nothing_before_the_first_full_probe_round(
    fleet: SimFleet, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # us-east hangs: its probes get no answer (10 s timeouts), so the first round cannot complete.
    await set_fault(session, fleet["us-east"], mode="hang")
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet, probe_timeout=10, inference_timeout=10))
    async with running_plane(policy, tmp_path / "state") as plane:
        others = ("us-west", "eu-west", "eu-central")
        kinds = (ProbeKind.LIVENESS.value, ProbeKind.INFERENCE.value, ProbeKind.METRICS.value)

        def others_probed_repeatedly() -> bool:
            seen = plane.daemon.counters.observations
            return all(seen[(r, k, True)] >= 2 for r in others for k in kinds)

        # Every other region has answered every kind of probe, more than once: still nothing is done.
        await until(others_probed_repeatedly, what="the healthy regions to be probed")
        assert not plane.daemon.ready
        assert await plane.get("/readyz") == (503, {"ready": False})
        assert await plane.memory().current() == []
        assert plane.daemon.plan is None
        status, body = await plane.get("/status")
        assert status == 200 and body["ready"] is False and body["services"] == {}
        assert body["regions"]["us-west"]["state"] == "healthy"
        assert body["regions"]["us-east"]["state"] == "unknown"
        assert (await plane.metrics())[("controlplane_ready", frozenset())] == 0.0
        assert [e["event"] for e in plane.audit()] == ["start"]

        # Mending us-east ends its hung probes (the connections close): the round completes at once.
        await set_fault(session, fleet["us-east"], mode="ok")
        await plane.ready()
        assert await plane.get("/readyz") == (200, {"ready": True})
        mem = plane.memory()

        async def holds_the_plan() -> bool:
            plan = plane.daemon.plan
            return plan is not None and await mem.current() == mem.render(plan)

        await until(holds_the_plan, what="the provider to hold the plan's records")
        # One record per (group, allowed region), weight-0 ones included.
        records = await mem.current()
        assert sorted((r.group, r.region) for r in records) == sorted(
            [("global", r) for r in FULL["global"]] + [("eu", r) for r in FULL["eu"]]
        )
        await plane.settled(FULL)
        events = [e["event"] for e in plane.audit()]
        assert events.index("ready") < events.index("plan_changed") < events.index("applied")


async def test_invalid_edit_is_refused_and_a_valid_edit_takes_effect(fleet: SimFleet, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled(FULL)
        good = plane.daemon.policy

        # Two mistakes at once: a capacity below 1 and a typo'd field name.
        text = write_policy(policy, policy_data(fleet, capacities={"us-west": -5}))
        text = text.replace("max_shift:", "max_shfit:")
        write_policy(policy, text)
        await until(lambda: plane.events("policy_rejected"), what="the edit to be refused")
        await asyncio.sleep(0.2)  # a few more reload ticks: the same file is not judged again
        assert plane.daemon.counters.reloads_rejected == 1
        assert plane.daemon.counters.reloads_ok == 0
        assert plane.daemon.policy is good
        [rejected] = plane.events("policy_rejected")
        line, col = position(text, "capacity: -5")
        col += len("capacity: ")
        key_line, key_col = position(text, "max_shfit")
        assert f"{policy}:{line}:{col}: regions.1.capacity: " in rejected["problems"][0]
        assert (
            rejected["problems"][1] == f"{policy}:{key_line}:{key_col}: services.0.max_shfit: unknown field"
        )
        assert all(re.match(rf"^{re.escape(str(policy))}:\d+:\d+: ", p) for p in rejected["problems"])
        metrics = await plane.metrics()
        assert metrics[("controlplane_policy_reloads_rejected_total", frozenset())] == 1.0
        assert plane.weights() == FULL["global"]  # still running the last good policy

        # A valid edit: us-east's capacity 40 -> 10. Global becomes 10/30/20/10 of 70.
        write_policy(policy, policy_data(fleet, capacities={"us-east": 10}))
        await plane.settled(
            {
                "global": {"us-east": 14, "us-west": 43, "eu-west": 29, "eu-central": 14},
                "eu": FULL["eu"],
            }
        )
        assert plane.daemon.counters.reloads_ok == 1
        assert plane.daemon.policy.region("us-east").capacity == 10
        assert len(plane.events("policy_loaded")) == 1


async def test_dropping_a_region_removes_it_from_plan_probes_and_provider(
    fleet: SimFleet, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled(FULL)
        write_policy(policy, policy_data(fleet, drop=["eu-central"]))
        await plane.settled({"global": {"us-east": 45, "us-west": 33, "eu-west": 22}, "eu": {"eu-west": 100}})
        assert all(r.region != "eu-central" for r in await plane.memory().current())
        status, body = await plane.get("/status")
        assert status == 200 and set(body["regions"]) == {"us-east", "us-west", "eu-west"}
        probed = Counter(r for r, _, _ in plane.daemon.counters.observations.elements())
        await asyncio.sleep(0.3)  # longer than every probe interval: eu-central is no longer probed
        later = Counter(r for r, _, _ in plane.daemon.counters.observations.elements())
        assert later["eu-central"] == probed["eu-central"]
        assert later["us-east"] > probed["us-east"]


async def test_reload_refuses_yaml_the_loader_cannot_construct(fleet: SimFleet, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled(FULL)
        text = write_policy(policy, policy_data(fleet)).replace("version: 1", "version: !custom 1")
        write_policy(policy, text)
        [rejected] = await until(lambda: plane.events("policy_rejected"), what="the edit to be refused")
        assert plane.daemon.counters.reloads_rejected == 1
        line, col = position(text, "!custom")
        assert rejected["problems"][0].startswith(f"{policy}:{line}:{col}: invalid YAML: ")
        assert sum(plane.daemon.counters.task_restarts.values()) == 0
        assert plane.weights() == FULL["global"]


def moved_toward(
    before: dict[str, int], after: dict[str, int], target: dict[str, int], limit: int = 10
) -> bool:
    """`after` is one damped step from `before` toward `target`: something moved, nothing by more than
    `limit` points, nothing away from the target."""
    moves = {r: after[r] - before[r] for r in before}
    return any(moves.values()) and all(
        abs(m) <= limit and (m == 0 or (m > 0) == (target[r] > before[r])) for r, m in moves.items()
    )


TARGET = {"us-east": 25, "us-west": 0, "eu-west": 50, "eu-central": 25}


async def test_restart_restores_overrides_and_resumes_from_the_last_plan(
    fleet: SimFleet, tmp_path: Path
) -> None:
    policy, state = tmp_path / "policy.yaml", tmp_path / "state"
    write_policy(policy, policy_data(fleet))
    async with running_plane(policy, state) as plane:
        await plane.settled(FULL)
        await plane.daemon.add_override(
            Override("us-west", OverrideAction.DRAIN, until=plane.daemon.started_at + 600, reason="upgrade")
        )
        drained = {"us-east": 57, "us-west": 0, "eu-west": 29, "eu-central": 14}
        await plane.settled({"global": drained, "eu": FULL["eu"]})
        await plane.stop()
    saved = json.loads((state / "state.json").read_text())
    assert [o["region"] for o in saved["overrides"]] == ["us-west"]
    assert {w["region"]: w["weight"] for w in saved["plan"]["groups"][1]["weights"]} == drained

    # Restart with us-east's capacity cut to 10 and damping at 10 points a second. A daemon that forgot
    # its plan would jump straight to the new target (25/0/50/25); one that resumes moves from `drained`,
    # at most 10 points at first (how many depends on how soon after the start the first step runs).
    write_policy(policy, policy_data(fleet, capacities={"us-east": 10}, max_shift=10))
    async with running_plane(policy, state) as plane:
        assert plane.daemon.plan is not None and plane.weights() == drained
        assert [(o.region, o.reason) for o in plane.daemon.overrides] == [("us-west", "upgrade")]
        await plane.ready()
        first = await until(
            lambda: plane.weights() != drained and plane.weights(), what="the first plan after the restart"
        )
        assert moved_toward(drained, first, TARGET)
        await until(
            lambda: plane.weights() == TARGET,
            what="the damped walk to the new target",
        )
        _, body = await plane.get("/status")
        assert [o["region"] for o in body["overrides"]] == ["us-west"]

    audit = read_audit(state)
    events = [e["event"] for e in audit]
    assert events.count("start") == 2 and events.count("stop") == 2 and events[-1] == "stop"
    starts = [e for e in audit if e["event"] == "start"]
    assert [s["resumed_plan"] for s in starts] == [False, True]
    second = events.index("start", 1)
    resumed = next(e for e in audit[second:] if e["event"] == "plan_changed")
    assert resumed["before"]["chat"]["global"] == drained
    assert resumed["after"]["chat"]["global"] == first
    assert resumed["health"]["us-east"]["state"] == "healthy"
    assert set(resumed["health"]) == set(ADDRESS)
    assert [o["region"] for o in resumed["overrides"]] == ["us-west"]
    assert all(
        {"before", "after", "health", "groups"} <= e.keys() for e in audit if e["event"] == "plan_changed"
    )


async def test_state_saves_never_overlap_even_when_a_saver_is_cancelled(tmp_path: Path) -> None:
    # The daemon saves from the API (overrides), the reconcile loop (plans) and at shutdown, which cancels
    # the loop, maybe mid-save: a cancelled save's thread still runs. No save may trip over another, and
    # the one called last must win.
    big = tuple(Override("us-east", OverrideAction.DRAIN, until=4e9, reason="x" * 100) for _ in range(3000))
    for trial in range(30):
        store = StateStore(tmp_path / str(trial))
        if trial % 2:
            await asyncio.gather(*(store.save(None, big[:n], ArtifactView()) for n in (3000, 2000, 1000, 1)))
        else:
            first = asyncio.create_task(store.save(None, big, ArtifactView()))
            await asyncio.sleep(0.0005 * (trial % 3 + 1))
            first.cancel()  # most likely mid-write by now
            await store.save(None, big[:1], ArtifactView())  # the shutdown save
        assert store.load().overrides == big[:1]


async def test_an_unreadable_state_file_does_not_keep_the_daemon_down(
    fleet: SimFleet, tmp_path: Path
) -> None:
    policy, state = tmp_path / "policy.yaml", tmp_path / "state"
    write_policy(policy, policy_data(fleet))
    state.mkdir()
    (state / "state.json").write_text("[]")  # valid JSON, wrong shape
    async with running_plane(policy, state) as plane:
        assert plane.daemon.plan is None and plane.daemon.overrides == ()
        await plane.settled(FULL)
    assert json.loads((state / "state.json").read_text())["plan"] is not None


async def test_failing_providers_stop_neither_the_daemon_nor_the_others(
    fleet: SimFleet, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    made: list[ManagedProvider] = []

    def providers(p: Policy) -> list[ManagedProvider]:
        flaky = MemoryProvider(p, "flaky")
        flaky.fail_next(3, transient=False)  # permanent: each failure costs one reconcile, no retry
        made[:] = [BrokenProvider(p), flaky, MemoryProvider(p)]
        return list(made)

    async with running_plane(policy, tmp_path / "state", provider_factory=providers) as plane:
        await plane.settled(FULL)
        await plane.settled(FULL, provider="flaky")  # recovered after its three failures
        stats = plane.daemon.reconciler.stats
        await until(lambda: stats["broken"].errors >= 5, what="the broken provider to keep failing")

        # The daemon still acts on news: a drain reaches the healthy providers.
        status, _ = await plane.request(
            "POST", "/overrides", headers=plane.auth(), json={"region": "eu-west", "duration": 60}
        )
        assert status == 201
        drained = {"us-east": 50, "us-west": 37, "eu-west": 0, "eu-central": 13}
        await plane.settled({"global": drained, "eu": {"eu-west": 0, "eu-central": 100}})
        await plane.settled({"global": drained}, provider="flaky")
        assert not plane.task.done()

        status, body = await plane.get("/status")
        providers_status = body["providers"]
        assert providers_status["broken"]["errors"] >= 5
        assert providers_status["broken"]["consecutive_errors"] >= 5
        assert providers_status["broken"]["last_error"] == "RuntimeError: backend exploded"
        assert providers_status["broken"]["applies"] == 0
        assert providers_status["flaky"]["errors"] == 3
        assert providers_status["flaky"]["consecutive_errors"] == 0
        assert providers_status["flaky"]["last_error"] == "PermanentProviderError: flaky: injected failure"
        assert providers_status["flaky"]["applies"] >= 2
        assert providers_status["memory"]["errors"] == 0
        metrics = await plane.metrics()
        assert metrics[("controlplane_provider_errors_total", frozenset({("provider", "broken")}))] >= 5
        assert metrics[("controlplane_provider_errors_total", frozenset({("provider", "flaky")}))] == 3
        assert metrics[("controlplane_provider_errors_total", frozenset({("provider", "memory")}))] == 0
        assert metrics[("controlplane_provider_applies_total", frozenset({("provider", "memory")}))] >= 2
        errors = [p for e in plane.events("applied") for p in e["providers"] if p["provider"] == "broken"]
        assert errors and errors[0]["error"] == "RuntimeError: backend exploded"
        assert len(errors) == 1, "the same failure, every second, is audited once"
    assert all(getattr(p, "closed", True) for p in made)


async def test_localdns_answers_with_the_plan(fleet: SimFleet, tmp_path: Path) -> None:
    dns_port = free_port()
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet, dns_port=dns_port))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled(FULL, provider="localdns")

        async def answers(source: str, count: int = 40) -> Counter[str]:
            seen: Counter[str] = Counter()
            for _ in range(count):
                query = dns.message.make_query(DNS_NAME, "A")
                response = await dns.asyncquery.udp(
                    query, "127.0.0.1", port=dns_port, source=source, timeout=1.0
                )
                assert response.rcode() == dns.rcode.NOERROR
                seen.update(item.address for rrset in response.answer for item in rrset)
            return seen

        assert set(await answers(EU_CLIENT)) <= {ADDRESS["eu-west"], ADDRESS["eu-central"]}
        assert len(await answers("127.0.0.1", 80)) >= 3  # weights 40/30/20/10: most regions show up
        await plane.request(
            "POST", "/overrides", headers=plane.auth(), json={"region": "eu-west", "duration": 60}
        )
        await plane.settled({"eu": {"eu-west": 0, "eu-central": 100}}, provider="localdns")
        assert set(await answers(EU_CLIENT, 10)) == {ADDRESS["eu-central"]}


async def test_a_provider_that_cannot_start_does_not_stop_the_others(fleet: SimFleet, tmp_path: Path) -> None:
    # The embedded DNS server's port is taken by someone else: localdns cannot start.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        dns_port = squatter.getsockname()[1]
        policy = tmp_path / "policy.yaml"
        write_policy(policy, policy_data(fleet, dns_port=dns_port))
        async with running_plane(policy, tmp_path / "state", provider_factory=build_providers) as plane:
            assert [p.name for p in plane.daemon.providers] == ["memory"]
            await plane.settled(FULL)
            _, body = await plane.get("/status")
            assert body["providers"]["localdns"]["errors"] >= 1
            assert "cannot listen on udp" in body["providers"]["localdns"]["last_error"]
            [failed] = plane.events("provider_failed")
            assert failed["provider"] == "localdns"
            metrics = await plane.metrics()
            assert metrics[("controlplane_provider_errors_total", frozenset({("provider", "localdns")}))] >= 1

            # Retried in the background: once the port is free, localdns starts with no policy change,
            # and the failure was audited once, not at every retry.
            squatter.close()
            await until(
                lambda: [p.name for p in plane.daemon.providers] == ["memory", "localdns"],
                what="localdns to start once its port is free",
            )
            await plane.settled(FULL, provider="localdns")
            assert len(plane.events("provider_failed")) == 1

            # Once the providers change (the DNS server moves to a free port), localdns is started again.
            write_policy(policy, policy_data(fleet, dns_port=free_port()))
            await until(
                lambda: [p.name for p in plane.daemon.providers] == ["localdns", "memory"],
                what="localdns to start on its new port",
            )
            await plane.settled(FULL, provider="localdns")
            await plane.settled(FULL)
            assert sum(plane.daemon.counters.task_restarts.values()) == 0


async def test_reconciles_and_probes_are_traced(
    fleet: SimFleet, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    spans.clear()
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled(FULL)
    finished = spans.get_finished_spans()
    reconciles = [s for s in finished if s.name == "reconcile"]
    assert reconciles and any(s.attributes and s.attributes["plan.changed"] for s in reconciles)
    probed = {
        (s.name, s.attributes["region"]) for s in finished if s.name.startswith("probe ") and s.attributes
    }
    assert {("probe liveness", r) for r in FULL["global"]} <= probed
    assert {("probe inference", r) for r in FULL["global"]} <= probed
