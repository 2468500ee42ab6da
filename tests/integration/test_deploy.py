"""What deploy/ ships for operators: the Grafana dashboard and the Prometheus alerting rules query only metrics a
real daemon exports, and the rules pass promtool."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from chaos.etcdproc import EtcdCluster
from chaos.loopback import free_port
from chaos.simregion import SimFleet
from tests.conftest import require_binary, until
from tests.integration.daemon_helpers import SERVICE, fault, running_plane, write_policy
from tests.integration.test_live_cost import with_fleets

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "controlplane.json"
RULES = DEPLOY / "prometheus" / "alerts.yaml"
METRIC = re.compile(r"\bcontrolplane_[a-z0-9_]+")
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def _exprs(node: Any) -> Iterator[str]:
    """Every PromQL query in a dashboard: panel targets, template variable queries, annotations."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str | dict):
                yield from [value] if isinstance(value, str) else _exprs(value)
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def dashboard_metrics() -> set[str]:
    return {name for expr in _exprs(json.loads(DASHBOARD.read_text())) for name in METRIC.findall(expr)}


def rule_metrics() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {name for g in groups for rule in g["rules"] for name in METRIC.findall(rule["expr"])}


def exported(text: str) -> set[str]:
    """The names a query can use: each family's name, and the series names its type adds (a counter family
    `x` is scraped as `x_total`; prometheus_client already prints that in its TYPE line)."""
    names: set[str] = set()
    for name, kind in TYPE_LINE.findall(text):
        names.add(name)
        names.update(name + suffix for suffix in SUFFIXES.get(kind, ()) if not name.endswith(suffix))
    return names


def test_the_dashboard_and_rules_have_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["__inputs"][0]["pluginId"] == "prometheus"
    assert len(dashboard_metrics()) > 25 and len(rule_metrics()) > 10
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    # The list: region unhealthy, a group failing closed, a provider failing to apply, reloads
    # refused, probes shed, not ready, weights unsynced; and issue 11's frozen replica and missing leader.
    for wanted in (
        "RegionUnhealthy",
        "GroupFailingClosed",
        "ProviderFailing",
        "PolicyReloadRefused",
        "ProbesShed",
        "NotReady",
        "WeightsUnsynced",
        "ReplicaFrozen",
        "NoLeader",
    ):
        assert f"ControlPlane{wanted}" in alerts


def test_promtool_accepts_the_rules() -> None:
    promtool = require_binary("promtool", "Debian's prometheus")
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


async def test_every_metric_queried_is_exported(fleet: SimFleet, etcd: EtcdCluster, tmp_path: Path) -> None:
    """A replica with a fleet priced and the embedded DNS on: every family the plane can export is on /metrics,
    and a group whose every allowed region is down shows as failing closed."""
    data = with_fleets(fleet)
    data["providers"]["localdns"] = {"listen": "127.0.0.1", "port": free_port(), "zone": "llm.test"}
    data["coordination"] = {"etcd": etcd.endpoints, "lease_ttl": 2, "prefix": f"/test/{uuid.uuid4().hex[:8]}"}
    policy = tmp_path / "policy.yaml"
    write_policy(policy, data)
    async with running_plane(policy, tmp_path / "state", replica="r1") as plane:

        async def scraped() -> str | None:
            status, text = await plane.get("/metrics")
            assert status == 200
            # The quorum's families come once the replica has read the others' votes.
            return text if "controlplane_quorum_needed" in text else None

        names = exported(await until(scraped, within=15, what="the replica's quorum metrics"))
        missing = (dashboard_metrics() | rule_metrics()) - names
        assert not missing, f"queried but not exported: {sorted(missing)}"

        async def mode(group: str) -> str | None:
            samples = await plane.metrics()
            on = [
                dict(labels)["mode"]
                for (name, labels), value in samples.items()
                if name == "controlplane_group_mode"
                and value == 1
                and dict(labels)["group"] == group
                and dict(labels)["service"] == SERVICE
            ]
            return on[0] if len(on) == 1 else None

        assert await until(lambda: mode("eu"), within=15, what="the eu group's mode") == "normal"
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(fault(session, fleet[r], mode="down") for r in ("eu-west", "eu-central")))

        async def failing_closed() -> bool:
            return await mode("eu") == "fail-closed"

        await until(failing_closed, within=15, what="the eu group to fail closed on /metrics")
