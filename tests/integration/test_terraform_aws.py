"""terraform/modules/aws and terraform/examples/two-region: formatted, valid with the provider from the local
mirror, clean under checkov, and applied against moto_server -- after which the control plane writes its
records into the zone terraform made and syncs weights into its buckets, and terraform destroys it all."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from chaos.simregion import SimFleet
from tests.fakes.moto import listing, route53_client
from tests.fakes.terraform import (  # noqa: F401 - fixtures
    Terraform,
    TerraformFailed,
    checkov_fixture,
    terraform_fixture,
    terraform_fmt_fixture,
    terraform_tree,
)
from tests.integration.daemon_helpers import DNS_NAME, policy_data
from tests.integration.daemon_helpers import write_policy as write_policy_data
from tests.integration.test_cli import arun_cli
from tests.integration.weights_helpers import FILES, MODEL, VERSION, s3_bucket, seed, write_policy

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
EXAMPLE = "examples/two-region"
ZONE = DNS_NAME.split(".", 1)[1]  # the example serves chat.ZONE
PRINCIPAL = "arn:aws:iam::123456789012:role/daemon-host"
# Every service moto_server emulates that the example's resources call.
MOTO_SERVICES = ("globalaccelerator", "iam", "route53", "s3", "sts")


def test_terraform_files_are_fmt_clean(terraform_fmt: Terraform) -> None:
    assert list((TERRAFORM / "modules/aws").glob("*.tf")) and list((TERRAFORM / EXAMPLE).glob("*.tf"))
    terraform_fmt.run(ROOT, "fmt", "-check", "-recursive", "-diff", "-no-color", str(TERRAFORM))


@pytest.mark.parametrize("where", ["modules/aws", "modules/aws/bucket", EXAMPLE])
def test_init_and_validate_offline(terraform: Terraform, tmp_path: Path, where: str) -> None:
    workdir = terraform_tree(TERRAFORM, tmp_path) / where
    terraform.init(workdir)
    report = json.loads(terraform.run(workdir, "validate", "-json", "-no-color", check=False))
    assert report["valid"], report["diagnostics"]
    assert report["warning_count"] == 0, report["diagnostics"]


def test_the_module_refuses_a_zone_given_twice(terraform: Terraform, tmp_path: Path) -> None:
    workdir = terraform_tree(TERRAFORM, tmp_path) / "modules/aws"
    terraform.init(workdir)
    variables = {
        "name": "llm-prod",
        "zone_name": "llm.example.com",
        "zone_id": "Z1D633PJN98FT9",
        "owner": "prod",
        "service_dns_names": ["chat.llm.example.com"],
        "buckets": {"eu-west": "s3://llm-weights-eu-west-1/models"},
        "trusted_principal_arns": [PRINCIPAL],
    }
    (workdir / "test.auto.tfvars.json").write_text(json.dumps(variables))
    with pytest.raises(TerraformFailed, match="Give exactly one of zone_name"):
        terraform.run(workdir, "plan", "-refresh=false", "-no-color", "-var", "force_destroy=true")


def test_checkov_finds_no_failed_check(checkov: Path) -> None:
    done = subprocess.run(
        # Not --quiet: that drops the skipped checks, whose written reasons are checked here too.
        [checkov, "-d", str(TERRAFORM), "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    reports = json.loads(done.stdout)
    [report] = reports if isinstance(reports, list) else [reports]
    assert report["check_type"] == "terraform"
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["resource_count"] >= 15  # it read the modules, not an empty tree
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason.split()) >= 5, (
            f"{skipped['check_id']} on {skipped['resource']} has no written reason"
        )


def moto_override(url: str) -> str:
    """Terraform override file pointing the example's three aws providers at moto_server; the example
    itself stays as a team would apply it."""
    endpoints = "".join(f'    {service} = "{url}"\n' for service in MOTO_SERVICES)
    blocks = []
    for alias in (None, "us_east", "eu_west"):
        blocks.append(
            'provider "aws" {\n' + (f'  alias = "{alias}"\n' if alias else "") + '  access_key = "testing"\n'
            '  secret_key = "testing"\n'
            "  skip_credentials_validation = true\n"
            "  skip_metadata_api_check = true\n"
            "  skip_requesting_account_id = true\n"
            # Virtual-hosted addressing would ask DNS for BUCKET.127.0.0.1.
            "  s3_use_path_style = true\n"
            f"  endpoints {{\n{endpoints}  }}\n"
            "}\n"
        )
    return "\n".join(blocks)


def s3(url: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("s3", endpoint_url=url)


def iam(url: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("iam", endpoint_url=url)


def check_bucket(client: Any, url: str) -> None:
    """The bucket behind a policy URL is hardened as docs/weights.md asks."""
    name, prefix = url.removeprefix("s3://").split("/", 1)
    assert client.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    [rule] = client.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    block = client.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    [deny] = json.loads(client.get_bucket_policy(Bucket=name)["Policy"])["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    rules = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]}
    assert rules["expire-old-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert rules["abort-abandoned-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7
    assert rules["expire-old-versions"]["Filter"]["Prefix"] == f"{prefix}/"
    assert rules["abort-abandoned-uploads"]["Filter"]["Prefix"] == ""


def check_role(client: Any, zone_id: str, buckets: dict[str, str]) -> None:
    """The role may write only its zone's service names and its buckets' prefixes."""
    role = client.get_role(RoleName="llm-prod-control-plane")["Role"]
    [trusted] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trusted["Principal"] == {"AWS": PRINCIPAL}
    document = client.get_role_policy(RoleName="llm-prod-control-plane", PolicyName="control-plane")
    statements = {s["Sid"]: s for s in document["PolicyDocument"]["Statement"]}
    write = statements["Route53WriteOwnNames"]
    assert write["Resource"] == f"arn:aws:route53:::hostedzone/{zone_id}"
    names = write["Condition"]["ForAllValues:StringLike"][
        "route53:ChangeResourceRecordSetsNormalizedRecordNames"
    ]
    assert sorted(names) == sorted([DNS_NAME, f"_cp.{DNS_NAME}", f"*.prod._cp.{DNS_NAME}"])
    objects = statements["WeightsReadWrite"]["Resource"]
    expected = [f"arn:aws:s3:::{u.removeprefix('s3://')}/*" for u in buckets.values()]
    assert sorted(objects if isinstance(objects, list) else [objects]) == sorted(expected)


def test_the_accelerator_plans_one_endpoint_group_per_region(
    terraform: Terraform, moto_server: str, tmp_path: Path
) -> None:
    """moto has no Global Accelerator to apply to; the plan (nothing read, nothing called) still shows what
    the module would make of the example's endpoints."""
    workdir = terraform_tree(TERRAFORM, tmp_path) / EXAMPLE
    (workdir / "moto_override.tf").write_text(moto_override(moto_server))
    endpoints = {
        "us-east": ["arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/a/1"],
        "eu-west": ["arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/net/b/2"],
    }
    tfvars = {"trusted_principal_arns": [PRINCIPAL], "accelerator_endpoints": endpoints}
    (workdir / "test.auto.tfvars.json").write_text(json.dumps(tfvars))
    terraform.init(workdir)
    terraform.run(workdir, "plan", "-refresh=false", "-input=false", "-no-color", "-out=plan")
    plan = json.loads(terraform.run(workdir, "show", "-json", "plan"))
    made = {
        r["address"]: r["change"]["after"]
        for r in plan["resource_changes"]
        if "globalaccelerator" in r["type"]
    }
    groups = {k: v for k, v in made.items() if ".aws_globalaccelerator_endpoint_group." in k}
    assert {v["endpoint_group_region"] for v in groups.values()} == {"us-east-1", "eu-west-1"}
    assert {v["endpoint_configuration"][0]["endpoint_id"] for v in groups.values()} == {
        e for ids in endpoints.values() for e in ids
    }
    [listener] = [v for k, v in made.items() if ".aws_globalaccelerator_listener." in k]
    assert listener["protocol"] == "TCP" and listener["port_range"] == [{"from_port": 443, "to_port": 443}]
    assert len(made) == 4  # accelerator, listener, two groups


