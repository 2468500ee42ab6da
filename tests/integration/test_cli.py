"""The `controlplane` command as a user runs it: a real process, against real regions and a real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from chaos.loopback import free_port, loopback_policy
from chaos.simregion import SimFleet
from tests.conftest import require_binary, until
from tests.integration.daemon_helpers import (
    ADDRESS,
    DNS_NAME,
    FULL,
    policy_data,
    position,
    read_audit,
    running_plane,
    write_policy,
)

ROOT = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "controlplane.cli")


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str, cwd: Path = ROOT) -> Result:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30, cwd=cwd, check=False)
    return Result(done.returncode, done.stdout, done.stderr)


async def arun_cli(*args: str, within: float = 20) -> Result:
    """The command in a child process while this loop keeps serving the regions and the daemon."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


# ---------------------------------------------------------------- validate, schema


def test_validate_accepts_the_demo_policy() -> None:
    result = run_cli("validate", "policies/demo.yaml")
    assert (result.code, result.out, result.err) == (0, "1 policy file(s) valid\n", "")


BROKEN = """\
version: 1
regions:
  - name: us-east
    endpoint: ftp://127.0.0.41:8000
    jurisdiction: US
    capacity: 0
    colour: blue
client_groups:
  - name: global
    allowed_jurisdictions: [US]
default_client_group: global
services:
  - name: chat
    dns_name: chat.llm.test
    regions: [us-east, mars]
    when_all_down: panic
"""


def test_validate_reports_every_problem_as_file_line_col_without_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    # An unknown YAML tag and an alias that contains itself get past the YAML parser: still no traceback.
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(BROKEN.replace("version: 1", "version: !int 1"))
    looped = tmp_path / "looped.yaml"
    looped.write_text("version: 1\nregions: &loop [*loop]\n")
    unparsable = tmp_path / "unparsable.yaml"
    unparsable.write_text("version: 1\nregions: [\n")
    missing = tmp_path / "missing.yaml"

    result = run_cli(
        "validate", "policies/demo.yaml", *map(str, (broken, tagged, looped, unparsable, missing))
    )
    assert result.code == 1
    assert result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert all(re.match(r"^[^:]+:\d+:\d+: \S", line) for line in lines), lines

    def at(needle: str, message: str) -> str:
        line, col = position(BROKEN, needle)
        return f"{broken}:{line}:{col}: {message}"

    assert lines[:5] == [
        at(
            "ftp://",
            "regions.0.endpoint: must be an http:// or https:// URL with a host, got 'ftp://127.0.0.41:8000'",
        ),
        at("0\n    colour", "regions.0.capacity: Input should be greater than or equal to 1, got 0"),
        at("colour", "regions.0.colour: unknown field"),
        at(
            "panic",
            "services.0.when_all_down: must be one of 'fail-open', 'fail-closed' or 'freeze', got 'panic'",
        ),
        f"{tagged}:1:10: invalid YAML: could not determine a constructor for the tag '!int'",
    ]
    assert lines[5].startswith(f"{looped}:") and "invalid YAML" in lines[5]
    assert lines[6] == f"{unparsable}:3:1: invalid YAML: expected the node content, but found '<stream end>'"
    assert lines[7].startswith(f"{missing}:1:1: cannot read policy: ")
    assert len(lines) == 8
    assert "policies/demo.yaml" not in result.err


def test_validate_reports_cross_field_problems(tmp_path: Path) -> None:
    broken = tmp_path / "refs.yaml"
    text = (
        BROKEN.replace("ftp://", "http://")
        .replace("capacity: 0", "capacity: 5")
        .replace("    colour: blue\n", "")
    )
    broken.write_text(text.replace("when_all_down: panic", "when_all_down: freeze"))
    result = run_cli("validate", str(broken))
    line, col = position(text, "mars")
    assert (result.code, result.out) == (1, "")
    assert (
        result.err
        == f"{broken}:{line}:{col}: services.0.regions.1: unknown region 'mars'; defined: ['us-east']\n"
    )


def test_schema_matches_the_committed_schema() -> None:
    result = run_cli("schema")
    assert result.code == 0 and result.err == ""
    assert result.out == (ROOT / "policies" / "schema.json").read_text()
    assert json.loads(result.out)["title"] == "LLM failover plane routing policy"


# ---------------------------------------------------------------- plan, status


