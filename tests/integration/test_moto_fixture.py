"""The moto_server fixture: a real Route 53 API on loopback, emptied between tests."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from tests.fakes.moto import moto_fixture, moto_server_fixture, reset_moto, route53_client  # noqa: F401
from tests.fakes.route53_resolver import Location, resolve

pytestmark = pytest.mark.needs_binary("moto_server")


def _zone(url: str, name: str) -> str:
    client = route53_client(url)
    return client.create_hosted_zone(Name=name, CallerReference=name)["HostedZone"]["Id"]


def test_moto_answers_route53_writes_and_reads(moto: str) -> None:
    client = route53_client(moto)
    zone = _zone(moto, "llm.example.com")
    change = client.change_resource_record_sets(
        HostedZoneId=zone,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": "chat.llm.example.com",
                        "Type": "A",
                        "TTL": 60,
                        "SetIdentifier": "eu-west",
                        "Weight": 10,
                        "ResourceRecords": [{"Value": "192.0.2.1"}],
                    },
                }
            ]
        },
    )
    assert client.get_change(Id=change["ChangeInfo"]["Id"])["ChangeInfo"]["Status"] == "INSYNC"
    records = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    assert {"Name": "chat.llm.example.com.", "SetIdentifier": "eu-west", "Weight": 10}.items() <= next(
        r for r in records if r["Type"] == "A"
    ).items()


def test_reset_empties_every_zone(moto: str) -> None:
    _zone(moto, "a.example.com")
    _zone(moto, "b.example.com")
    reset_moto(moto)
    assert route53_client(moto).list_hosted_zones()["HostedZones"] == []


def test_client_needs_no_credentials_from_the_environment(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert route53_client(moto).list_hosted_zones()["HostedZones"] == []


def test_the_resolver_reads_records_as_moto_lists_them(moto: str) -> None:
    """The Route 53 answer model takes list_resource_record_sets' own shapes (trailing dots, AliasTarget)."""
    client = route53_client(moto)
    zone = _zone(moto, "llm.example.com")
    weighted_set = "eu.chat.llm.example.com"
    records: list[dict[str, Any]] = [
        {
            "Name": weighted_set,
            "Type": "A",
            "TTL": 60,
            "SetIdentifier": region,
            "Weight": weight,
            "ResourceRecords": [{"Value": address}],
        }
        for region, weight, address in (("eu-west", 3, "192.0.2.1"), ("eu-central", 1, "192.0.2.2"))
    ]
    records.append(
        {
            "Name": "chat.llm.example.com",
            "Type": "A",
            "SetIdentifier": "eu",
            "GeoLocation": {"ContinentCode": "EU"},
            "AliasTarget": {"HostedZoneId": zone, "DNSName": weighted_set, "EvaluateTargetHealth": False},
        }
    )
    client.change_resource_record_sets(
        HostedZoneId=zone,
        ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": r} for r in records]},  # type: ignore[typeddict-item]
    )
    listed = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    paris = resolve(listed, "chat.llm.example.com", Location("EU", "FR"))
    assert paris.distribution == {
        frozenset({"192.0.2.1"}): Fraction(3, 4),
        frozenset({"192.0.2.2"}): Fraction(1, 4),
    }
    assert resolve(listed, "chat.llm.example.com", Location("AS", "JP")).nodata
