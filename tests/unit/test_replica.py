"""A replica's coordinator without etcd: what it makes of votes, plans and overrides read from etcd (hostile
ones included), its role, and its fence, on virtual time."""

from __future__ import annotations

import json

import pytest

from controlplane.coord.quorum import Vote
from controlplane.coord.replica import (
    AUDIT_ENTRY_BYTES,
    Coordinator,
    Role,
    compact_entry,
    decode_overrides,
    decode_plan,
    decode_vote,
    encode_vote,
)
from controlplane.policy import Coordination
from controlplane.providers.base import Fenced
from probes.health import State
from tests.builders import ManualClock

SETTINGS = Coordination(etcd=("http://127.0.0.1:1",), lease_ttl=3, prefix="/cp/test")


def coordinator(clock: ManualClock, name: str = "r1") -> Coordinator:
    return Coordinator(SETTINGS, name, now=clock)


def test_a_vote_round_trips_and_is_stamped_with_the_readers_clock() -> None:
    value = encode_vote("r2", {"us-east": State.UNHEALTHY, "eu-west": State.HEALTHY}, at=1e9)
    vote = decode_vote("r2", value, arrived=42.0)
    assert vote == Vote("r2", 42.0, {"us-east": State.UNHEALTHY, "eu-west": State.HEALTHY})


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"states": {"us-east": "sideways"}}',
        b'{"states": ["us-east"]}',
        b'{"replica": "r2"}',
        b"\xff\xfe",
    ],
)
def test_a_vote_that_does_not_parse_is_not_counted(value: bytes) -> None:
    assert decode_vote("r2", value, arrived=1.0) is None


def test_the_shared_plan_is_validated_like_the_state_file() -> None:
    plan = {
        "generated_at": 5.0,
        "groups": [
            {
                "service": "chat",
                "group": "global",
                "mode": "normal",
                "weights": [{"region": "us-east", "weight": 100, "reason": "ok"}],
            }
        ],
    }
    shared = decode_plan(json.dumps({"epoch": 7, "leader": "r2", "plan": plan}).encode())
    assert shared is not None and shared.epoch == 7 and shared.leader == "r2"
    assert shared.plan.group("chat", "global") is not None
    assert decode_plan(b"{") is None
    assert decode_plan(b'{"epoch": "x", "leader": "r2", "plan": {}}') is None
    assert (
        decode_plan(json.dumps({"epoch": 1, "leader": "r2", "plan": {"generated_at": "soon"}}).encode())
        is None
    )


def test_shared_overrides_keep_what_validates() -> None:
    good = {"region": "us-east", "action": "drain", "until": 1e12}
    overrides = decode_overrides(json.dumps([good, {"region": 5}]).encode())
    assert [o.region for o in overrides] == ["us-east"]
    assert decode_overrides(b"nope") == ()
    assert decode_overrides(None) == ()


def test_a_big_audit_entry_is_cut_to_its_time_and_event() -> None:
    small = {"ts": 1.0, "event": "leading", "epoch": 3, "after": None}
    assert compact_entry(small) == small
    many = {"ts": 1.0, "event": "plan_changed", "groups": [{"g": i} for i in range(1000)], "epoch": 3}
    assert compact_entry(many) == {"ts": 1.0, "event": "plan_changed", "epoch": 3}
    wide = {"ts": 1.0, "event": "applied", "note": "x" * (AUDIT_ENTRY_BYTES + 1)}
    assert compact_entry(wide) == {"ts": 1.0, "event": "applied", "cut": True}


async def test_roles_follow_the_votes_and_etcd() -> None:
    clock = ManualClock(100.0)
    c = coordinator(clock)
    assert c.role() is Role.STARTING
    c.judge()
    assert c.role() is Role.STARTING  # its own vote not seen yet: not frozen, just not looking yet
    for name in ("r1", "r2", "r3"):
        c.votes[name] = Vote(name, clock(), {"us-east": State.HEALTHY})
    c._succeeded()
    assert c.judge().frozen is None
    assert c.role() is Role.FOLLOWER
    with pytest.raises(Fenced):
        c.fence()  # a follower never writes

    clock.advance(SETTINGS.lease_ttl + 0.5)  # no etcd answer for longer than the lease
    quorum = c.judge()
    assert quorum.frozen is not None and "etcd unreachable" in quorum.frozen
    assert c.role() is Role.FROZEN


async def test_a_replica_blind_to_every_region_votes_no_verdict_and_freezes() -> None:
    clock = ManualClock(100.0)
    c = coordinator(clock, "r3")
    down = {"us-east": State.UNHEALTHY, "eu-west": State.UNHEALTHY}
    up = {"us-east": State.HEALTHY, "eu-west": State.UNHEALTHY}
    c.votes = {"r1": Vote("r1", clock(), up), "r2": Vote("r2", clock(), up)}
    # Its timeouts are its own network: counted as "down", they and one flaky peer would make a majority.
    assert c.vote_for(down) == {"us-east": State.UNKNOWN, "eu-west": State.UNKNOWN}
    await c.publish(down)  # no lease yet: nothing sent, but the view is kept for its own verdict
    c.votes["r3"] = Vote("r3", clock(), c.vote_for(down))
    c._succeeded()
    quorum = c.judge()
    assert quorum.frozen is not None and "its own network" in quorum.frozen
    assert quorum.regions["us-east"].state is State.HEALTHY and quorum.regions["us-east"].down == ()
    assert "no verdict from r3" in quorum.regions["us-east"].note
    # When its peers see nothing up either, its view is the regions' and it votes it.
    c.votes = {"r1": Vote("r1", clock(), down), "r2": Vote("r2", clock(), down)}
    assert c.vote_for(down) == down