async def test_plan_json_probes_the_regions_and_lists_the_creates(fleet: SimFleet, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    async with aiohttp.ClientSession() as session:
        await session.post(f"{fleet['us-west'].control_url}/fault", json={"mode": "down"})
    result = await arun_cli("plan", "--policy", str(policy), "--state-dir", str(tmp_path / "state"), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    weights = {g["group"]: {w["region"]: w["weight"] for w in g["weights"]} for g in data["plan"]["groups"]}
    # us-west is down: global is 40/20/10 of 70.
    assert weights == {
        "eu": FULL["eu"],
        "global": {"us-east": 57, "us-west": 0, "eu-west": 29, "eu-central": 14},
    }
    [memory] = data["changes"]
    assert memory["provider"] == "memory" and memory["error"] is None
    assert {c["action"] for c in memory["changes"]} == {"create"}
    created = {(c["after"]["group"], c["after"]["region"]): c["after"] for c in memory["changes"]}
    assert {k: r["weight"] for k, r in created.items()} == {
        (g, r): w for g, ws in weights.items() for r, w in ws.items()
    }
    assert all(c["before"] is None for c in memory["changes"])
    assert created[("global", "us-east")]["target"] == ADDRESS["us-east"]
    assert created[("global", "us-east")]["name"] == DNS_NAME
    assert not (tmp_path / "state").exists()  # a plan is a dry run: nothing written


async def test_plan_text_shows_weights_and_the_change_set(fleet: SimFleet, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    result = await arun_cli("plan", "--policy", str(policy), "--state-dir", str(tmp_path / "state"))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[:3] == [
        "chat [eu] normal: eu-west=67, eu-central=33",
        "chat [global] normal: us-east=40, us-west=30, eu-west=20, eu-central=10",
        "memory: 6 change(s)",
    ]
    assert f"  + {DNS_NAME} [global] us-east -> {ADDRESS['us-east']} weight 40" in lines


async def test_status_shows_a_running_daemon(fleet: SimFleet, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, policy_data(fleet))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled(FULL)
        text, as_json = await asyncio.gather(
            arun_cli("status", "--api", plane.api), arun_cli("status", "--api", plane.api + "/", "--json")
        )
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert re.fullmatch(
        r"ready: yes  started \S+ \S+ \(\d+s ago\)  last change \S+ \S+ \(\d+s ago\)", lines[0]
    )
    for name in ADDRESS:
        assert any(re.fullmatch(rf"  {name} +healthy +score 1\.00  ", line) for line in lines), lines
    assert "  chat [global] normal: us-east=40, us-west=30, eu-west=20, eu-central=10" in lines
    assert "  chat [eu] normal: eu-west=67, eu-central=33" in lines
    assert as_json.code == 0, as_json.err
    data = json.loads(as_json.out)
    assert data["ready"] is True and set(data["regions"]) == set(ADDRESS)
    assert {r: w["weight"] for r, w in data["services"]["chat"]["global"]["weights"].items()} == FULL[
        "global"
    ]


async def test_status_without_a_daemon_exits_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await arun_cli("status", "--api", url)
    assert result.code == 2
    assert result.err.startswith(f"controlplane: cannot reach the daemon at {url}: ")
    assert "Traceback" not in result.err


# ---------------------------------------------------------------- run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_run_serves_until_signalled_then_stops_cleanly(
    fleet: SimFleet, tmp_path: Path, sig: signal.Signals
) -> None:
    policy, state, log = tmp_path / "policy.yaml", tmp_path / "state", tmp_path / "daemon.log"
    write_policy(policy, policy_data(fleet))
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CONTROLPLANE_TOKEN": "cli-token"}
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "run", "--policy", str(policy), "--state-dir", str(state), "--api-port", str(port),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"{api}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    assert proc.returncode is None, log.read_text()
                    return False

            await until(ready, within=15, what="the daemon to be ready")
            # The token comes from the environment: an authorised drain works.
            async with session.post(
                f"{api}/overrides",
                json={"region": "us-east", "duration": 600},
                headers={"Authorization": "Bearer cli-token"},
            ) as response:
                assert response.status == 201
        await until(lambda: any(e["event"] == "plan_changed" for e in read_audit(state)), what="a plan")
        proc.send_signal(sig)
        async with asyncio.timeout(5):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    audit = read_audit(state)
    assert audit[0]["event"] == "start" and audit[-1]["event"] == "stop"
    assert [e["event"] for e in audit].count("stop") == 1
    saved = json.loads((state / "state.json").read_text())
    assert [o["region"] for o in saved["overrides"]] == ["us-east"]
    assert saved["plan"] is not None


async def test_run_refuses_an_invalid_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BROKEN.replace("version: 1", "version: !int 1"))
    result = await arun_cli("run", "--policy", str(policy), "--state-dir", str(tmp_path / "state"))
    assert result.code == 1
    assert result.err.splitlines() == [
        f"{policy}:1:10: invalid YAML: could not determine a constructor for the tag '!int'"
    ]
    policy.write_text(BROKEN)
    result = await arun_cli("run", "--policy", str(policy), "--state-dir", str(tmp_path / "state"))
    assert result.code == 1 and "Traceback" not in result.err
    assert len(result.err.splitlines()) == 4
    assert all(line.startswith(f"{policy}:") for line in result.err.splitlines())
    assert not (tmp_path / "state").exists()


def test_demo_that_cannot_start_says_why_without_a_traceback(tmp_path: Path) -> None:
    require_binary("haproxy")
    with socket.socket() as squatter:  # someone else holds the HAProxy runtime API port
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        policy = tmp_path / "policy.yaml"
        policy.write_text(loopback_policy(18700, free_port(), taken))
        result = run_cli("demo", "--policy", str(policy), "--state-dir", str(tmp_path / "state"), "--no-view")
    assert result.code == 2, result
    assert "controlplane demo: haproxy did not start" in result.err
    assert "Address already in use" in result.err and "Traceback" not in result.err
