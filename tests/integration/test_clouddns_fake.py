"""The Cloud DNS fake holds the v1 API's contract, asked over plain HTTP as any client would: what the Cloud
DNS provider's tests prove is only as good as this."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import pytest

from tests.fakes.clouddns import MAX_BODY, FakeCloudDns, Limits

PROJECT, ZONE, DNS_NAME = "proj", "llm-zone", "llm.example.com."
AUTH = {"Authorization": "Bearer test-token"}

JsonObject = dict[str, Any]


def a_record(name: str = "www", ttl: int = 300, rrdatas: tuple[str, ...] = ("10.0.0.1",)) -> JsonObject:
    return {"name": f"{name}.{DNS_NAME}", "type": "A", "ttl": ttl, "rrdatas": list(rrdatas)}


def wrr(name: str = "chat", weights: tuple[float, ...] = (70, 30)) -> JsonObject:
    items = [{"weight": w, "rrdatas": [f"10.0.1.{i}"]} for i, w in enumerate(weights, 1)]
    return {"name": f"{name}.{DNS_NAME}", "type": "A", "ttl": 30, "routingPolicy": {"wrr": {"items": items}}}


def geo(name: str = "geo", fencing: bool = True) -> JsonObject:
    items = [
        {"location": "europe-west1", "rrdatas": ["10.0.2.1"]},
        {"location": "us-east1", "rrdatas": ["10.0.2.2", "10.0.2.3"]},
    ]
    policy = {"geo": {"items": items, "enableFencing": fencing}}
    return {"name": f"{name}.{DNS_NAME}", "type": "A", "ttl": 30, "routingPolicy": policy}


def primary_backup(name: str = "pb") -> JsonObject:
    policy = {
        "healthCheck": "https://www.googleapis.com/compute/v1/projects/proj/global/healthChecks/hc",
        "primaryBackup": {
            "primaryTargets": {"externalEndpoints": ["10.0.3.1"]},
            "backupGeoTargets": {"items": [{"location": "us-east1", "rrdatas": ["10.0.3.2"]}]},
            "trickleTraffic": 0.1,
        },
    }
    return {"name": f"{name}.{DNS_NAME}", "type": "A", "ttl": 30, "routingPolicy": policy}


class Api:
    """The v1 API of one zone, as raw requests."""

    def __init__(self, session: aiohttp.ClientSession, fake: FakeCloudDns) -> None:
        self.session = session
        self.base = f"{fake.url}/dns/v1/projects/{PROJECT}/managedZones/{ZONE}"

    async def call(
        self,
        method: str,
        path: str = "",
        body: object = None,
        headers: dict[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, JsonObject]:
        async with self.session.request(
            method,
            self.base + path,
            json=body,
            params=query or {},
            headers=AUTH if headers is None else headers,
        ) as response:
            return response.status, await response.json()

    async def change(
        self, additions: Sequence[JsonObject] = (), deletions: Sequence[JsonObject] = ()
    ) -> tuple[int, JsonObject]:
        return await self.call(
            "POST", "/changes", {"additions": list(additions), "deletions": list(deletions)}
        )

    async def listing(self, **query: str) -> tuple[list[JsonObject], int]:
        """Every rrset matching the query, following nextPageToken; and how many pages that took."""
        found: list[JsonObject] = []
        pages = 0
        while True:
            status, body = await self.call("GET", "/rrsets", query=query)
            assert status == 200, body
            pages += 1
            found += body["rrsets"]
            if "nextPageToken" not in body:
                return found, pages
            query = {**query, "pageToken": body["nextPageToken"]}


@pytest.fixture
async def fake() -> AsyncIterator[FakeCloudDns]:
    async with FakeCloudDns(page_size=2) as fake:
        fake.add_zone(PROJECT, ZONE, DNS_NAME)
        yield fake


@pytest.fixture
def api(session: aiohttp.ClientSession, fake: FakeCloudDns) -> Api:
    return Api(session, fake)


def assert_error(status: int, body: JsonObject, code: int, reason: str) -> None:
    assert status == code, body
    error = body["error"]
    assert error["code"] == code
    assert error["errors"][0]["reason"] == reason
    assert error["message"] and error["errors"][0]["message"] == error["message"]


# ---------------------------------------------------------------------- auth, zones, unknown paths


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjpwdw=="}],
    ids=["none", "empty", "basic"],
)
async def test_a_request_without_a_bearer_token_is_refused_and_logged(
    api: Api, fake: FakeCloudDns, headers: dict[str, str]
) -> None:
    status, body = await api.call("GET", headers=headers)
    assert_error(status, body, 401, "required")
    assert fake.log[-1].status == 401


async def test_the_zone_is_read_by_name_or_id_and_an_unknown_one_is_404(
    api: Api, fake: FakeCloudDns, session: aiohttp.ClientSession
) -> None:
    status, zone = await api.call("GET")
    assert status == 200
    assert zone["kind"] == "dns#managedZone" and zone["name"] == ZONE and zone["dnsName"] == DNS_NAME
    async with session.get(
        f"{fake.url}/dns/v1/projects/{PROJECT}/managedZones/{zone['id']}", headers=AUTH
    ) as r:
        assert (await r.json())["name"] == ZONE
    for path in (f"projects/{PROJECT}/managedZones/nope", f"projects/other/managedZones/{ZONE}"):
        async with session.get(f"{fake.url}/dns/v1/{path}", headers=AUTH) as r:
            assert_error(r.status, await r.json(), 404, "notFound")
    async with session.get(f"{fake.url}/dns/v2/elsewhere", headers=AUTH) as r:
        assert_error(r.status, await r.json(), 404, "notFound")


def test_a_zone_needs_an_absolute_dns_name() -> None:
    with pytest.raises(ValueError, match="dot"):
        FakeCloudDns().add_zone(PROJECT, ZONE, "llm.example.com")


# ---------------------------------------------------------------------- reading rrsets


async def test_listing_comes_in_small_pages_a_client_must_follow(api: Api, fake: FakeCloudDns) -> None:
    for i in range(5):
        fake.seed(PROJECT, ZONE, a_record(f"host{i}"))
    found, pages = await api.listing()
    # 5 records and the apex SOA and NS that every new zone holds, two to a page
    assert pages == 4
    assert [(r["name"], r["type"]) for r in found] == [
        (r["name"], r["type"]) for r in fake.rrsets(PROJECT, ZONE)
    ]
    assert {(DNS_NAME, "SOA"), (DNS_NAME, "NS")} < {(r["name"], r["type"]) for r in found}
    assert len(found) == 7 and all(r["kind"] == "dns#resourceRecordSet" for r in found)
    one_by_one, pages = await api.listing(maxResults="1")
    assert one_by_one == found and pages == 7


@pytest.mark.parametrize("query", [{"pageToken": "garbage"}, {"maxResults": "0"}, {"maxResults": "x"}])
async def test_a_bad_page_token_or_page_size_is_400(api: Api, query: dict[str, str]) -> None:
    status, body = await api.call("GET", "/rrsets", query=query)
    assert_error(status, body, 400, "invalid")


async def test_listing_filters_by_name_and_type_and_type_needs_a_name(api: Api, fake: FakeCloudDns) -> None:
    fake.seed(PROJECT, ZONE, a_record("www"))
    fake.seed(PROJECT, ZONE, {"name": f"www.{DNS_NAME}", "type": "TXT", "ttl": 300, "rrdatas": ['"x"']})
    fake.seed(PROJECT, ZONE, a_record("other"))
    by_name, _ = await api.listing(name=f"www.{DNS_NAME}")
    assert sorted(r["type"] for r in by_name) == ["A", "TXT"]
    by_both, _ = await api.listing(name=f"www.{DNS_NAME}", type="TXT")
    assert [(r["name"], r["type"]) for r in by_both] == [(f"www.{DNS_NAME}", "TXT")]
    status, body = await api.call("GET", "/rrsets", query={"type": "A"})
    assert_error(status, body, 400, "required")


async def test_one_rrset_is_read_by_name_and_type(api: Api, fake: FakeCloudDns) -> None:
    fake.seed(PROJECT, ZONE, wrr())
    status, rrset = await api.call("GET", f"/rrsets/chat.{DNS_NAME}/A")
    assert status == 200 and rrset["routingPolicy"]["wrr"]["items"][0]["weight"] == 70
    status, body = await api.call("GET", f"/rrsets/chat.{DNS_NAME}/AAAA")
    assert_error(status, body, 404, "notFound")


# ---------------------------------------------------------------------- changes


async def test_a_change_returns_the_change_resource_and_routing_policies_round_trip(
    api: Api, fake: FakeCloudDns
) -> None:
    sent = [a_record(), wrr(), geo(), primary_backup()]
    status, change = await api.change(additions=sent)
    assert status == 200, change
    assert change["kind"] == "dns#change" and change["status"] == "done" and change["deletions"] == []
    assert len(change["additions"]) == 4
    for rrset in sent:
        status, stored = await api.call("GET", f"/rrsets/{rrset['name']}/A")
        assert status == 200
        assert ("rrdatas" in stored) != ("routingPolicy" in stored)
        assert stored.get("rrdatas") == rrset.get("rrdatas")
    _, stored = await api.call("GET", f"/rrsets/geo.{DNS_NAME}/A")
    assert stored["routingPolicy"]["geo"]["enableFencing"] is True
    assert [i["location"] for i in stored["routingPolicy"]["geo"]["items"]] == ["europe-west1", "us-east1"]
    # the real API stamps kinds on what it returns; a client must not read them as drift
    assert stored["routingPolicy"]["kind"] == "dns#rRSetRoutingPolicy"
    _, stored = await api.call("GET", f"/rrsets/pb.{DNS_NAME}/A")
    assert stored["routingPolicy"]["primaryBackup"]["primaryTargets"] == {"externalEndpoints": ["10.0.3.1"]}
    assert stored["routingPolicy"]["primaryBackup"]["trickleTraffic"] == 0.1
    status, again = await api.call("GET", f"/changes/{change['id']}")
    assert status == 200 and again["id"] == change["id"] and again["status"] == "done"
    status, body = await api.call("GET", "/changes/999")
    assert_error(status, body, 404, "notFound")


async def test_an_existing_addition_is_409_unless_deleted_in_the_same_change(
    api: Api, fake: FakeCloudDns
) -> None:
    fake.seed(PROJECT, ZONE, wrr())
    status, body = await api.change(additions=[wrr(weights=(50, 50))])
    assert_error(status, body, 409, "alreadyExists")
    assert "entity.change.additions[0]" in body["error"]["message"]
    status, body = await api.change(additions=[a_record("new"), a_record("new")])
    assert_error(status, body, 409, "alreadyExists")
    status, change = await api.change(deletions=[wrr()], additions=[wrr(weights=(50, 50))])
    assert status == 200, change
    _, stored = await api.call("GET", f"/rrsets/chat.{DNS_NAME}/A")
    assert [i["weight"] for i in stored["routingPolicy"]["wrr"]["items"]] == [50, 50]


async def test_deleting_a_missing_rrset_is_404(api: Api) -> None:
    status, body = await api.change(deletions=[a_record("ghost")])
    assert_error(status, body, 404, "notFound")
    assert body["error"]["message"] == (
        f"The 'entity.change.deletions[0]' resource named 'ghost.{DNS_NAME} (A)' does not exist."
    )


def _with(rrset: JsonObject, path: tuple[str | int, ...], value: object) -> JsonObject:
    changed = copy.deepcopy(rrset)
    node: Any = changed
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return changed


def _without(rrset: JsonObject, path: tuple[str, ...]) -> JsonObject:
    changed = copy.deepcopy(rrset)
    node: Any = changed
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return changed


@pytest.mark.parametrize(
    ("existing", "deletion"),
    [
        (a_record(), a_record(ttl=301)),
        (a_record(rrdatas=("10.0.0.1", "10.0.0.2")), a_record(rrdatas=("10.0.0.1",))),
        (a_record(), a_record(rrdatas=("10.0.0.9",))),
        (wrr(), wrr(weights=(70, 31))),
        (wrr(), wrr(weights=(30, 70))),
        (geo(), geo(fencing=False)),
        (geo(), _with(geo(), ("routingPolicy", "geo", "items", 0, "location"), "europe-west4")),
        (
            primary_backup(),
            _with(primary_backup(), ("routingPolicy", "primaryBackup", "trickleTraffic"), 0.2),
        ),
        (wrr(), a_record("chat", ttl=30, rrdatas=("10.0.1.1", "10.0.1.2"))),
    ],
    ids=[
        "ttl",
        "rrdata-missing",
        "rrdata-other",
        "weight",
        "weights-swapped",
        "fencing",
        "location",
        "trickle",
        "static",
    ],
)
async def test_a_deletion_that_does_not_match_exactly_is_412_and_deletes_nothing(
    api: Api, fake: FakeCloudDns, existing: JsonObject, deletion: JsonObject
) -> None:
    fake.seed(PROJECT, ZONE, existing)
    before = fake.rrsets(PROJECT, ZONE)
    status, body = await api.change(deletions=[deletion])
    assert_error(status, body, 412, "conditionNotMet")
    assert body["error"]["message"] == "Precondition not met for 'entity.change.deletions[0]'"
    assert fake.rrsets(PROJECT, ZONE) == before


@pytest.mark.parametrize(
    "rrset",
    [
        a_record(rrdatas=("10.0.0.1", "10.0.0.2")),
        wrr(),
        _without(geo(), ("routingPolicy", "geo", "enableFencing")),
        primary_backup(),
    ],
    ids=["static", "wrr", "geo-unfenced", "primary-backup"],
)
async def test_a_deletion_matches_what_was_read_or_what_was_written(
    api: Api, fake: FakeCloudDns, rrset: JsonObject
) -> None:
    fake.seed(PROJECT, ZONE, rrset)
    _, read = await api.call("GET", f"/rrsets/{rrset['name']}/A")
    status, body = await api.change(deletions=[read])
    assert status == 200, body
    fake.seed(PROJECT, ZONE, rrset)
    written = copy.deepcopy(rrset)
    if "rrdatas" in written:
        written["rrdatas"].reverse()  # the order of rrdatas is not part of an rrset
    if "geo" in written.get("routingPolicy", {}):
        written["routingPolicy"]["geo"]["enableFencing"] = False  # proto3: false is the same as unset
    status, body = await api.change(deletions=[written])
    assert status == 200, body
    assert (rrset["name"], "A") not in {(r["name"], r["type"]) for r in fake.rrsets(PROJECT, ZONE)}


async def test_a_change_with_one_bad_deletion_changes_nothing(api: Api, fake: FakeCloudDns) -> None:
    fake.seed(PROJECT, ZONE, a_record("keep"))
    fake.seed(PROJECT, ZONE, wrr())
    before = fake.rrsets(PROJECT, ZONE)
    good = [a_record("keep")]
    for bad, code in ((a_record("ghost"), 404), (wrr(weights=(1, 1)), 412)):
        status, body = await api.change(additions=[a_record("new"), geo()], deletions=[*good, bad])
        assert status == code, body
        assert fake.rrsets(PROJECT, ZONE) == before
    status, body = await api.change(additions=[a_record("new"), wrr()], deletions=good)
    assert status == 409, body
    assert fake.rrsets(PROJECT, ZONE) == before


@pytest.mark.parametrize(
    "addition",
    [
        a_record() | {"name": "www.other.com."},
        a_record() | {"name": "www.llm.example.com"},
        a_record() | {"type": "BOGUS"},
        a_record() | {"type": "a"},
        a_record(rrdatas=("not-an-ip",)),
        a_record(rrdatas=("::1",)),
        a_record() | {"type": "AAAA"},
        {k: v for k, v in a_record().items() if k != "ttl"},
        a_record() | {"ttl": -1},
        a_record(rrdatas=()),
        wrr() | {"rrdatas": ["10.0.0.1"]},
        {k: v for k, v in a_record().items() if k != "rrdatas"},
        wrr(weights=(70, -1)),
        wrr() | {"routingPolicy": {"wrr": {"items": []}}},
        wrr() | {"routingPolicy": {"wrr": {"items": [{"weight": 1, "rrdatas": ["x"]}]}}},
        wrr() | {"routingPolicy": {"wrr": {"items": [{"weight": 1}]}}},
        wrr() | {"routingPolicy": wrr()["routingPolicy"] | geo()["routingPolicy"]},
        _with(geo(), ("routingPolicy", "geo", "items", 1, "location"), "europe-west1"),
        _with(geo(), ("routingPolicy", "geo", "items", 0, "location"), "EU"),
        {k: v for k, v in primary_backup().items() if k != "routingPolicy"}
        | {
            "routingPolicy": {
                k: v for k, v in primary_backup()["routingPolicy"].items() if k != "healthCheck"
            }
        },
        _with(primary_backup(), ("routingPolicy", "primaryBackup", "trickleTraffic"), 1.5),
        {
            "name": f"alias.{DNS_NAME}",
            "type": "CNAME",
            "ttl": 300,
            "rrdatas": ["a.example.org.", "b.example.org."],
        },
    ],
    ids=[
        "outside-zone",
        "relative-name",
        "unknown-type",
        "lowercase-type",
        "a-not-ip",
        "a-given-ipv6",
        "aaaa-given-ipv4",
        "no-ttl",
        "negative-ttl",
        "empty-rrdatas",
        "rrdatas-and-policy",
        "neither",
        "negative-weight",
        "no-items",
        "item-not-ip",
        "item-without-data",
        "two-policies",
        "geo-location-twice",
        "geo-not-a-region",
        "external-endpoints-without-health-check",
        "trickle-over-1",
        "cname-two-targets",
    ],
)
async def test_invalid_input_is_400_and_changes_nothing(
    api: Api, fake: FakeCloudDns, addition: JsonObject
) -> None:
    before = fake.rrsets(PROJECT, ZONE)
    status, body = await api.change(additions=[a_record("fine"), addition])
    assert status == 400, body
    assert body["error"]["errors"][0]["reason"] == "invalid"
    assert fake.rrsets(PROJECT, ZONE) == before


async def test_a_change_keeps_the_zone_consistent(api: Api, fake: FakeCloudDns) -> None:
    status, body = await api.call("POST", "/changes", {})
    assert_error(status, body, 400, "required")
    async with api.session.post(api.base + "/changes", data=b"{not json", headers=AUTH) as r:
        assert_error(r.status, await r.json(), 400, "parseError")
    soa = next(r for r in fake.rrsets(PROJECT, ZONE) if r["type"] == "SOA")
    status, body = await api.change(deletions=[soa])
    assert_error(status, body, 400, "invalid")
    fake.seed(PROJECT, ZONE, a_record("www"))
    cname = {"name": f"www.{DNS_NAME}", "type": "CNAME", "ttl": 300, "rrdatas": ["elsewhere.example.org."]}
    status, body = await api.change(additions=[cname])
    assert_error(status, body, 400, "cnameResourceRecordSetConflict")
    status, body = await api.change(deletions=[a_record("www")], additions=[cname])
    assert status == 200, body


async def test_a_body_over_the_bound_is_refused_in_the_error_shape(api: Api, fake: FakeCloudDns) -> None:
    oversized = json.dumps({"additions": [a_record() | {"description": "x" * MAX_BODY}]}).encode()
    async with api.session.post(api.base + "/changes", data=io.BytesIO(oversized), headers=AUTH) as r:
        assert r.status == 413 and (await r.json())["error"]["code"] == 413
    assert {r["type"] for r in fake.rrsets(PROJECT, ZONE)} == {"SOA", "NS"}


async def test_changes_beyond_the_limits_are_413(session: aiohttp.ClientSession) -> None:
    limits = Limits(
        additions_per_change=2,
        deletions_per_change=1,
        records_per_rrset=4,
        rrdata_bytes_per_change=40,
        rrsets_per_zone=4,
    )
    async with FakeCloudDns(limits=limits) as fake:
        fake.add_zone(PROJECT, ZONE, DNS_NAME)
        api = Api(session, fake)
        for additions, deletions in (
            ([a_record("a"), a_record("b"), a_record("c")], []),
            ([], [a_record("a"), a_record("b")]),
            ([a_record(rrdatas=tuple(f"10.0.0.{i}" for i in range(5)))], []),  # 5 records, 40 bytes
            (
                [
                    a_record("a", rrdatas=("10.0.0.1", "10.0.0.2", "10.0.0.3")),
                    a_record("b", rrdatas=("10.0.0.4",) * 3),
                ],
                [],
            ),
        ):
            status, body = await api.change(additions, deletions)
            assert_error(status, body, 413, "quotaExceeded")
        status, body = await api.change([a_record("a"), a_record("b")])
        assert status == 200, body
        status, body = await api.change([a_record("c")])  # SOA, NS, a, b: the zone is full
        assert_error(status, body, 413, "quotaExceeded")


async def test_a_change_stays_pending_for_the_polls_asked(api: Api, fake: FakeCloudDns) -> None:
    fake.pending_polls = 2
    status, change = await api.change(additions=[a_record()])
    assert status == 200 and change["status"] == "pending"
    # the rrsets change at once; "pending" is about the name servers, as in Cloud DNS
    assert (f"www.{DNS_NAME}", "A") in {(r["name"], r["type"]) for r in fake.rrsets(PROJECT, ZONE)}
    statuses = [(await api.call("GET", f"/changes/{change['id']}"))[1]["status"] for _ in range(4)]
    assert statuses == ["pending", "pending", "done", "done"]


# ---------------------------------------------------------------------- faults and the request log


async def test_the_next_requests_fail_as_asked_then_the_api_answers(api: Api, fake: FakeCloudDns) -> None:
    fake.fail_next(1, 429)
    fake.fail_next(2, 503, method="POST")
    status, body = await api.call("GET")
    assert_error(status, body, 429, "rateLimitExceeded")
    status, _ = await api.call("GET")
    assert status == 200  # the 503s wait for POSTs
    for _ in range(2):
        status, body = await api.change(additions=[a_record()])
        assert_error(status, body, 503, "backendError")
    assert {r["type"] for r in fake.rrsets(PROJECT, ZONE)} == {"SOA", "NS"}
    status, _ = await api.change(additions=[a_record()])
    assert status == 200
    with pytest.raises(ValueError):
        fake.fail_next(1, 500)


async def test_the_log_records_every_request_answered(api: Api, fake: FakeCloudDns) -> None:
    await api.call("GET", "/rrsets", query={"maxResults": "1"})
    await api.change(additions=[a_record()])
    await api.change(additions=[a_record()])
    await api.call("GET", headers={})
    zone_path = f"/dns/v1/projects/{PROJECT}/managedZones/{ZONE}"
    assert [(r.method, r.path, r.status) for r in fake.log] == [
        ("GET", zone_path + "/rrsets", 200),
        ("POST", zone_path + "/changes", 200),
        ("POST", zone_path + "/changes", 409),
        ("GET", zone_path, 401),
    ]
    assert fake.log[0].query == "maxResults=1"
    assert fake.calls("POST", "/changes") == 2 and fake.calls() == 4
