"""`controlplane policy from-terraform`: terraform outputs mapped onto the policy, edited in place."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from controlplane.cli import main
from controlplane.errors import InvalidInput
from controlplane.fromterraform import OutputsError, fill_policy, parse_outputs, redact, scalar, secrets
from controlplane.policy import parse_policy
from controlplane.yamldoc import MAX_DOCUMENT_BYTES

ARN = "arn:aws:globalaccelerator::123456789012:accelerator/abcd-1234/listener/0123vxyz"

POLICY = """\
# Two regions; comments like this one must survive the edit.
version: 1
regions:
  - {name: us-east, endpoint: "http://10.1.0.10:8000", jurisdiction: US}  # the big one
  - name: eu-west   # block style
    endpoint: "http://10.2.0.10:8000"
    jurisdiction: EU
    bucket: s3://old-eu-bucket
client_groups:
  - {name: world, allowed_jurisdictions: [US, EU]}
default_client_group: world
services:
  - {name: chat, dns_name: chat.llm.example.com, regions: [us-east, eu-west]}
providers:
  route53:
    zone: example.com   # the zone terraform made
    owner: prod
  global_accelerator:
    listener_arn: arn:aws:globalaccelerator::123456789012:accelerator/old/listener/old
    service: chat
    client_group: world
    endpoint_groups:
      us-east: us-east-2
