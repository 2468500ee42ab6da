from __future__ import annotations

import json

from controlplane.changes import Action, Record, diff


def rec(region: str, weight: int, group: str = "global") -> Record:
    return Record("chat.llm.internal", group, region, f"10.0.0.{len(region)}", weight, 5)


def test_diff_creates_updates_deletes_and_leaves_equal_alone():
    current = [rec("a", 50), rec("b", 50), rec("c", 0)]
    desired = [rec("a", 50), rec("b", 100), rec("d", 0)]
    cs = diff("memory", desired, current)
    assert [(c.action, c.record.region) for c in cs.changes] == [
        (Action.UPDATE, "b"),
        (Action.DELETE, "c"),
        (Action.CREATE, "d"),
    ]
    text = cs.render_text()
    assert "~ chat.llm.internal [global] b" in text and "weight 50 => 100" in text
    assert "- chat.llm.internal [global] c" in text and "+ chat.llm.internal [global] d" in text
    assert json.loads(cs.dumps())["changes"][0]["action"] == "update"


def test_no_changes_is_falsy():
    cs = diff("memory", [rec("a", 1)], [rec("a", 1)])
    assert not cs and cs.render_text() == "memory: no changes"
