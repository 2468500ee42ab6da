"""The vantage quorum: hand-made tables, then properties over random vote sets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.coord.quorum import QuorumView, Vote, combine, remember, tally
from probes.health import State
from tests.builders import view

UP, DOWN, UNKNOWN = State.HEALTHY, State.UNHEALTHY, State.UNKNOWN
NOW = 1000.0
STALE = 5.0
PAIR = ("us-east", "eu-west")


def vote(replica: str, *states: State, age: float = 0.0) -> Vote:
    return Vote(replica, NOW - age, dict(zip(PAIR, states, strict=True)))


def count(*votes: Vote, me: str = "a", expected: int | None = None) -> QuorumView:
    return tally(votes, NOW, stale_after=STALE, me=me, expected=expected)


# (what, votes, expected, us-east's state, a fragment of us-east's note or "" for none, frozen fragment)
TABLE = [
    (
        "2 of 3 see it down: failed over",
        [vote("a", DOWN, UP), vote("b", DOWN, UP), vote("c", UP, UP)],
        None,
        DOWN,
        "down from 2 of 3 replicas (a, b)",
        None,
    ),
    (
        "1 of 3 sees it down: a path problem from that replica, not failed over",
        [vote("a", UP, UP), vote("b", UP, UP), vote("c", DOWN, UP)],
        None,
        UP,
        "seen down from a minority (c): a path problem",
        None,
    ),
    (
        "me sees everything down while both peers see it up: my network, frozen",
        [vote("a", DOWN, DOWN), vote("b", UP, UP), vote("c", UP, UP)],
        None,
        UP,
        "seen down from a minority (a)",
        "a sees no region up while 2 of 2 other replicas do",
    ),
    (
        "my own vote is stale: I cannot know",
        [vote("a", UP, UP, age=STALE + 0.1), vote("b", UP, UP), vote("c", UP, UP)],
        None,
        UP,
        "",
        "a's own vote is stale or missing",
    ),
    (
        "1 of the 3 last seen is live: cut off from its peers",
        [vote("a", DOWN, UP), vote("b", UP, UP, age=60.0), vote("c", UP, UP, age=60.0)],
        3,
        DOWN,
        "",
        "only 1 of 3 replicas live",
    ),
    (
        "2 of 3 live is a majority of those last seen: acts",
        [vote("a", DOWN, UP), vote("b", DOWN, UP), vote("c", UP, UP, age=60.0)],
        3,
        DOWN,
        "",
        None,
    ),
    (
        "exactly half see it down, I see it up: healthy from here, with a note",
        [vote("a", UP, UP), vote("b", UP, UP), vote("c", DOWN, UP), vote("d", DOWN, UP)],
        None,
        UP,
        "no majority (2 up, 2 down, 0 unknown of 4): healthy from here; seen down from a minority (c, d)",
        None,
    ),
    (
        "exactly half see it down, so do I: never declared down, but nobody vouches for it",
        [vote("a", DOWN, UP), vote("b", UP, UP), vote("c", DOWN, UP), vote("d", UP, UP)],
        None,
        UNKNOWN,
        "no majority (2 up, 2 down, 0 unknown of 4); seen down from a, c",
        None,
    ),
    (
        "a blind replica keeps its seat: 1 down of 3 live is no majority",
        [vote("a", UNKNOWN, UP), vote("b", DOWN, UP), vote("c", UNKNOWN, UP)],
        None,
        UNKNOWN,
        "no majority (0 up, 1 down, 2 unknown of 3)",
        None,
    ),
    (
        "a vote that does not name the region is blind on it",
        [vote("a", UP, UP), vote("b", DOWN, UP), Vote("c", NOW, {"eu-west": UP})],
        None,
        UP,
        "no majority (1 up, 1 down, 1 unknown of 3): healthy from here",
        None,
    ),
]


@pytest.mark.parametrize(
    ("votes", "expected", "state", "note", "frozen"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE]
)
def test_table(votes: list[Vote], expected: int | None, state: State, note: str, frozen: str | None) -> None:
    q = count(*votes, expected=expected)
    east = q.regions["us-east"]
    assert east.state is state
    assert (note in east.note) if note else east.note == ""
    assert (frozen in (q.frozen or "")) if frozen else q.frozen is None


def test_the_needed_count_and_who_stands_where() -> None:
    q = count(vote("b", UP, UP), vote("a", DOWN, UP), vote("c", UNKNOWN, UP), vote("d", UP, UP))
    east = q.regions["us-east"]
    assert (q.live, q.needed) == (("a", "b", "c", "d"), 3)
    assert (east.down, east.up, east.unknown) == (("a",), ("b", "d"), ("c",))


def test_the_newest_vote_of_a_replica_counts() -> None:
    q = count(vote("a", UP, UP), vote("b", DOWN, UP, age=3.0), vote("b", UP, UP, age=1.0))
    assert q.regions["us-east"].state is UP and q.regions["us-east"].note == ""
    q = count(vote("a", DOWN, UP), vote("b", UP, UP, age=3.0), vote("b", DOWN, UP, age=1.0))
    assert q.regions["us-east"].state is DOWN


def test_combine_takes_states_from_the_quorum_and_keeps_health_otherwise() -> None:
    own = view({"us-east": (UP, 0.7), "eu-west": DOWN, "ap-south": UP})
    q = count(vote("a", UP, DOWN), vote("b", DOWN, UP), vote("c", DOWN, UP))
    combined = combine(own, q)
    east, west, south = (combined.get(r) for r in ("us-east", "eu-west", "ap-south"))
    assert east.state is DOWN and east.score == 0.0 and east.reasons == ("down from 2 of 3 replicas (b, c)",)
    assert west.state is UP and west.score == 1.0, "a majority vouches for it; no figures from here"
    assert "seen down from a minority (a)" in west.reasons[-1]
    assert south.state is UNKNOWN and south.score == 0.0 and "no live replica" in south.reasons[-1]
    assert combined.at == own.at


def test_combine_of_a_frozen_quorum_says_why_on_every_region() -> None:
    own = view(dict.fromkeys(PAIR, UP))
    combined = combine(own, count(vote("a", UP, UP), vote("b", UP, UP), vote("c", UP, UP), me="z"))
    assert all("frozen: z's own vote is stale or missing" in combined.get(r).reasons[-1] for r in PAIR)


def test_a_single_replica_without_coordination_is_its_own_view() -> None:
    own = view({"us-east": (UP, 0.4), "eu-west": DOWN, "ap-south": UNKNOWN})
    alone = tally(
        [Vote("a", NOW, {r: h.state for r, h in own.regions.items()})], NOW, stale_after=STALE, me="a"
    )
    assert alone.frozen is None
    assert combine(own, alone) == own


def test_expected_falls_only_while_the_plane_is_not_frozen() -> None:
    three = count(vote("a", UP, UP), vote("b", UP, UP), vote("c", UP, UP))
    assert remember(None, three) == 3
    two = count(vote("a", UP, UP), vote("b", UP, UP), expected=3)
    assert two.frozen is None and remember(3, two) == 2
    one = count(vote("a", UP, UP), expected=2)
    assert one.frozen is not None and remember(2, one) == 2, "alone, it may not lower the bar"
    assert remember(2, count(vote("a", UP, UP), vote("b", UP, UP), vote("c", UP, UP), me="z")) == 3


# Properties over random vote sets: up to 7 replicas, some stale, duplicates of a name possible.
REPLICAS = "abcdefg"
state = st.sampled_from([UP, DOWN, UNKNOWN])
votes_st = st.lists(
    st.builds(
        Vote,
        st.sampled_from(REPLICAS),
        st.sampled_from([NOW, NOW - 1.0, NOW - STALE, NOW - STALE - 1.0]),
        st.fixed_dictionaries({r: state for r in PAIR}),
    ),
    max_size=10,
)


@settings(max_examples=400)
@given(votes_st, st.sampled_from(REPLICAS))
def test_no_majority_never_fails_a_region_and_a_majority_always_does(votes: list[Vote], me: str) -> None:
    q = tally(votes, NOW, stale_after=STALE, me=me)
    live = len(q.live)
    for counted in q.regions.values():
        down = len(counted.down)
        if 2 * down > live:
            assert counted.state is DOWN
        else:
            assert counted.state is not DOWN, "exactly half is no majority either"
            if 2 * down < live and len(counted.up) == live - down:
                assert counted.state is UP, "a minority down, the rest up: a path problem"


@settings(max_examples=300)
@given(votes_st, st.sampled_from(REPLICAS), st.randoms(use_true_random=False))
def test_the_order_of_votes_does_not_matter(votes: list[Vote], me: str, rnd: random.Random) -> None:
    shuffled = list(votes)
    rnd.shuffle(shuffled)
    assert tally(votes, NOW, stale_after=STALE, me=me, expected=4) == tally(
        shuffled, NOW, stale_after=STALE, me=me, expected=4
    )


@settings(max_examples=300)
@given(votes_st, st.sampled_from(REPLICAS))
def test_a_vote_that_agrees_never_flips_a_verdict(votes: list[Vote], me: str) -> None:
    before = tally(votes, NOW, stale_after=STALE, me=me)
    agreeing = Vote("newcomer", NOW, {r: counted.state for r, counted in before.regions.items()})
    after = tally([*votes, agreeing], NOW, stale_after=STALE, me=me)
    assert {r: c.state for r, c in after.regions.items()} == {r: c.state for r, c in before.regions.items()}


@given(st.fixed_dictionaries({r: state for r in PAIR}), st.sampled_from(REPLICAS))
def test_one_replica_alone_counts_to_its_own_states(states: dict[str, State], me: str) -> None:
    own = view(states)
    q = tally([Vote(me, NOW, states)], NOW, stale_after=STALE, me=me)
    assert {r: h.state for r, h in combine(own, q).regions.items()} == states
