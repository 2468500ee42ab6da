"""`controlplane cost` as a user runs it: a real process on the demo policy and its traffic profile."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "demo.yaml"
TRAFFIC = ROOT / "policies" / "traffic" / "demo.yaml"
CLI = (sys.executable, "-m", "controlplane.cli", "cost")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def cost(*args: str | Path, policy: Path = POLICY, traffic: Path = TRAFFIC) -> Result:
    done = subprocess.run(
        [*CLI, "--policy", str(policy), "--traffic", str(traffic), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@cache
def demo_json(*scenarios: str) -> dict[str, Any]:
    result = cost("--json", *(a for s in scenarios for a in ("--scenario", s)))
    assert result.code == 0, result.err
    data: dict[str, Any] = json.loads(result.out)  # stdout holds the JSON and nothing else
    return data


def jurisdiction() -> dict[str, str]:
    return {r.name: r.jurisdiction for r in load_policy(POLICY).regions}


def fleets() -> list[str]:
    return [r.name for r in load_policy(POLICY).regions if r.fleet is not None]


def scenario(data: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in data["scenarios"] if s["scenario"] == name)
    return found


def group(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(g for g in report["groups"] if g["group"] == name)
    return found


def test_the_demo_by_default_normal_and_each_priced_region_down_with_rows_summing_to_the_total() -> None:
    data = demo_json()
    assert data["currency"] == "USD"
    assert len(fleets()) >= 2
    assert [s["scenario"] for s in data["scenarios"]] == ["normal", *(f"region-down:{r}" for r in fleets())]
    for report in data["scenarios"]:
        assert [r["region"] for r in report["regions"]] == fleets()
        assert sum(r["total"] for r in report["regions"]) == pytest.approx(report["total"], abs=1e-4)
        assert sum(report["by_category"].values()) == pytest.approx(report["total"], abs=1e-4)
        for region in report["regions"]:
            assert sum(t["amount"] for t in region["terms"]) == pytest.approx(region["total"], abs=1e-4)
            assert all(t["formula"] for t in region["terms"])
            assert all(t["sources"] for t in region["terms"] if t["amount"] > 0)
    normal = scenario(data, "normal")
    assert normal["total"] > 0
    assert normal["tokens"] > 0


def test_us_east_down_moves_the_global_groups_tokens_to_the_other_regions() -> None:
    data = demo_json("normal", "region-down:us-east")
    normal, down = scenario(data, "normal"), scenario(data, "region-down:us-east")
    before, after = group(normal, "global"), group(down, "global")
    assert before["regions"].get("us-east", 0) > 0
    assert after["regions"].get("us-east", 0) == 0
    assert after["tokens"] == pytest.approx(before["tokens"])  # the survivors carry it all
    assert sum(after["regions"].values()) == pytest.approx(1.0)
    us_east = next(r for r in down["regions"] if r["region"] == "us-east")
    assert us_east["tokens"] == 0
    # us-east still pays its reserved instances; the others serve more than before.
    assert us_east["by_category"]["reserved"] == pytest.approx(
        next(r for r in normal["regions"] if r["region"] == "us-east")["by_category"]["reserved"]
    )
    served = {r["region"]: r["tokens"] for r in normal["regions"]}
    assert sum(r["tokens"] for r in down["regions"] if r["region"] != "us-east") > sum(
        t for name, t in served.items() if name != "us-east"
    )


def test_the_eu_groups_rows_never_include_a_us_region_in_any_scenario() -> None:
    where = jurisdiction()
    spot = [f"spot-loss:{r}" for r in fleets()]
    for report in [*demo_json()["scenarios"], *demo_json(*spot)["scenarios"]]:
        eu = group(report, "eu")
        assert eu["tokens"] > 0 or report["warnings"], report["scenario"]
        assert {where[r] for r, share in eu["regions"].items() if share > 0} <= {"EU"}, report["scenario"]


def test_the_table_has_a_row_per_region_and_a_total_and_explain_shows_the_price_pages() -> None:
    result = cost("--scenario", "normal", "--explain")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    for name in [*fleets(), "total", "global", "eu"]:
        assert any(line.split()[:1] == [name] for line in lines), name
    # Piped, a row stays on one line: region, 7 categories, total, tokens, per 1M tok, peak instances.
    assert next(len(line.split()) for line in lines if line.split()[:1] == ["us-east"]) == 12
    assert "normal: how each figure was made" in result.out
    assert re.search(r"^\[1\] https://\S+ \(\d{4}-\d{2}", result.out, re.MULTILINE)
    assert " x 730 h x $" in result.out


def test_a_price_sheet_of_ones_own_changes_only_what_it_prices(tmp_path: Path) -> None:
    us_east = load_policy(POLICY).region("us-east").fleet
    assert us_east is not None and us_east.reserved > 0
    term = us_east.reserved_term.value
    sheet = tmp_path / "mine.yaml"
    sheet.write_text(
        "version: 1\ncurrency: USD\ndate: 2026-11-20\nclouds:\n"
        f"  {us_east.cloud}:\n    {us_east.region}:\n      instances:\n"
        f"        {us_east.instance}: {{reserved_{term}: 0.5, source: 'https://example.com/our-deal'}}\n",
        encoding="utf-8",
    )
    result = cost("--json", "--scenario", "normal", "--prices", sheet)
    assert result.code == 0, result.err
    mine = scenario(json.loads(result.out), "normal")
    shipped = scenario(demo_json("normal"), "normal")
    for a, b in zip(mine["regions"], shipped["regions"], strict=True):
        if a["region"] == "us-east":
            assert a["by_category"]["reserved"] == pytest.approx(us_east.reserved * 730 * 0.5, abs=1e-3)
            assert a["by_category"]["on_demand"] == pytest.approx(b["by_category"]["on_demand"])
        else:
            assert a["total"] == pytest.approx(b["total"]), a["region"]


def test_a_region_without_a_fleet_routes_unpriced_and_is_not_taken_down_by_default(tmp_path: Path) -> None:
    data = yaml.safe_load(POLICY.read_text(encoding="utf-8"))
    del next(r for r in data["regions"] if r["name"] == "eu-central")["fleet"]
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = cost("--json", policy=policy)
    assert result.code == 0, result.err
    reports = json.loads(result.out)["scenarios"]
    priced = [r for r in fleets() if r != "eu-central"]
    assert [s["scenario"] for s in reports] == ["normal", *(f"region-down:{r}" for r in priced)]
    for report in reports:
        assert [r["region"] for r in report["regions"]] == priced
        assert any("eu-central" in w for w in report["warnings"]), report["scenario"]
    # It can still be taken down by name: its traffic then lands on priced regions.
    result = cost("--json", "--scenario", "region-down:eu-central", policy=policy)
    assert result.code == 0, result.err
    assert json.loads(result.out)["scenarios"][0]["scenario"] == "region-down:eu-central"
    # But it has no spot to lose.
    result = cost("--scenario", "spot-loss:eu-central", policy=policy)
    assert result.code == 2
    assert "(regions with a fleet: us-east, us-west, eu-west)" in result.err


def test_bad_traffic_yaml_exits_2_at_its_line_and_column_without_a_traceback(tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.yaml"
    traffic.write_text(
        "version: 1\ngroups:\n  global:\n    tokens_in: 600\n    tokens_out: 250\n    requests_per_s: 5\n"
        "    tokens_sideways: 3\n",
        encoding="utf-8",
    )
    result = cost("--json", traffic=traffic)
    assert result.code == 2
    assert result.out == ""
    assert re.match(rf"^{re.escape(str(traffic))}:7:5: .*tokens_sideways", result.err), result.err
    assert "Traceback" not in result.err


def test_bad_input_everywhere_is_reported_all_at_once(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text(encoding="utf-8").replace("capacity: 100", "capacity: -1", 1), "utf-8")
    sheet = tmp_path / "prices.yaml"
    sheet.write_text("version: 1\ncurrency: USD\ndate: 2026-11-20\nclouds: {aws: {us-east-1: 3}}\n", "utf-8")
    result = cost("--prices", sheet, policy=policy)
    assert result.code == 2
    assert re.search(rf"^{re.escape(str(policy))}:\d+:\d+: .*capacity", result.err, re.MULTILINE), result.err
    assert re.search(rf"^{re.escape(str(sheet))}:4:\d+: ", result.err, re.MULTILINE), result.err
    assert "Traceback" not in result.err


def test_a_fleet_without_its_price_is_refused_naming_the_region(tmp_path: Path) -> None:
    us_east = load_policy(POLICY).region("us-east").fleet
    assert us_east is not None
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        POLICY.read_text(encoding="utf-8").replace(
            f"instance: {us_east.instance}", "instance: x9.nothing", 1
        ),
        encoding="utf-8",
    )
    result = cost(policy=policy)
    assert result.code == 2
    assert f"{policy}: region us-east: " in result.err
    assert "x9.nothing" in result.err
    assert result.out == ""


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (
            "region-down:us-north",
            "no region 'us-north' there (regions: us-east, us-west, eu-west, eu-central)",
        ),
        ("sideways:us-east", "must be one of normal, region-down:REGION or spot-loss:REGION"),
        ("region-down", "region-down needs a region"),
    ],
)
def test_a_scenario_the_policy_cannot_take_names_what_it_can(given: str, said: str) -> None:
    result = cost("--scenario", "normal", "--scenario", given)
    assert result.code == 2
    assert said in result.err
    assert result.out == ""


def test_chart_writes_one_png(tmp_path: Path) -> None:
    chart = tmp_path / "cost.png"
    result = cost("--json", "--chart", chart)
    assert result.code == 0, result.err
    json.loads(result.out)
    png = chart.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24])[0] > 0
    assert 0 < len(png) < 150_000
