"""What Route 53 answers a client in a given place, from a zone's records as boto3 lists them.

`resolve(records, name, where)` takes the ResourceRecordSets of `list_resource_record_sets` (moto's or
real), a query name and type, and a `Location` (continent, country, optionally a US state), and returns
an `Answer`: every answer the client can get with nonzero probability, with its exact probability. A test
that checks residency asks `answer.addresses` of a client in each place; a test that checks weights asks
`answer.distribution`.

Each rule follows a statement of AWS's Route 53 documentation (Developer Guide, "Geolocation routing" and
"Weighted routing"; API Reference, ResourceRecordSet):
- Weighted: "Route 53 calculates the sum of the weights for the resource record sets that have the same
  combination of DNS name and type. Route 53 then responds to queries based on the ratio of a resource's
  weight to the total." A record of weight 0 is never answered, "However, if you set Weight to 0 for all
  resource record sets that have the same combination of DNS name and type, traffic is routed to all
  resources with equal probability." (The API Reference scopes the weight-0 sentence to weighted "but not
  weighted alias" records, for health checks; without health checks this model treats both alike.)
- Geolocation: "If you create separate resource record sets for overlapping geographic regions (for example,
  one resource record set for a continent and one for a country on the same continent), priority goes to
  the smallest geographic region." "The value * in the CountryCode element matches all geographic locations
  that aren't specified in other geolocation resource record sets that have the same values for the Name
  and Type elements", including IP addresses not mapped to a location. "If you don't create a * resource
  record set, Route 53 returns a 'no answer' response for queries from those locations": NOERROR with no
  record (NODATA), never the next less specific record.
- Alias: a query for an alias record is answered with the target record's answer, routing policy and
  all, evaluated for the same client; EvaluateTargetHealth is ignored (no health checks are modelled).
- A name with no record of any type is NXDOMAIN; a name that has records, but none of the query's type,
  is NODATA.

Route 53 refuses, and moto accepts, records that this resolver therefore refuses with ValueError rather than
answer something Route 53 never would: mixed routing policies (or a simple record beside routed ones)
at one name and type, two simple records there, a repeated SetIdentifier, a weight outside 0..255, two
geolocation records for one place, an alias to a name and type that are not in the zone ("Tried to
create an alias that targets ..., but that target was not found"). So an alias never answers NODATA. Not modelled: wildcard
names, CNAME chains, empty non-terminals, latency, failover and other policies (ValueError if met).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

Record = Mapping[str, Any]
Distribution = dict[frozenset[str], Fraction]

MAX_ALIAS_DEPTH = 8
# The key each routing policy adds to a ResourceRecordSet; none of them: a simple record.
_POLICY_KEYS = (
    "Weight",
    "GeoLocation",
    "Region",
    "Failover",
    "MultiValueAnswer",
    "CidrRoutingConfig",
    "GeoProximityLocation",
)
_NODATA: Distribution = {frozenset(): Fraction(1)}


@dataclass(frozen=True, slots=True)
class Location:
    """Where Route 53 places the client's resolver; None where it cannot say (then only `*` matches)."""

    continent: str | None = None  # AF AN AS EU NA OC SA
    country: str | None = None  # ISO 3166-1 alpha-2
    subdivision: str | None = None  # a US state, with country "US"


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: str  # "NOERROR" or "NXDOMAIN"
    # Each answer the client can get -> its probability (summing to 1); frozenset() is an empty answer.
    distribution: Mapping[frozenset[str], Fraction] = field(default_factory=dict)

    @property
    def addresses(self) -> frozenset[str]:
        """Every address this client can be given."""
        return frozenset().union(*self.distribution)

    @property
    def nodata(self) -> bool:
        return self.rcode == "NOERROR" and self.distribution == _NODATA


def normalise(name: str) -> str:
    return name.lower().rstrip(".") + "."


def resolve(records: Iterable[Record], name: str, where: Location, rtype: str = "A") -> Answer:
    zone = _Zone(records)
    query = normalise(name)
    if query not in zone.names:
        return Answer("NXDOMAIN", dict(_NODATA))
    return Answer("NOERROR", zone.answer(query, rtype, where, depth=0))