# trailing comment
"""


def out(value: object, sensitive: bool = False) -> dict[str, object]:
    return {"value": value, "type": "string", "sensitive": sensitive}


GROUPS = {"us-east": "us-east-1", "eu-west": "eu-west-1"}
OUTPUTS = {
    "route53": out({"zone": "llm.example.com", "owner": "prod"}),
    "global_accelerator": out({"listener_arn": ARN, "endpoint_groups": GROUPS}),
    "buckets": out({"us-east": "s3://weights-us-east", "eu-west": "s3://weights-eu-west"}),
    "role_arn": out("arn:aws:iam::123456789012:role/llm-prod"),
}


def fill(outputs: dict[str, object], text: str = POLICY) -> tuple[str, str, tuple[str, ...], list[str]]:
    filled = fill_policy(text, "p.yaml", parse_outputs(json.dumps(outputs).encode()))
    return filled.text, filled.diff, filled.notes, [str(p) for p in filled.problems]


def test_every_output_lands_where_the_table_says_and_the_rest_of_the_file_is_kept() -> None:
    text, _, notes, problems = fill(OUTPUTS)
    assert problems == [] and notes == ("output 'role_arn' has no place in a policy: ignored",)
    policy = parse_policy(text)
    assert [r.bucket for r in policy.regions] == ["s3://weights-us-east", "s3://weights-eu-west"]
    (r53,) = policy.providers.route53_list
    assert (r53.zone, r53.owner) == ("llm.example.com", "prod")
    (ga,) = policy.providers.global_accelerator_list
    assert ga.listener_arn == ARN
    assert ga.endpoint_groups == {"us-east": "us-east-1", "eu-west": "eu-west-1"}
    for comment in (
        "# Two regions",
        "# the big one",
        "# block style",
        "# the zone terraform made",
        "# trailing",
    ):
        assert comment in text
    # Only the values that change moved: every other line is byte for byte what was written.
    old, new = POLICY.splitlines(), text.splitlines()
    assert [line for line in old if line not in new] == [
        '  - {name: us-east, endpoint: "http://10.1.0.10:8000", jurisdiction: US}  # the big one',
        "    bucket: s3://old-eu-bucket",
        "    zone: example.com   # the zone terraform made",
        "    listener_arn: arn:aws:globalaccelerator::123456789012:accelerator/old/listener/old",
        "      us-east: us-east-2",
    ]


def test_cloud_dns_is_added_where_missing_and_validation_names_what_terraform_cannot_know() -> None:
    no_accelerator = POLICY[: POLICY.index("  global_accelerator:")]
    outputs = {"cloud_dns": out({"project": "my-llm-project", "managed_zone": "llm-zone", "owner": "prod"})}
    _, diff, _, problems = fill(outputs, no_accelerator)
    added = "  cloud_dns: {project: my-llm-project, managed_zone: llm-zone, owner: prod}"
    assert diff.endswith(f"+{added}\n")
    assert problems == []
    accelerator = {"global_accelerator": out({"listener_arn": ARN, "endpoint_groups": GROUPS})}
    _, _, _, problems = fill(accelerator, no_accelerator)
    line = len(no_accelerator.splitlines()) + 1
    assert problems == [
        f"p.yaml:{line}:23: providers.global_accelerator.service: required field is missing",
        f"p.yaml:{line}:23: providers.global_accelerator.client_group: required field is missing",
    ]


def test_a_hosted_zone_id_replaces_the_zone_name_and_back() -> None:
    by_id = {"route53": out({"hosted_zone_id": "Z1D633PJN98FT9", "owner": "prod"})}
    text, _, _, problems = fill(by_id)
    assert "    hosted_zone_id: Z1D633PJN98FT9   # the zone terraform made" in text.splitlines()
    assert problems == [] and parse_policy(text).providers.route53_list[0].zone is None
    back, _, _, problems = fill({"route53": out({"zone": "example.com"})}, text)
    assert back == POLICY and problems == []


def test_a_null_output_or_field_changes_nothing() -> None:
    outputs = {"global_accelerator": out(None), "route53": out({"zone": None, "hosted_zone_id": None})}
    text, _, notes, problems = fill(outputs)
    assert text == POLICY and problems == []
    assert notes == ("output global_accelerator is null (terraform made none): left as is",)


def test_a_policy_already_matching_gives_no_diff() -> None:
    text, diff, _, _ = fill(OUTPUTS)
    assert diff.startswith("--- p.yaml\n+++ p.yaml (from terraform)\n")
    assert fill(OUTPUTS, text)[1] == ""


def test_unknown_outputs_regions_and_lists_of_instances_are_noted_not_used() -> None:
    two_zones = POLICY.replace(
        "  route53:\n    zone: example.com   # the zone terraform made\n    owner: prod\n",
        "  route53:\n    - {zone: llm.example.com, owner: a}\n    - {zone: chat.llm.example.com, owner: b}\n",
    )
    outputs = {
        "route53": out({"zone": "llm.example.com", "ttl": "60"}),
        "vpc_id": out("vpc-1"),
        "buckets": out({"mars": "s3://weights-mars"}),
    }
    text, diff, notes, problems = fill(outputs, two_zones)
    assert diff == "" and text == two_zones and problems == []
    assert notes == (
        "output 'vpc_id' has no place in a policy: ignored",
        "output route53: field 'ttl' has no place in providers.route53: ignored",
        "providers.route53 lists 2 instances; terraform describes one: left as is, edit it by hand",
        "output buckets: region 'mars' is not in the policy: ignored",
    )


@pytest.mark.parametrize(
    "value", ["plain-name", "no", "1e3", "null", "s3://b/p", "a: b", "#x", 'it\'s "quoted"', "ünï"]
)
def test_a_written_value_reads_back_as_the_same_string(value: str) -> None:
    assert yaml.safe_load(f"k: {scalar(value)}") == {"k": value}
    assert yaml.safe_load(f"k: {{a: {scalar(value)}}}") == {"k": {"a": value}}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"{not json", "not JSON from `terraform output -json`"),
        (b"[1, 2]", "expected a JSON object of outputs"),
        (b'{"zone": "llm.example.com"}', "output 'zone' is not"),
        (b"[" * 100_000, "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b" " * (MAX_DOCUMENT_BYTES + 1), "byte cap"),
    ],
)
def test_unusable_outputs_are_refused_in_words(data: bytes, says: str) -> None:
    with pytest.raises(OutputsError) as caught:
        parse_outputs(data, "o.json")
    assert says in str(caught.value) and str(caught.value).startswith("o.json: ")


def write(tmp_path: Path, outputs: dict[str, object], policy: str = POLICY) -> tuple[Path, Path]:
    (tmp_path / "o.json").write_text(json.dumps(outputs))
    (tmp_path / "p.yaml").write_text(policy)
    (tmp_path / "p.yaml").chmod(0o640)
    return tmp_path / "o.json", tmp_path / "p.yaml"


def test_cli_shows_the_diff_and_writes_only_with_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs, policy = write(tmp_path, OUTPUTS)
    assert main(["policy", "from-terraform", str(outputs), "--into", str(policy)]) == 0
    shown = capsys.readouterr()
    assert (
        '+  - {name: us-east, endpoint: "http://10.1.0.10:8000", jurisdiction: US, bucket: "s3://weights-us-east"}  # the big one'
        in shown.out.splitlines()
    )
    assert "not written (pass --write)" in shown.err
    assert policy.read_text() == POLICY
    assert main(["policy", "from-terraform", str(outputs), "--into", str(policy), "--write"]) == 0
    assert parse_policy(policy.read_text()).regions[1].bucket == "s3://weights-eu-west"
    assert policy.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "p.yaml"]


def test_cli_never_prints_a_sensitive_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs, policy = write(
        tmp_path,
        {**OUTPUTS, "global_accelerator": out({"listener_arn": ARN, "endpoint_groups": GROUPS}, True)},
    )
    assert main(["policy", "from-terraform", str(outputs), "--into", str(policy), "--write"]) == 0
    assert main(["policy", "from-terraform", str(outputs)]) == 0
    shown = capsys.readouterr()
    assert ARN not in shown.out + shown.err
    assert '+    listener_arn: "(sensitive)"' in shown.out.splitlines()
    assert parse_policy(policy.read_text()).providers.global_accelerator_list[0].listener_arn == ARN
    # An invalid sensitive value is also kept out of the validation messages that quote it.
    outputs, policy = write(tmp_path, {"global_accelerator": out({"listener_arn": "secret-arn-value"}, True)})
    assert main(["policy", "from-terraform", str(outputs), "--into", str(policy)]) == 1
    shown = capsys.readouterr()
    assert "secret-arn-value" not in shown.out + shown.err and "listener_arn" in shown.err


def test_cli_refuses_an_invalid_result_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs, policy = write(tmp_path, {"buckets": out({"eu-west": "ftp://nope"})})
    assert main(["policy", "from-terraform", str(outputs), "--into", str(policy), "--write"]) == 1
    err = capsys.readouterr().err
    assert f"{policy}:8:13: regions.1.bucket: must be a bucket URL" in err
    assert "not written: the result does not validate" in err
    assert policy.read_text() == POLICY


def test_cli_exits_2_on_outputs_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "o.json").write_text("Outputs:\n\nzone = llm.example.com\n")  # `terraform output`, not -json
    assert main(["policy", "from-terraform", str(tmp_path / "o.json")]) == 2
    assert "not JSON from `terraform output -json`" in capsys.readouterr().err
    assert main(["policy", "from-terraform", str(tmp_path / "missing.json")]) == 2


MINIMAL = """\
version: 1
regions: [{name: us-east, endpoint: "http://10.1.0.10:8000", jurisdiction: US}]
client_groups: [{name: world, allowed_jurisdictions: [US]}]
default_client_group: world
services: [{name: chat, dns_name: chat.llm.example.com, regions: [us-east]}]
"""


@pytest.mark.parametrize(
    ("providers", "written"),
    [
        ("", "providers: {route53: {zone: llm.example.com}}"),
        ("providers:\n", "providers: {route53: {zone: llm.example.com}}"),
        ("providers: {}\n", "providers: {route53: {zone: llm.example.com}}"),
        ("providers: {memory: true}\n", "providers: {memory: true, route53: {zone: llm.example.com}}"),
        ("providers:\n  memory: true  # why\n", "  memory: true  # why\n  route53: {zone: llm.example.com}"),
    ],
)
def test_a_provider_the_policy_lacks_is_inserted_whatever_the_shape_around_it(
    providers: str, written: str
) -> None:
    text, _, _, problems = fill({"route53": out({"zone": "llm.example.com"})}, MINIMAL + providers)
    assert text.endswith(written + "\n")
    assert [p.split(": ", 1)[1] for p in problems] == ["providers.route53.owner: required field is missing"]


def test_a_value_written_through_an_alias_is_not_edited() -> None:
    # Replacing `*y` would change every place the anchor is used, or break the document.
    policy = "y: &y example.com\n" + POLICY.replace("zone: example.com", "zone: *y")
    with pytest.raises(InvalidInput, match=r"providers\.route53\.zone is not a plain value"):
        fill({"route53": out({"zone": "llm.example.com"})}, policy)


EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"


@pytest.mark.parametrize(
    ("policy", "buckets"),
    [
        (
            "two-region.yaml",
            {
                "us-east": "s3://llm-prod-weights-us-east-1/models",
                "eu-west": "s3://llm-prod-weights-eu-west-1/models",
            },
        ),
        (
            "eu-residency.yaml",
            {
                "eu-west": "s3://llm-eu-weights-eu-west-1/models",
                "eu-central": "s3://llm-eu-weights-eu-central-1/models",
                "eu-nl": "gs://llm-eu-weights-eu-nl/models",
            },
        ),
    ],
)
def test_the_example_policies_match_their_terraform_examples(policy: str, buckets: dict[str, str]) -> None:
    """Outputs as terraform/examples/* name things with their default variables: only the zone's id, which
    only an apply knows, is new to the policy."""
    text = (EXAMPLES / policy).read_text()
    owner = parse_policy(text).providers.route53_list[0].owner
    outputs = {
        "route53": out({"hosted_zone_id": "Z0123456789ABCDEFGHIJ", "owner": owner}),
        "buckets": out(buckets),
        "global_accelerator": out(None),
        "name_servers": out(["ns-1.awsdns-01.org"]),
        "role_arn": out("arn:aws:iam::123456789012:role/x"),
    }
    _, diff, _, problems = fill(outputs, text)
    assert problems == []
    changed = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    assert [line.split("#")[0].strip() for line in changed] == [
        f"-    zone: {parse_policy(text).providers.route53_list[0].zone}",
        "+    hosted_zone_id: Z0123456789ABCDEFGHIJ",
    ]


def test_cli_reads_the_outputs_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, policy = write(tmp_path, {})
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps(OUTPUTS).encode())))
    assert main(["policy", "from-terraform", "-", "--into", str(policy), "--write"]) == 0
    assert parse_policy(policy.read_text()).providers.route53_list[0].zone == "llm.example.com"
    assert "written" in capsys.readouterr().err


def test_every_string_of_a_sensitive_output_is_hidden() -> None:
    deep: object = "bottom-secret"
    for _ in range(5):
        deep = [{"x": deep}]
    outputs = parse_outputs(
        json.dumps(
            {
                "a": {"value": {"k": ["s3cr3t", deep]}, "sensitive": True},
                "b": {"value": "x-plain"},
                "c": out("shown"),
            }
        ).encode()
    )
    hidden = secrets(outputs)
    assert hidden == {"s3cr3t", "bottom-secret", "x-plain"}  # b has no flag: it counts as sensitive
    assert redact("s3cr3t bottom-secret x-plain shown", hidden) == "(sensitive) (sensitive) (sensitive) shown"
