"""A bad day for the daemon: full or read-only disks, restarts, bad state, crash loops, busy ports, hostile
admin clients. Routing must carry on through each, and say what is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from chaos.loopback import free_port, resolve
from chaos.simregion import SimFleet
from controlplane.api import serve
from controlplane.daemon import Daemon, DaemonConfig, TaskHealth
from controlplane.policy import Policy, load_policy
from controlplane.providers.base import ManagedProvider
from controlplane.providers.factory import build_providers
from tests.conftest import until
from tests.fakes.providers import Fault, FlakyProvider
from tests.integration.daemon_helpers import (
    ADDRESS,
    DNS_NAME,
    FULL,
    Plane,
    fault,
    policy_data,
    running_plane,
    write_policy,
)

US_EAST_DOWN = {"us-east": 0, "us-west": 50, "eu-west": 33, "eu-central": 17}


def _mount(*args: str) -> bool:
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "16k") -> Iterator[Path]:
    """A tmpfs of `size` at `path` (root only): a disk that fills up."""
    path.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def kept_aside(state: Path) -> list[Path]:
    return list(state.glob("state.json.bad-*"))


def fill(path: Path) -> None:
    with contextlib.suppress(OSError), (path / "filler").open("wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()


@pytest.fixture
async def policy_file(fleet: SimFleet, tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    write_policy(path, policy_data(fleet))
    return path


async def test_a_full_disk_stops_no_reconcile(
    fleet: SimFleet, policy_file: Path, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    with tiny_disk(tmp_path / "state") as state:
        async with running_plane(policy_file, state) as plane:
            await plane.settled(FULL)
            await asyncio.to_thread(fill, state)
            # The next changes cannot be recorded, but they are made, every one.
            await fault(session, fleet["us-east"], mode="down")
            await plane.settled({"global": US_EAST_DOWN})
            await fault(session, fleet["us-east"], mode="ok")
            await plane.settled(FULL)
            # A short audit line may still fit in the file's last page: the failures are what is certain.
            assert plane.daemon.audit.health.failures >= 1
            assert sum(plane.daemon.counters.task_restarts.values()) == 0

            # An override is in force and says it could not be persisted: 201, not 500.
            async with session.post(
                plane.api + "/overrides",
                json={"region": "us-west", "duration": 60},
                headers=plane.auth(),
            ) as response:
                assert response.status == 201
                assert response.headers["X-Persisted"] == "false"
            assert [o.region for o in plane.daemon.overrides] == ["us-west"]

            _, body = await plane.get("/status")
            failing = {a["file"] for a in body["alerts"] if a["alert"] == "disk_writes_failing"}
            assert "state.json" in failing  # a new file needs a page the disk no longer has
            metrics = await plane.metrics()
            assert metrics[("controlplane_disk_writes_failing", frozenset({("file", "state")}))] == 1.0
            assert metrics[("controlplane_disk_write_failures_total", frozenset({("file", "audit")}))] >= 1

            # Space comes back: so do the writes, and every line on disk is whole.
            await asyncio.to_thread((state / "filler").unlink)
            await plane.daemon.add_override(plane.daemon.overrides[0])
            await until(lambda: not plane.daemon.audit.health.failing, what="audit writes to recover")
            assert not plane.daemon.store.health.failing
            lines = (state / "audit.jsonl").read_text().splitlines()
            assert all(json.loads(line) for line in lines)


@pytest.fixture
async def held_plan_state(fleet: SimFleet, policy_file: Path, tmp_path: Path) -> Path:
    """A state dir holding the plan of a daemon that ran with every region healthy, then stopped."""
    state = tmp_path / "state"
    async with running_plane(policy_file, state) as plane:
        await plane.settled(FULL)
    return state


async def test_a_restart_serves_the_last_plan_before_the_first_probe_round(
    fleet: SimFleet, policy_file: Path, held_plan_state: Path, session: aiohttp.ClientSession
) -> None:
    for name in ADDRESS:  # nobody answers probes: the first round takes as long as it can
        await fault(session, fleet[name], mode="hang")
    async with running_plane(policy_file, held_plan_state) as plane:
        assert not plane.daemon.ready
        assert await plane.held("global") == FULL["global"]
        assert await plane.held("eu") == FULL["eu"]
        [served] = plane.events("plan_served")
        assert served["providers"] == {"memory": "ok"}


async def test_a_persisted_plan_that_breaks_the_new_policy_is_cut_to_it(
    fleet: SimFleet, policy_file: Path, held_plan_state: Path, session: aiohttp.ClientSession
) -> None:
    # us-east is gone from the policy: its weight is not served, the rest is.
    write_policy(policy_file, policy_data(fleet, drop=["us-east"]))
    await fault(session, fleet["us-west"], mode="hang")
    async with running_plane(policy_file, held_plan_state) as plane:
        held = await plane.held("global")
        assert "us-east" not in held and held == {"us-west": 30, "eu-west": 20, "eu-central": 10}


async def test_bad_state_is_kept_aside_and_routing_goes_on(
    fleet: SimFleet, policy_file: Path, held_plan_state: Path
) -> None:
    path = held_plan_state / "state.json"
    data = json.loads(path.read_text())
    data["overrides"] = [{"region": "us-west", "action": "drain", "until": "2099-01-01"}]
    data["plan"]["groups"][0]["weights"][0]["weight"] = 1_000_000
    path.write_text(json.dumps(data))
    async with running_plane(policy_file, held_plan_state) as plane:
        assert plane.daemon.overrides == ()
        await plane.ready()
        await plane.settled(FULL)
        assert (await plane.get("/readyz"))[0] == 200
        _, body = await plane.get("/status")
        [repaired] = [a for a in body["alerts"] if a["alert"] == "state_repaired"]
        assert any("overrides.0.until" in p for p in repaired["problems"])
        assert any("clamped" in p for p in repaired["problems"])
        assert len(kept_aside(held_plan_state)) == 1
        assert sum(plane.daemon.counters.task_restarts.values()) == 0


async def test_a_crash_loop_makes_the_daemon_unready(policy_file: Path, tmp_path: Path) -> None:
    crashes = 0

    async def doomed() -> None:
        nonlocal crashes
        crashes += 1
        raise RuntimeError("boom")

    policy = load_policy(policy_file)
    config = DaemonConfig(policy_path=policy_file, state_dir=tmp_path / "state", reconcile_interval=0.1)
    daemon = Daemon(config, policy, build_providers)
    runner = asyncio.create_task(daemon.run([("doomed", doomed)], handle_signals=False))
    try:
        await until(lambda: daemon.scheduler.first_round.is_set() and crashes >= 2, what="two crashes")
        assert not daemon.ready
        health = daemon.tasks["doomed"]
        assert health.streak >= 2 and health.last_error == "RuntimeError: boom"
    finally:
        daemon.request_stop()
        await runner


def test_a_task_that_ran_stably_starts_its_streak_afresh() -> None:
    health = TaskHealth(crashes=5, streak=1, last_crash=None)
    assert not health.crash_looping


async def test_a_reload_to_a_busy_port_is_refused_and_dns_keeps_answering(
    fleet: SimFleet, tmp_path: Path
) -> None:
    policy, dns_port = tmp_path / "policy.yaml", free_port()
    write_policy(policy, policy_data(fleet, dns_port=dns_port))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled(FULL, provider="localdns")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
            squatter.bind(("127.0.0.1", 0))
            busy = squatter.getsockname()[1]
            write_policy(policy, policy_data(fleet, dns_port=busy))
            [refused] = await until(lambda: plane.events("policy_rejected"), what="the reload to be refused")
            assert "providers.localdns" in refused["problems"][0]
            assert plane.daemon.counters.reloads_rejected == 1
            assert plane.daemon.policy.providers.localdns is not None
            assert plane.daemon.policy.providers.localdns.port == dns_port
            assert set(await resolve(dns_port, count=20, name=DNS_NAME)) <= set(ADDRESS.values())

        # A free port: the new server answers before the old one closes.
        moved = free_port()
        write_policy(policy, policy_data(fleet, dns_port=moved))
        await until(lambda: plane.events("policy_loaded"), what="the move to be loaded")
        assert set(await resolve(moved, count=20, name=DNS_NAME)) <= set(ADDRESS.values())
        metrics = await plane.metrics()
        assert metrics[("controlplane_dns_tcp_connections", frozenset())] == 0
        assert metrics[("controlplane_dns_worker_restarts_total", frozenset())] == 0

        # The new server's workers report what they answered, per name and client group.
        answered = frozenset({("name", DNS_NAME), ("group", "global"), ("rcode", "NOERROR")})

        async def counted() -> bool:
            return (await plane.metrics()).get(("controlplane_dns_answers_total", answered), 0) >= 20

        await until(counted, what="the 20 answers on /metrics")


async def test_the_damping_base_is_what_the_provider_holds(
    fleet: SimFleet, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet, memory=False))
    flaky: list[FlakyProvider] = []

    def factory(p: Policy) -> list[ManagedProvider]:
        flaky[:] = [FlakyProvider(p, "flaky")]
        return list(flaky)

    async with running_plane(policy, tmp_path / "state", provider_factory=factory) as plane:
        await plane.settled(FULL, provider="flaky")
        flaky[0].faults.extend([Fault(RuntimeError("down"))] * 1000)
        await fault(session, fleet["us-west"], mode="down")
        await until(lambda: plane.daemon.reconciler.stats["flaky"].consecutive_errors >= 3, what="failures")
        # The provider never took the new weights: the plane still damps from the old ones.
        assert plane.weights() == FULL["global"]
        assert await plane.held("global", "flaky") == FULL["global"]
        flaky[0].faults.clear()
        await plane.settled(
            {"global": {"us-east": 57, "us-west": 0, "eu-west": 29, "eu-central": 14}}, "flaky"
        )


@pytest.fixture
async def plane(fleet: SimFleet, policy_file: Path, tmp_path: Path) -> AsyncIterator[Plane]:
    async with running_plane(policy_file, tmp_path / "state") as plane:
        yield plane


@pytest.mark.parametrize("reason", ["line\r\nforged: entry", "\x1b[2J\x1b[31mred", "nul\x00"])
async def test_override_reasons_with_control_characters_are_refused(plane: Plane, reason: str) -> None:
    status, body = await plane.request(
        "POST",
        "/overrides",
        json={"region": "us-west", "duration": 60, "reason": reason},
        headers=plane.auth(),
    )
    assert status == 400 and "control characters" in body["error"]
    assert plane.daemon.overrides == ()


async def test_status_never_shows_credentials_in_urls(fleet: SimFleet, tmp_path: Path) -> None:
    data = policy_data(fleet)
    host = fleet["us-east"].endpoint.removeprefix("http://")
    data["regions"][0]["endpoint"] = f"http://probe:s3cret@{host}"
    policy = tmp_path / "policy.yaml"
    write_policy(policy, data)
    async with running_plane(policy, tmp_path / "state") as plane:
        status, text = await plane.request("GET", "/status")
        assert status == 200
        assert "s3cret" not in json.dumps(text)
        assert text["regions"]["us-east"]["endpoint"] == f"http://***@{host}"


async def test_a_client_that_never_finishes_its_headers_is_cut_off(plane: Plane) -> None:
    port = free_port()
    api = asyncio.create_task(serve(plane.daemon, "127.0.0.1", port, header_timeout=0.3))
    try:
        reader, writer = await until(partial(_connect, port), what="the second API listener")
        writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the server
        writer.close()
        # A client that sends its whole head in time is answered as usual.
        reader, writer = await _connect(port) or (None, None)  # type: ignore[misc]
        assert reader is not None and writer is not None
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        api.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await api


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None


async def test_a_stalled_plane_holds_its_plan_instead_of_failing_regions_over(plane: Plane) -> None:
    await plane.settled(FULL)
    await plane.ready()
    # The loop this test shares with the daemon is blocked past stale_after (3 s): every region's last
    # result is now stale and every probe in flight timed out. None of that is news about the regions.
    time.sleep(3.5)  # noqa: ASYNC251 - the point is to block the loop
    for _ in range(50):  # the steps right after the stall, and for a second after
        assert (await plane.held("global"), await plane.held("eu")) == (FULL["global"], FULL["eu"])
        await asyncio.sleep(0.02)
    [hold] = await until(lambda: plane.events("held_after_stall"), what="the hold in the audit log")
    assert hold["lag"] >= 3.0
    # Once every region has been probed again the plane decides as usual: nothing to change here.
    await until(lambda: plane.daemon._unseen_stall() is None, what="fresh results after the stall")
    await plane.settled(FULL)
    assert plane.events("plan_changed")[-1]["after"]["chat"]["global"] == FULL["global"]
    metrics = await plane.metrics()
    assert metrics[("controlplane_loop_stalls_total", frozenset())] >= 1


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("regions: [{name: a, when: !!timestamp foo}]\n", ":1:"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(7)
            ),
            ":",
        ),
    ],
    ids=["bad-timestamp", "billion-laughs"],
)
async def test_a_hostile_policy_edit_is_refused_audited_and_counted(
    plane: Plane, text: str, where: str
) -> None:
    await plane.settled(FULL)
    write_policy(plane.policy_path, text)
    [refused] = await until(lambda: plane.events("policy_rejected"), what="the edit to be refused")
    assert str(plane.policy_path) + where in refused["problems"][0]
    assert plane.daemon.counters.reloads_rejected == 1
    await plane.settled(FULL)


async def test_a_policy_replaced_by_a_fifo_neither_hangs_reloads_nor_shutdown(plane: Plane) -> None:
    await plane.settled(FULL)
    await asyncio.to_thread(_replace_with_fifo, plane.policy_path)
    [refused] = await until(lambda: plane.events("policy_rejected"), what="the FIFO to be refused")
    assert "FIFO" in refused["problems"][0]
    async with asyncio.timeout(10):
        await plane.stop()  # nobody ever writes to the FIFO: a blocked reload would hang this


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


async def test_overrides_are_capped_with_a_conflict(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("controlplane.daemon.MAX_OVERRIDES", 3)
    body = {"region": "us-west", "duration": 60}
    replies = [await plane.request("POST", "/overrides", json=body, headers=plane.auth()) for _ in range(4)]
    assert [status for status, _ in replies] == [201, 201, 201, 409]
    assert "3 overrides are active" in replies[-1][1]["error"]
    assert len(plane.daemon.overrides) == 3
