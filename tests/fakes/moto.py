"""A real `moto_server` (AWS's APIs emulated over HTTP) for the tests, and boto3 clients for it.

Fixtures, registered where imported (`from tests.fakes.moto import moto_fixture, moto_server_fixture  #
noqa: F401`; the names differ from the fixtures' so that a test's `moto` parameter shadows no import):
- `moto_server` (session): one moto_server on a free loopback port for the whole run; its URL.
- `moto` (function): the same URL, with every emulated service emptied before the test.

`route53_client(url)` is a boto3 Route 53 client for it with dummy credentials, region us-east-1 and no
retries of botocore's own, so a test sees every error the API answers. moto accepts what Route 53 refuses
(duplicate CREATEs, weight 300, mixed routing policies at one name): it is the API's shape, not its rules.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

from chaos.emulators import EmulatorDidNotStart, moto_server
from tests.conftest import require_binary

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client

REQUEST_TIMEOUT = 5.0


def reset_moto(url: str) -> None:
    """Empty every service of the moto_server at `url` (zones, records, changes, ...)."""
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as reply:
        if reply.status != 200:
            raise RuntimeError(f"moto_server at {url} answered {reply.status} to a reset")


@pytest.fixture(scope="session", name="moto_server")
def moto_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require_binary("moto_server", "pip's moto[server], a dev dependency,")
    try:
        with moto_server(binary, tmp_path_factory.mktemp("moto") / "moto_server.log") as url:
            yield url
    except EmulatorDidNotStart as exc:
        pytest.fail(str(exc))


@pytest.fixture(name="moto")
def moto_fixture(moto_server: str) -> str:
    reset_moto(moto_server)
    return moto_server


def route53_client(url: str, max_attempts: int = 1) -> Route53Client:
    """A Route 53 client for the API at `url`: dummy credentials of its own (the process environment is
    neither read for them nor changed), us-east-1, and `max_attempts` tries per call (1: no retries)."""
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=REQUEST_TIMEOUT,
        read_timeout=REQUEST_TIMEOUT,
    )
    return session.client("route53", endpoint_url=url, config=config)


@pytest.fixture(name="aws_credentials")
def aws_credentials_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials through the SDK's standard chain, as production gets real ones; no host config."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def listing(url: str, zone_id: str) -> list[dict[str, Any]]:
    """Every record set of the zone as moto holds it, every page, read directly (no provider in between)."""
    client = route53_client(url)
    records: list[dict[str, Any]] = []
    args: dict[str, Any] = {"HostedZoneId": zone_id}
    while True:
        reply = client.list_resource_record_sets(**args)
        records += [dict(r) for r in reply["ResourceRecordSets"]]
        if not reply["IsTruncated"]:
            return records
        args.update(StartRecordName=reply["NextRecordName"], StartRecordType=reply["NextRecordType"])


@pytest.fixture(name="on_moto")
def on_moto_fixture(moto: str, aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The S3 SDK pointed at moto through AWS_ENDPOINT_URL, as emulators are reached."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    return moto
