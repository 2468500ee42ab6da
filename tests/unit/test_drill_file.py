"""Drill files: the issue's contract parses; every mistake is refused at FILE:LINE:COL with what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.drill import (
    DrillError,
    FaultStep,
    LeavesDns,
    NetworkFault,
    RegionFault,
    RegionMode,
    load_drill,
    mismatches,
    parse_drill,
)
from controlplane.policy import load_policy

DEMO = load_policy(Path(__file__).parents[2] / "policies" / "demo.yaml")

CONTRACT = """\
name: region-outage
description: us-east stops answering; traffic leaves it and comes back after repair
target: demo
allow_remote: false
steady_state:
  - dns_serves: {group: global, regions: [us-east, us-west, eu-west, eu-central]}
  - max_client_error_rate: 0.01
method:
  - fault: {kind: region, region: us-east, mode: down, at: 0s, duration: 10s}
expect:
  - leaves_dns: {region: us-east, within: 2s}
  - returns_to_dns: {region: us-east, within: 30s}
  - max_client_failures: 20
  - residency_violations: 0
  - max_flaps: 0
"""


def refused(text: str) -> list[str]:
    with pytest.raises(DrillError) as caught:
        parse_drill(text, "d.yaml")
    return [str(p) for p in caught.value.problems]


def test_the_issue_contract_parses_with_durations_in_seconds() -> None:
    drill = parse_drill(CONTRACT)
    (fault,) = drill.faults
    assert isinstance(fault, RegionFault) and fault.mode is RegionMode.DOWN
    assert (fault.at, fault.end, drill.length) == (0.0, 10.0, 10.0)
    assert isinstance(drill.expect[0], LeavesDns) and drill.expect[0].leaves_dns.within == 2.0
    assert mismatches(drill, DEMO) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("mode: down", "mode: melt", "d.yaml:9:50: method.0.fault.mode: must be one of 'down', 'hang'"),
        ("duration: 10s", "duration: 10 parsecs", "d.yaml:9:74: method.0.fault.duration: must be a duration"),
        (
            "duration: 10s",
            "duration: 0s",
            "d.yaml:9:74: method.0.fault.duration: Input should be greater than 0",
        ),
        (
            "kind: region",
            "kind: volcano",
            "d.yaml:9:12: method.0.fault: 'volcano' is not one of 'region', 'network'",
        ),
        (
            "  - fault: {",
            "  - fualt: {",
            "d.yaml:9:5: method.0: 'fualt' is not one of 'fault', 'override'",
        ),
        ("max_flaps: 0", "max_flops: 0", "d.yaml:15:5: expect.4: 'max_flops' is not one of 'leaves_dns'"),
        ("max_flaps: 0", "max_flaps: -1", "d.yaml:15:16: expect.4.max_flaps: Input should be greater than"),
        ("within: 2s", "within: 2s, when: soon", "d.yaml:11:47: expect.0.leaves_dns.when: unknown field"),
        ("  - max_client_failures: 20\n", "", None),
        (
            "target: demo",
            "target: {admin_api: 'http://10.9.0.1:8080', dns: '10.9.0.1:53'}",
            "d.yaml:3:9: target:",
        ),
        (
            "target: demo",
            "target: {admin_api: 'ftp://x', dns: '127.0.0.1:53'}",
            "d.yaml:3:21: target.admin_api",
        ),
    ],
)
def test_each_mistake_is_refused_where_it_was_written(old: str, new: str, expected: str | None) -> None:
    assert old in CONTRACT
    text = CONTRACT.replace(old, new, 1)
    if expected is None:
        parse_drill(text)  # the control: removing an expectation is no mistake
        return
    problems = refused(text)
    assert any(p.startswith(expected) for p in problems), problems
    assert not any("at least 1 item" in p for p in problems), problems  # a bad item is not an empty list


def test_a_remote_target_on_loopback_or_allowed_explicitly_is_accepted() -> None:
    local = "target: {admin_api: 'http://127.0.0.1:8080', dns: '127.0.0.1:5353'}"
    assert parse_drill(CONTRACT.replace("target: demo", local)).target != "demo"
    remote = "target: {admin_api: 'http://10.9.0.1:8080', dns: '10.9.0.1:53'}\nallow_remote: true"
    parse_drill(CONTRACT.replace("target: demo\nallow_remote: false", remote))


def test_a_remote_target_names_the_policy_file_its_plane_runs() -> None:
    local = "target: {admin_api: 'http://127.0.0.1:8080', dns: '127.0.0.1:5353', policy: staging.yaml}"
    target = parse_drill(CONTRACT.replace("target: demo", local)).target
    assert not isinstance(target, str) and target.policy == "staging.yaml"


def test_a_latency_fault_needs_its_latency_and_a_weight_override_its_weight() -> None:
    latency = "  - fault: {kind: network, region: us-east, mode: latency, duration: 5s}"
    problems = refused(
        CONTRACT.replace(
            "  - fault: {kind: region, region: us-east, mode: down, at: 0s, duration: 10s}", latency
        )
    )
    assert any("method.0.fault: a latency fault needs latency" in p for p in problems), problems
    fine = parse_drill(CONTRACT.replace("mode: down, at: 0s", "mode: down, at: 1s") + "")
    assert isinstance(fine.method[0], FaultStep)
    weight = "  - override: {region: eu-west, action: weight, duration: 5s}"
    problems = refused(CONTRACT.replace("method:\n", f"method:\n{weight}\n"))
    assert any("method.0.override: weight: given with action weight" in p for p in problems), problems
    partition = parse_drill(
        CONTRACT.replace(
            "kind: region, region: us-east, mode: down", "kind: network, region: us-east, mode: partition"
        )
    )
    assert (
        isinstance(partition.faults[0], NetworkFault) and partition.faults[0].partition.value == "blackhole"
    )


def test_names_the_target_policy_lacks_are_listed_with_what_it_has() -> None:
    drill = parse_drill(CONTRACT.replace("leaves_dns: {region: us-east", "leaves_dns: {region: us-norht"))
    assert mismatches(drill, DEMO) == [
        "expect.0.leaves_dns.region: 'us-norht' is not a region of the target's policy "
        "(us-east, us-west, eu-west, eu-central)"
    ]


def test_a_file_that_is_not_a_drill_is_refused_like_a_bad_policy(tmp_path: Path) -> None:
    (tmp_path / "fifo").mkdir()
    with pytest.raises(DrillError) as caught:
        load_drill(tmp_path / "fifo")
    assert (
        str(caught.value)
        == f"{tmp_path / 'fifo'}:1:1: cannot read drill: it is a directory, not a regular file"
    )
    with pytest.raises(DrillError) as caught:
        parse_drill("", "e.yaml")
    assert str(caught.value) == "e.yaml:1:1: drill is empty; expected a mapping with method and expect"
