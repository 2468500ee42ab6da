"""terraform/modules/gcp and terraform/examples/eu-residency, checked offline: `terraform fmt`, checkov, and
`terraform validate` where a mirror carries the google provider (this machine's carries only AWS)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fakes.terraform import (  # noqa: F401
    OPTIONAL_TOOL,
    Terraform,
    checkov_fixture,
    mirror_candidates,
    terraform_fixture,
    terraform_fmt_fixture,
    terraform_tree,
)

ROOT = Path(__file__).resolve().parents[2] / "terraform"
GCP = ROOT / "modules" / "gcp"
EU = ROOT / "examples" / "eu-residency"
GOOGLE_PROVIDER = Path("registry.terraform.io/hashicorp/google")

# What the module promises (issue 9, item 2), as the checkov checks that prove it.
PROMISED = {
    ("CKV_GCP_29", "google_storage_bucket.weights"),  # uniform bucket-level access
    ("CKV_GCP_78", "google_storage_bucket.weights"),  # versioning
    ("CKV_GCP_114", "google_storage_bucket.weights"),  # public access prevention enforced
    ("CKV_GCP_16", "google_dns_managed_zone.this[0]"),  # DNSSEC on
    ("CKV_GCP_17", "google_dns_managed_zone.this[0]"),  # and not RSASHA1
    ("CKV_GCP_28", "google_storage_bucket_iam_member.weights"),  # not public
}


@pytest.mark.parametrize("folder", [GCP, EU], ids=["modules/gcp", "examples/eu-residency"])
def test_terraform_fmt_is_clean(terraform_fmt: Terraform, folder: Path) -> None:
    # check: a file fmt would change exits 3, a folder that is not there fails too.
    assert terraform_fmt.run(folder, "fmt", "-check", "-recursive", "-diff", "-no-color") == ""


def test_checkov_finds_nothing_and_every_skip_says_why(checkov: Path) -> None:
    done = subprocess.run(
        [checkov, "-d", GCP, "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = json.loads(done.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    for skipped in results["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment") or "") > 20, skipped["check_id"]
    passed = {(c["check_id"], c["resource"]) for c in results["passed_checks"]}
    assert passed >= PROMISED
