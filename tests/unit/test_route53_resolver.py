"""The Route 53 answer model in tests/fakes/route53_resolver.py, rule by rule."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from tests.fakes.route53_resolver import Answer, Location, resolve

SERVICE = "chat.llm.example.com."
EU_SET = "eu.chat.llm.example.com."
ANY_SET = "any.chat.llm.example.com."
PARIS = Location("EU", "FR")
LONDON = Location("EU", "GB")
NEW_YORK = Location("NA", "US", "NY")
TOKYO = Location("AS", "JP")
NOWHERE = Location()  # an address Route 53 cannot place


def plain(name: str, *values: str, rtype: str = "A", **routing: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "Type": rtype,
        "TTL": 60,
        "ResourceRecords": [{"Value": value} for value in values],
        **routing,
    }


def alias(name: str, target: str, **routing: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "Type": "A",
        "AliasTarget": {"HostedZoneId": "Z1", "DNSName": target, "EvaluateTargetHealth": True},
        **routing,
    }


def weighted(name: str, region: str, weight: int, *values: str) -> dict[str, Any]:
    return plain(name, *values, SetIdentifier=region, Weight=weight)


def geo(record: dict[str, Any], ident: str, **place: str) -> dict[str, Any]:
    return {**record, "SetIdentifier": ident, "GeoLocation": place}


def one(*values: str) -> dict[frozenset[str], Fraction]:
    return {frozenset(values): Fraction(1)}


# The tree the Route 53 provider builds: geolocation records at the service name alias into one weighted
# set per client group.
EU_WEIGHTS = [weighted(EU_SET, "eu-west", 3, "192.0.2.1"), weighted(EU_SET, "eu-central", 1, "192.0.2.2")]
ANY_WEIGHTS = [weighted(ANY_SET, "us-east", 1, "198.51.100.1"), weighted(ANY_SET, "eu-west", 1, "192.0.2.1")]
TREE = [
    geo(alias(SERVICE, EU_SET), "eu", ContinentCode="EU"),
    geo(alias(SERVICE, EU_SET), "eu-gb", CountryCode="GB"),
    geo(alias(SERVICE, ANY_SET), "default", CountryCode="*"),
    *EU_WEIGHTS,
    *ANY_WEIGHTS,
]
EU_DISTRIBUTION = {
    frozenset({"192.0.2.1"}): Fraction(3, 4),
    frozenset({"192.0.2.2"}): Fraction(1, 4),
}
ANY_DISTRIBUTION = {
    frozenset({"198.51.100.1"}): Fraction(1, 2),
    frozenset({"192.0.2.1"}): Fraction(1, 2),
}


@pytest.mark.parametrize(
    ("records", "where", "expected"),
    [
        pytest.param(
            [plain(SERVICE, "192.0.2.1", "192.0.2.2")], TOKYO, one("192.0.2.1", "192.0.2.2"), id="plain"
        ),
        pytest.param(
            [weighted(SERVICE, "a", 1, "192.0.2.1"), weighted(SERVICE, "b", 255, "192.0.2.2")],
            TOKYO,
            {frozenset({"192.0.2.1"}): Fraction(1, 256), frozenset({"192.0.2.2"}): Fraction(255, 256)},
            id="weight-over-sum",
        ),
        pytest.param(
            [weighted(SERVICE, "a", 0, "192.0.2.1"), weighted(SERVICE, "b", 7, "192.0.2.2")],
            TOKYO,
            one("192.0.2.2"),
            id="weight-0-never-answered",
        ),
        pytest.param(
            [weighted(SERVICE, "a", 0, "192.0.2.1"), weighted(SERVICE, "b", 0, "192.0.2.2")],
            TOKYO,
            {frozenset({"192.0.2.1"}): Fraction(1, 2), frozenset({"192.0.2.2"}): Fraction(1, 2)},
            id="all-weights-0-answer-all-equally",
        ),
        pytest.param(
            [weighted(SERVICE, "a", 2, "192.0.2.1"), weighted(SERVICE, "b", 2, "192.0.2.1")],
            TOKYO,
            one("192.0.2.1"),
            id="same-answer-merged",
        ),
        pytest.param(TREE, PARIS, EU_DISTRIBUTION, id="geo-continent-alias-into-weighted"),
        pytest.param(TREE, LONDON, EU_DISTRIBUTION, id="geo-country-alias-into-weighted"),
        pytest.param(TREE, TOKYO, ANY_DISTRIBUTION, id="geo-default"),
        pytest.param(TREE, NOWHERE, ANY_DISTRIBUTION, id="geo-unplaced-client-gets-default"),
        pytest.param(
            [
                geo(plain(SERVICE, "192.0.2.1"), "eu", ContinentCode="EU"),
                geo(plain(SERVICE, "192.0.2.9"), "fr", CountryCode="FR"),
                geo(plain(SERVICE, "198.51.100.1"), "any", CountryCode="*"),
            ],
            PARIS,
            one("192.0.2.9"),
            id="geo-country-beats-continent",
        ),
        pytest.param(
            [
                geo(plain(SERVICE, "198.51.100.1"), "us", CountryCode="US"),
                geo(plain(SERVICE, "198.51.100.7"), "us-ny", CountryCode="US", SubdivisionCode="NY"),
            ],
            NEW_YORK,
            one("198.51.100.7"),
            id="geo-state-beats-country",
        ),
        pytest.param(
            [geo(plain(SERVICE, "192.0.2.1"), "eu", ContinentCode="EU")],
            TOKYO,
            one(),
            id="geo-no-match-no-default-is-nodata",
        ),
        pytest.param(
            [
                alias(SERVICE, EU_SET, SetIdentifier="eu", Weight=1),
                alias(SERVICE, ANY_SET, SetIdentifier="any", Weight=3),
                *EU_WEIGHTS,
                *ANY_WEIGHTS,
            ],
            TOKYO,
            {
                frozenset({"192.0.2.1"}): Fraction(1, 4) * Fraction(3, 4) + Fraction(3, 4) * Fraction(1, 2),
                frozenset({"192.0.2.2"}): Fraction(1, 4) * Fraction(1, 4),
                frozenset({"198.51.100.1"}): Fraction(3, 4) * Fraction(1, 2),
            },
            id="weighted-aliases-mix-their-targets",
        ),
    ],
)
def test_distribution(
    records: list[dict[str, Any]], where: Location, expected: dict[frozenset[str], Fraction]
) -> None:
    answer = resolve(records, SERVICE, where)
    assert answer.rcode == "NOERROR"
    assert answer.distribution == expected
    assert sum(answer.distribution.values()) == 1
    assert answer.addresses == frozenset().union(*expected)


def test_all_weights_zero_is_not_failing_closed() -> None:
    """Zeroing a group's weighted set hands its clients every address of the set, other jurisdictions'
    too: the reason the provider must fail closed some other way."""
    drained = [{**record, "Weight": 0} for record in ANY_WEIGHTS]
    records = [geo(alias(SERVICE, ANY_SET), "default", CountryCode="*"), *drained]
    assert resolve(records, SERVICE, TOKYO).addresses == {"198.51.100.1", "192.0.2.1"}


def test_names_are_case_and_dot_insensitive() -> None:
    records = [plain("Chat.LLM.example.com", "192.0.2.1")]
    assert resolve(records, "chat.llm.EXAMPLE.com.", TOKYO).addresses == {"192.0.2.1"}


def test_nxdomain_and_nodata() -> None:
    records = [plain(SERVICE, "v=1", rtype="TXT")]
    assert resolve(records, "other.llm.example.com", TOKYO) == Answer("NXDOMAIN", one())
    nodata = resolve(records, SERVICE, TOKYO)
    assert nodata.nodata
    assert nodata.rcode == "NOERROR"
    assert not resolve(records, SERVICE, TOKYO, rtype="TXT").nodata


@pytest.mark.parametrize(
    ("records", "refusal"),
    [
        pytest.param(
            [weighted(SERVICE, "a", 1, "192.0.2.1"), geo(plain(SERVICE, "192.0.2.2"), "b", CountryCode="*")],
            "mixed routing policies",
            id="mixed-policies",
        ),
        pytest.param(
            [weighted(SERVICE, "a", 1, "192.0.2.1"), plain(SERVICE, "192.0.2.2")],
            "mixed routing policies",
            id="simple-beside-weighted",
        ),
        pytest.param([plain(SERVICE, "192.0.2.1"), plain(SERVICE, "192.0.2.2")], "simple", id="two-simple"),
        pytest.param([weighted(SERVICE, "a", 300, "192.0.2.1")], "outside 0..255", id="weight-300"),
        pytest.param([weighted(SERVICE, "a", -1, "192.0.2.1")], "outside 0..255", id="weight-negative"),
        pytest.param(
            [weighted(SERVICE, "a", 1, "192.0.2.1"), weighted(SERVICE, "a", 1, "192.0.2.2")],
            "repeated",
            id="repeated-set-identifier",
        ),
        pytest.param(
            [
                geo(plain(SERVICE, "192.0.2.1"), "a", ContinentCode="EU"),
                geo(plain(SERVICE, "192.0.2.2"), "b", ContinentCode="EU"),
            ],
            "two geolocation records",
            id="repeated-place",
        ),
        pytest.param([alias(SERVICE, "elsewhere.example.org")], "not in the zone", id="alias-outside-zone"),
        pytest.param(
            [alias(SERVICE, "txt.llm.example.com"), plain("txt.llm.example.com", "v=1", rtype="TXT")],
            "not in the zone",
            id="alias-to-a-name-without-the-type",
        ),
        pytest.param(
            [alias(SERVICE, "loop.llm.example.com"), alias("loop.llm.example.com.", SERVICE)],
            "alias chain",
            id="alias-loop",
        ),
        pytest.param(
            [plain(SERVICE, "192.0.2.1", SetIdentifier="a", Failover="PRIMARY")],
            "not modelled",
            id="failover",
        ),
    ],
)
def test_refuses_what_route53_refuses_or_what_is_not_modelled(
    records: list[dict[str, Any]], refusal: str
) -> None:
    with pytest.raises(ValueError, match=refusal):
        resolve(records, SERVICE, LONDON)