async def test_apply_against_moto_then_the_plane_drives_what_it_made(
    terraform: Terraform, on_moto: str, fleet: SimFleet, tmp_path: Path
) -> None:
    workdir = terraform_tree(TERRAFORM, tmp_path) / EXAMPLE
    (workdir / "moto_override.tf").write_text(moto_override(on_moto))
    tfvars = {"zone_name": ZONE, "trusted_principal_arns": [PRINCIPAL], "force_destroy": True}
    (workdir / "test.auto.tfvars.json").write_text(json.dumps(tfvars))

    def tf(*args: str) -> str:
        return terraform.run(workdir, *args, "-no-color", timeout=240.0)

    # Terraform blocks; off the loop, so the simulated regions keep answering probes meanwhile.
    await asyncio.to_thread(terraform.init, workdir)
    await asyncio.to_thread(tf, "apply", "-auto-approve", "-input=false")
    outputs = {k: v["value"] for k, v in json.loads(await asyncio.to_thread(tf, "output", "-json")).items()}

    zone_id = outputs["route53"]["hosted_zone_id"]
    assert outputs["route53"]["owner"] == "prod" and outputs["zone_name"] == ZONE
    assert route53_client(on_moto).get_hosted_zone(Id=zone_id)["HostedZone"]["Name"] == f"{ZONE}."
    buckets: dict[str, str] = outputs["buckets"]
    assert set(buckets) == {"us-east", "eu-west"} and "global_accelerator" not in outputs  # null: left out
    client = s3(on_moto)
    for region, url in buckets.items():
        check_bucket(client, url)
        location = client.get_bucket_location(Bucket=url.split("/")[2])["LocationConstraint"]
        assert (location or "us-east-1") == {"us-east": "us-east-1", "eu-west": "eu-west-1"}[region]
    check_role(iam(on_moto), zone_id, buckets)

    # The plane routes in the zone terraform made, found by the id the outputs give.
    data = policy_data(fleet)
    data["providers"]["route53"] = {**outputs["route53"], "endpoint_url": on_moto}
    policy = tmp_path / "policy.yaml"
    write_policy_data(policy, data)
    applied = await arun_cli(
        "apply", "--policy", str(policy), "--state-dir", str(tmp_path / "state"), "--yes", "--json", within=60
    )
    assert applied.code == 0, applied.err
    written = {r["Name"].rstrip(".") for r in listing(on_moto, zone_id) if r["Type"] == "A"}
    assert DNS_NAME in written

    # And syncs weights into the buckets terraform made, by the URLs the outputs give. moto evaluates a bucket
    # policy's conditions without the request's context, so the TLS-only Deny (checked above) would match
    # every request, TLS or not; real S3 knows aws:SecureTransport.
    for url in buckets.values():
        client.delete_bucket_policy(Bucket=url.split("/")[2])
    source = s3_bucket("models-origin", "us-east-1")
    await seed(source)
    sync_policy = write_policy(tmp_path, source, eu=buckets["eu-west"], us=buckets["us-east"])
    synced = await arun_cli("sync", "--policy", str(sync_policy), within=60)
    assert synced.code == 0, synced.out + synced.err
    for url in buckets.values():
        name, prefix = url.removeprefix("s3://").split("/", 1)
        current = client.get_object(Bucket=name, Key=f"{prefix}/{MODEL}/CURRENT")["Body"].read()
        assert current.decode().strip() == VERSION
        for path, body in FILES.items():
            key = f"{prefix}/{MODEL}/{VERSION}/{path}"
            assert client.get_object(Bucket=name, Key=key)["Body"].read() == body

    # No refresh: the state is what apply left (bar the bucket policies), and S3 lifecycle reads wait for
    # the rules to hold still, seconds each.
    await asyncio.to_thread(tf, "destroy", "-auto-approve", "-input=false", "-refresh=false")
    zones = route53_client(on_moto).list_hosted_zones()["HostedZones"]
    assert [z for z in zones if z["Id"].endswith(zone_id)] == []
    remaining = {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert remaining == {"models-origin"}
    with pytest.raises(ClientError, match="NoSuchEntity"):
        iam(on_moto).get_role(RoleName="llm-prod-control-plane")