class _Zone:
    def __init__(self, records: Iterable[Record]) -> None:
        self.groups: dict[tuple[str, str], list[Record]] = {}
        for record in records:
            self.groups.setdefault((normalise(record["Name"]), record["Type"]), []).append(record)
        self.names = {name for name, _ in self.groups}

    def answer(self, name: str, rtype: str, where: Location, depth: int) -> Distribution:
        if depth > MAX_ALIAS_DEPTH:
            raise ValueError(f"{name}: alias chain longer than {MAX_ALIAS_DEPTH} (a loop?)")
        group = self.groups.get((name, rtype))
        if not group:
            return dict(_NODATA)
        policy = _policy(name, rtype, group)
        if policy == "simple":
            return self._values(group[0], rtype, where, depth)
        if policy == "GeoLocation":
            chosen = _geolocation_match(name, rtype, group, where)
            return dict(_NODATA) if chosen is None else self._values(chosen, rtype, where, depth)
        if policy == "Weight":
            return self._weighted(name, rtype, group, where, depth)
        raise ValueError(f"{name} {rtype}: {policy} routing is not modelled")

    def _weighted(
        self, name: str, rtype: str, group: list[Record], where: Location, depth: int
    ) -> Distribution:
        weights = [record["Weight"] for record in group]
        for weight in weights:
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 255:
                raise ValueError(f"{name} {rtype}: weight {weight!r} outside 0..255")
        total = sum(weights)
        if total == 0:
            weights, total = [1] * len(group), len(group)
        result: Distribution = {}
        for record, weight in zip(group, weights, strict=True):
            if weight:
                for answer, p in self._values(record, rtype, where, depth).items():
                    result[answer] = result.get(answer, Fraction(0)) + p * Fraction(weight, total)
        return result

    def _values(self, record: Record, rtype: str, where: Location, depth: int) -> Distribution:
        alias = record.get("AliasTarget")
        if alias is None:
            return {frozenset(value["Value"] for value in record["ResourceRecords"]): Fraction(1)}
        target = normalise(alias["DNSName"])
        if (target, rtype) not in self.groups:
            raise ValueError(
                f"{normalise(record['Name'])}: alias to {target} {rtype}, which is not in the zone"
            )
        return self.answer(target, rtype, where, depth + 1)


def _policy(name: str, rtype: str, group: list[Record]) -> str:
    policies = {next((key for key in _POLICY_KEYS if key in record), "simple") for record in group}
    if len(policies) > 1:
        raise ValueError(f"{name} {rtype}: mixed routing policies {sorted(policies)} (Route 53 refuses them)")
    policy = policies.pop()
    if policy == "simple":
        if len(group) > 1:
            raise ValueError(f"{name} {rtype}: {len(group)} simple record sets (Route 53 allows one)")
        return policy
    identifiers = [record.get("SetIdentifier") for record in group]
    if None in identifiers or len(set(identifiers)) != len(identifiers):
        raise ValueError(f"{name} {rtype}: SetIdentifiers missing or repeated: {identifiers}")
    return policy


def _geolocation_match(name: str, rtype: str, group: list[Record], where: Location) -> Record | None:
    """The record of the smallest place that holds the client, else the `*` record, else None."""
    by_place: dict[tuple[str | None, str | None, str | None], Record] = {}
    for record in group:
        geo = record["GeoLocation"]
        place = (geo.get("ContinentCode"), geo.get("CountryCode"), geo.get("SubdivisionCode"))
        if place in by_place:
            raise ValueError(f"{name} {rtype}: two geolocation records for {place} (Route 53 refuses them)")
        by_place[place] = record
    smallest_first: list[tuple[str | None, str | None, str | None]] = []
    if where.country is not None:
        if where.subdivision is not None:
            smallest_first.append((None, where.country, where.subdivision))
        smallest_first.append((None, where.country, None))
    if where.continent is not None:
        smallest_first.append((where.continent, None, None))
    smallest_first.append((None, "*", None))
    return next((by_place[place] for place in smallest_first if place in by_place), None)
