"""The safety gate: a change set deleting too much of what a provider owns, or touching a name the policy
does not serve, is refused with every reason."""

from __future__ import annotations

import pytest

from controlplane import safety
from controlplane.changes import Action, Change, ChangeSet, Record
from tests.builders import policy

POLICY = policy()  # serves chat.llm.internal


def record(name: str, region: str, rtype: str = "A") -> Record:
    return Record(name, "global", region, "10.0.0.1", 10, 30, rtype)


def deleting(n: int, name: str = "chat.llm.internal") -> ChangeSet:
    return ChangeSet("cloud", tuple(Change(Action.DELETE, record(name, f"r{i}"), None) for i in range(n)))


@pytest.mark.parametrize(
    ("deletes", "owned", "refused"), [(3, 10, False), (4, 10, True), (1, 1, True), (0, 0, False)]
)
def test_deleting_more_than_the_share_is_refused(deletes: int, owned: int, refused: bool) -> None:
    found = safety.problems(deleting(deletes), owned, 0.34, POLICY)
    assert bool(found) is refused
    if refused:
        assert f"deletes {deletes} of the {owned} records" in found[0]


def test_updates_of_every_record_pass_a_failover_changes_weights_not_names() -> None:
    changes = ChangeSet(
        "cloud",
        tuple(
            Change(Action.UPDATE, record("chat.llm.internal", f"r{i}"), record("chat.llm.internal", f"r{i}"))
            for i in range(10)
        ),
    )
    assert safety.problems(changes, 10, 0.34, POLICY) == []


def test_names_outside_the_served_ones_are_refused_structure_under_them_is_not() -> None:
    changes = ChangeSet(
        "cloud",
        (
            Change(Action.CREATE, None, record("_cp-prod-eu.chat.llm.internal", "r1")),
            Change(Action.CREATE, None, record("www.llm.internal", "r2")),
            Change(Action.CREATE, None, record("backend", "r3", rtype="server")),
        ),
    )
    [found] = safety.problems(changes, 0, 0.34, POLICY)
    assert "['www.llm.internal']" in found


def test_check_lists_every_problem_and_says_how_to_override() -> None:
    with pytest.raises(safety.TooMuchChange) as refused:
        safety.check([(deleting(5), 5, 0.34), (deleting(1, "www.llm.internal"), 100, 0.34)], POLICY)
    text = str(refused.value)
    assert "--force" in text and "deletes 5 of the 5" in text and "www.llm.internal" in text
    assert refused.value.exit_code == 3
