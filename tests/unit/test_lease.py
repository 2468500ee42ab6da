"""The pure decisions of weights/lease.py: when a lease may be taken over, what is written, what a busy
destination says."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from controlplane.policy import RESERVED_VERSIONS
from controlplane.weights.lease import (
    LEASE_NAME,
    MAX_LEASE_BYTES,
    Lease,
    LeaseTerms,
    Syncer,
    busy_message,
    granted,
    parse_lease,
    released,
    takeable,
)
from controlplane.weights.manifest import CURRENT_NAME
from controlplane.weights.retention import HISTORY_NAME

ME = Syncer("mine", "here", 100, "boot-1 pid:[1]")
NOW = 1_800_000_000.0
TERMS = LeaseTerms(ttl=120, margin=30)


def theirs(expires_at: float, *, pid: int = 200, space: str | None = "boot-2 pid:[1]") -> Lease:
    return Lease(owner="theirs", host="there", pid=pid, space=space, version="v1", expires_at=expires_at)


def never_asked(pid: int) -> bool:
    raise AssertionError(f"pid {pid} of another machine looked up")


def test_the_names_beside_the_version_folders_are_the_ones_the_policy_refuses() -> None:
    assert {CURRENT_NAME, HISTORY_NAME, LEASE_NAME} == RESERVED_VERSIONS


def test_an_absent_or_unreadable_lease_is_taken() -> None:
    assert takeable(None, ME, NOW, TERMS.margin, never_asked)


@given(
    expires_at=st.floats(min_value=0, max_value=4e9),
    now=st.floats(min_value=0, max_value=4e9),
    margin=st.floats(min_value=0, max_value=3600),
)
def test_another_machines_lease_is_taken_only_once_expired_by_more_than_the_margin(
    expires_at: float, now: float, margin: float
) -> None:
    assert takeable(theirs(expires_at), ME, now, margin, never_asked) == (now > expires_at + margin)


def test_a_lease_expired_within_the_margin_is_still_held() -> None:
    # The holder's clock may be behind ours: its lease may well still run by its own clock.
    assert not takeable(theirs(NOW - 29), ME, NOW, 30, never_asked)
    assert takeable(theirs(NOW - 31), ME, NOW, 30, never_asked)


def test_a_live_lease_of_a_dead_process_of_this_machine_is_taken_at_once() -> None:
    dead = theirs(NOW + 100, pid=200, space=ME.space)
    assert takeable(dead, ME, NOW, 30, lambda pid: pid != 200)
    assert not takeable(dead, ME, NOW, 30, lambda pid: True)


def test_a_pid_of_another_process_space_or_an_unknown_one_is_never_looked_up() -> None:
    assert not takeable(theirs(NOW + 100, space="boot-1 pid:[2]"), ME, NOW, 30, never_asked)
    assert not takeable(theirs(NOW + 100, space=None), ME, NOW, 30, never_asked)
    alone = Syncer("mine", "here", 100, None)
    assert not takeable(theirs(NOW + 100, space=None), alone, NOW, 30, never_asked)


def test_a_live_lease_with_this_processs_pid_is_another_sync_in_this_process() -> None:
    assert not takeable(theirs(NOW + 100, pid=ME.pid, space=ME.space), ME, NOW, 30, lambda pid: False)


def test_a_granted_lease_lasts_the_ttl_and_says_who_holds_it() -> None:
    lease = granted(ME, "v7", NOW, TERMS)
    assert (lease.owner, lease.host, lease.pid, lease.space, lease.version) == (
        "mine",
        "here",
        100,
        ME.space,
        "v7",
    )
    assert lease.expires_at == NOW + 120
    assert not takeable(lease, Syncer("other", "there", 5, None), NOW + 120 + 30, 30, never_asked)
    assert TERMS.renew_every == 30


@given(now=st.floats(min_value=0, max_value=4e9), margin=st.floats(min_value=0, max_value=3600))
def test_a_released_lease_is_free_for_anyone_and_still_names_its_last_holder(
    now: float, margin: float
) -> None:
    lease = released(granted(ME, "v7", now, TERMS))
    assert (lease.owner, lease.host, lease.pid, lease.version) == ("mine", "here", 100, "v7")
    assert takeable(lease, Syncer("other", "there", 5, None), now + margin + 1, margin, never_asked)


@given(
    owner=st.text(max_size=40),
    host=st.text(max_size=100),
    pid=st.integers(min_value=0, max_value=2**22),
    version=st.text(min_size=1, max_size=128),
    expires_at=st.floats(min_value=0, max_value=4e9),
)
def test_a_lease_reads_back_as_written_and_stays_small(
    owner: str, host: str, pid: int, version: str, expires_at: float
) -> None:
    lease = Lease(owner=owner, host=host, pid=pid, space=ME.space, version=version, expires_at=expires_at)
    assert parse_lease(lease.encode()) == lease
    assert len(granted(ME, version, expires_at, TERMS).encode()) <= MAX_LEASE_BYTES


def test_what_is_not_a_lease_reads_as_none() -> None:
    for data in (b"", b"locked by bob\n", b"{}", b'{"owner": 1}', b"\xff\xfe", b"[]"):
        assert parse_lease(data) is None, data
    # A newer syncer's extra fields do not make its lease unreadable here.
    newer = theirs(NOW).model_dump() | {"reason": "upgrade"}
    assert parse_lease(json.dumps(newer).encode()) == theirs(NOW)


def test_a_busy_destination_says_who_holds_it_and_until_when() -> None:
    assert busy_message(theirs(1_800_000_000.0)) == (
        "busy: another syncer (there, pid 200, version v1) holds the lease until 2027-01-15T08:00:00+00:00"
    )
