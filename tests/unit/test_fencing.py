"""The pure parts of the provider fence: what a fenced Route 53 batch or Cloud DNS change carries, and how
the strict Route 53 proxy judges a batch and rewrites it for moto."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from controlplane.providers import clouddns, route53
from controlplane.providers.base import Fenced, PermanentProviderError
from tests.fakes.route53_strict import NS, changes_of, net_changes, refusals

ZONE = "llm.example.com"
R53_LEASE = ("_cp-lease.prod.llm.example.com.", "TXT", "")
CLOUD_LEASE = ("_cp-lease.prod.llm.example.com.", "TXT")


def value(epoch: int, owner: str = "prod") -> str:
    return f'"heritage=llm-failover-plane,owner={owner},epoch={epoch}"'


def test_route53_a_fenced_batch_deletes_the_lease_as_held_and_creates_it_at_the_epoch() -> None:
    assert route53.fence_ops("prod", ZONE, {}, 4) == [("CREATE", route53.lease("prod", ZONE, 4))]
    held = {R53_LEASE: route53.lease("prod", ZONE, 3) | {"TTL": 60}}  # as read, whatever its TTL
    assert route53.fence_ops("prod", ZONE, held, 4) == [
        ("DELETE", held[R53_LEASE]),
        ("CREATE", route53.lease("prod", ZONE, 4)),
    ]
    assert route53.lease("prod", ZONE, 4)["ResourceRecords"] == [{"Value": value(4)}]
    assert route53.fence_ops("prod", ZONE, held, 3)[0] == ("DELETE", held[R53_LEASE])
    with pytest.raises(Fenced, match="epoch 3, newer than this leader's 2"):
        route53.fence_ops("prod", ZONE, held, 2)


@pytest.mark.parametrize("data", [[value(3, "staging")], ['"epoch=9"'], [value(3), value(4)]])
def test_route53_a_lease_record_that_is_no_lease_of_this_owner_is_refused(data: list[str]) -> None:
    held = {R53_LEASE: {**route53.lease("prod", ZONE, 3), "ResourceRecords": [{"Value": v} for v in data]}}
    with pytest.raises(PermanentProviderError, match="holds no lease of owner 'prod'"):
        route53.fence_ops("prod", ZONE, held, 5)


def test_cloud_dns_a_fenced_change_deletes_the_lease_as_read_and_adds_it_at_the_epoch() -> None:
    change = clouddns.ZoneChange(({"name": "a."},), ({"name": "b."},))
    added = clouddns.fenced(change, {}, "prod", ZONE, 4)
    assert added.deletions == change.deletions
    assert added.additions[1:] == change.additions
    assert added.additions[0] == {"name": CLOUD_LEASE[0], "type": "TXT", "ttl": 300, "rrdatas": [value(4)]}
    read = {"kind": "dns#resourceRecordSet", "name": CLOUD_LEASE[0], "type": "TXT", "ttl": 60}
    rrsets = {CLOUD_LEASE: read | {"rrdatas": [value(3)]}}
    moved = clouddns.fenced(change, rrsets, "prod", ZONE, 4)
    assert moved.deletions == (rrsets[CLOUD_LEASE], *change.deletions)
    assert moved.additions == added.additions
    with pytest.raises(Fenced, match="epoch 3, newer than this leader's 2"):
        clouddns.fenced(change, rrsets, "prod", ZONE, 2)
    with pytest.raises(PermanentProviderError, match="holds no lease of owner 'prod'"):
        clouddns.fenced(change, {CLOUD_LEASE: read | {"rrdatas": [value(3, "staging")]}}, "prod", ZONE, 4)


def request(*changes: tuple[str, str, str]) -> ET.Element:
    """A ChangeResourceRecordSetsRequest of TXT changes (action, name, value), as botocore sends it."""
    body = "".join(
        f"<Change><Action>{a}</Action><ResourceRecordSet><Name>{n}</Name><Type>TXT</Type><TTL>60</TTL>"
        f"<ResourceRecords><ResourceRecord><Value>{v}</Value></ResourceRecord></ResourceRecords>"
        "</ResourceRecordSet></Change>"
        for a, n, v in changes
    )
    text = f'<ChangeResourceRecordSetsRequest xmlns="{NS}"><ChangeBatch><Changes>{body}</Changes>'
    return ET.fromstring(text + "</ChangeBatch></ChangeResourceRecordSetsRequest>")


def test_the_strict_proxy_judges_each_change_after_the_batch_s_earlier_ones() -> None:
    zone = {key.key: key.rrset for key in changes_of(request(("CREATE", "X.llm.example.com", "v1")))}
    x, y = "x.llm.example.com.", "y.llm.example.com."
    assert refusals(changes_of(request(("DELETE", x, "v1"), ("CREATE", x, "v1"))), zone) == []
    assert refusals(changes_of(request(("DELETE", x, "v1"), ("DELETE", x, "v1"))), zone) == [
        f"Tried to delete resource record set [name='{x}', type='TXT'] but it was not found"
    ]
    assert refusals(
        changes_of(request(("DELETE", x, "v0"), ("CREATE", y, "v1"), ("CREATE", x, "v1"))), zone
    ) == [
        f"Tried to delete resource record set [name='{x}', type='TXT'] but the values provided do not "
        "match the current values"
    ]
    assert refusals(changes_of(request(("CREATE", y, "v1"), ("CREATE", x, "v2"))), zone) == [
        f"Tried to create resource record set [name='{x}', type='TXT'] but it already exists"
    ]


def test_the_strict_proxy_hands_moto_the_batch_s_net_effect() -> None:
    x, y, z = "x.llm.example.com.", "y.llm.example.com.", "z.llm.example.com."
    zone = {c.key: c.rrset for c in changes_of(request(("CREATE", x, "v1"), ("CREATE", y, "v1")))}
    changes = changes_of(
        request(("DELETE", x, "v1"), ("CREATE", x, "v2"), ("DELETE", y, "v1"), ("CREATE", z, "v1"))
    )
    net = [
        (c.find(f"{{{NS}}}Action").text, c.findtext(f".//{{{NS}}}Name"), c.findtext(f".//{{{NS}}}Value"))  # type: ignore[union-attr]
        for c in net_changes(changes, zone)
    ]
    assert net == [("UPSERT", x, "v2"), ("DELETE", y, "v1"), ("UPSERT", z, "v1")]
