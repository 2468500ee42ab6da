"""Terraform and checkov for the tests, offline: the providers come from a local filesystem mirror, never
the registry, and checkov lives in a venv of its own (it pins too much to share the project's).

Fixtures, registered where imported (`from tests.fakes.terraform import checkov_fixture, terraform_fixture,
terraform_fmt_fixture  # noqa: F401`):
- `terraform_fmt` (session): a `Terraform` that needs no provider (fmt); skips without the binary.
- `terraform` (session): a `Terraform` whose CLI config installs providers from the mirror only; skips
  without the binary or the mirror.
- `checkov` (session): the path of a checkov from a venv cached under ~/.cache/controlplane-tests/checkov,
  built once with pip; skips when pip cannot reach PyPI.

Issue 9's rule: these tests run where terraform and the mirror are present and skip with a clear reason
elsewhere, CI included. Every such skip's reason starts with `OPTIONAL_TOOL`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

OPTIONAL_TOOL = "issue 9: optional tool absent, skipped by rule"
AWS_PROVIDER = Path("registry.terraform.io/hashicorp/aws")
CHECKOV_HOME = Path.home() / ".cache/controlplane-tests/checkov"
PIP_TIMEOUT = 900.0  # checkov and its pinned dependencies: minutes on a slow mirror, once per machine


def mirror_candidates() -> list[Path]:
    """Where a machine image may carry a provider mirror, $TF_PLUGIN_MIRROR first."""
    configured = os.environ.get("TF_PLUGIN_MIRROR")
    return [
        *([Path(configured)] if configured else []),
        Path("/opt/tf-plugins"),
        Path.home() / ".terraform.d/plugins",
        Path("/usr/share/terraform/plugins"),
    ]


def find_mirror() -> Path | None:
    """The first candidate that holds some version of the AWS provider, or None."""
    for candidate in mirror_candidates():
        provider = candidate / AWS_PROVIDER
        if provider.is_dir() and any(provider.iterdir()):
            return candidate
    return None


def cli_config(mirror: Path) -> str:
    """A CLI config that installs registry.terraform.io/hashicorp/* from `mirror` and never goes online."""
    return (
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f'    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/*"]\n'
        "  }\n"
        "  direct {\n"
        '    exclude = ["registry.terraform.io/*/*"]\n'
        "  }\n"
        "}\n"
    )


class TerraformFailed(AssertionError):
    """A terraform command exited non-zero; the message carries its output."""


@dataclass(frozen=True, slots=True)
class Terraform:
    binary: str
    env: Mapping[str, str]

    def run(self, workdir: Path, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """`terraform ARGS` in `workdir`; its stdout. Non-zero exit raises TerraformFailed when `check`."""
        done = subprocess.run(
            [self.binary, *args],
            cwd=workdir,
            env=dict(self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise TerraformFailed(
                f"terraform {' '.join(args)} in {workdir} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def init(self, workdir: Path) -> None:
        self.run(workdir, "init", "-backend=false", "-input=false", "-no-color", timeout=180.0)


def terraform_env(config: Path | None, plugin_cache: Path | None = None) -> dict[str, str]:
    """The process environment with terraform made non-interactive, quiet and pointed at `config`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_") or k == "TF_PLUGIN_MIRROR"}
    env.update(TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1")
    env["TF_CLI_CONFIG_FILE"] = str(config) if config is not None else os.devnull
    if plugin_cache is not None:
        # Each init links the provider from here instead of copying its ~700 MB again.
        env["TF_PLUGIN_CACHE_DIR"] = str(plugin_cache)
    return env


def _terraform_binary() -> str:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip(f"{OPTIONAL_TOOL}: terraform is not on PATH")
    return binary


@pytest.fixture(scope="session", name="terraform_fmt")
def terraform_fmt_fixture() -> Terraform:
    return Terraform(_terraform_binary(), terraform_env(None))


@pytest.fixture(scope="session", name="terraform")
def terraform_fixture(tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    binary = _terraform_binary()
    mirror = find_mirror()
    if mirror is None:
        places = ", ".join(str(p) for p in mirror_candidates())
        pytest.skip(f"{OPTIONAL_TOOL}: no provider mirror holding {AWS_PROVIDER} in {places}")
    home = tmp_path_factory.mktemp("terraform")
    config = home / "terraform.rc"
    config.write_text(cli_config(mirror))
    cache = home / "plugin-cache"
    cache.mkdir()
    return Terraform(binary, terraform_env(config, cache))


def terraform_tree(source: Path, into: Path) -> Path:
    """A copy of the terraform/ tree to init in, so .terraform and lock files never land in the repo;
    examples reach modules by relative path, so the whole tree goes."""
    target = into / "terraform"
    shutil.copytree(
        source, target, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl")
    )
    return target


def _checkov_works(binary: Path) -> bool:
    if not binary.exists():
        return False
    done = subprocess.run([binary, "--version"], capture_output=True, timeout=120, check=False)
    return done.returncode == 0


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes: parallel sessions build the venv once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session", name="checkov")
def checkov_fixture() -> Path:
    venv = CHECKOV_HOME / "venv"
    binary = venv / "bin" / "checkov"
    with _locked(CHECKOV_HOME / ".lock"):
        if _checkov_works(binary):
            return binary
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
        done = subprocess.run(
            [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "checkov"],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
            check=False,
        )
        if done.returncode != 0 or not _checkov_works(binary):
            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(f"{OPTIONAL_TOOL}: pip could not install checkov from PyPI:\n{done.stderr[-2000:]}")
        return binary
