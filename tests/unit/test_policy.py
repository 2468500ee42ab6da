from __future__ import annotations

import json

import pytest

from controlplane.policy import PolicyError, json_schema, load_policy, parse_policy
from tests.builders import DEMO

DEMO_TEXT = DEMO.read_text(encoding="utf-8")


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    return [str(p) for p in info.value.problems]


def test_demo_and_examples_are_valid():
    for path in [DEMO, *(DEMO.parent / "examples").glob("*.yaml")]:
        load_policy(path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "capacity: 60",
            "capacity: 0",
            "p.yaml:20:15: regions.1.capacity: Input should be greater than or equal to 1, got 0",
        ),
        (
            "when_all_down: fail-closed",
            "when_all_down: sometimes",
            "p.yaml:52:20: services.0.when_all_down: must be one of 'fail-open', 'fail-closed' or 'freeze', got 'sometimes'",
        ),
        (
            "regions: [us-east, us-west, eu-west, eu-central]",
            "regions: [us-east, mars]",
            "p.yaml:49:24: services.0.regions.1: unknown region 'mars'",
        ),
        ("  - name: us-west", "  - name: us-east", "p.yaml:17:5: regions.1.name: duplicate name 'us-east'"),
        (
            "allowed_jurisdictions: [EU]",
            "allowed_jurisdictions: [CH]",
            "p.yaml:39:5: client_groups.0.allowed_jurisdictions: no region is in ['CH']",
        ),
        ("    ttl: 5", "    ttl: 5\n    colour: red", "p.yaml:48:5: services.0.colour: unknown field"),
        (
            "sources: [127.0.1.0/24]",
            "sources: [127.0.1.0/33]",
            "p.yaml:38:14: client_groups.0.sources: '127.0.1.0/33' is not a CIDR",
        ),
        (
            "      us-west: us-west",
            "      us-north: us-west",
            "p.yaml:88:7: providers.haproxy.servers.us-north: unknown region",
        ),
        (
            "    port: 5353",
            "    port: 5353\n    port: 53",
            "p.yaml:80:5: providers.localdns.port: duplicate key",
        ),
    ],
)
def test_errors_point_at_the_field(old, new, expected):
    assert old in DEMO_TEXT
    found = problems(DEMO_TEXT.replace(old, new, 1))
    assert any(p.startswith(expected) for p in found), found


def test_staleness_must_outlast_the_probe_period():
    found = problems(DEMO_TEXT.replace("stale_after: 2.0", "stale_after: 0.5"))
    assert found == [
        "p.yaml:72:3: health.stale_after: 0.5s must exceed probes.inference.interval (0.5s), "
        "or every region turns unknown between two probes"
    ]


def test_every_problem_is_reported_not_just_the_first():
    text = DEMO_TEXT.replace("capacity: 60", "capacity: -1").replace("ttl: 5", "ttl: 0")
    assert len(problems(text)) == 2


def test_broken_yaml_has_a_position():
    assert problems("regions: [a, b\nservices: {")[0].startswith("p.yaml:2:")


def test_empty_and_non_mapping():
    assert "empty" in problems("")[0]
    assert "mapping" in problems("- 1\n- 2\n")[0]


def test_schema_file_is_in_sync_with_the_model():
    committed = (DEMO.parent / "schema.json").read_text()
    assert json.loads(committed) == json.loads(json_schema()), (
        "run: controlplane schema > policies/schema.json"
    )
