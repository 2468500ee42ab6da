"""Records, changes and change sets: desired vs current, and how a plan of changes is shown."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True, order=True)
class Record:
    """One routable thing a provider owns: a weighted answer for (name, client group, region)."""

    name: str  # DNS name or HAProxy backend
    group: str  # client group, "*" where the provider cannot tell groups apart
    region: str
    target: str  # address or server name
    weight: int  # in the provider's own units (0..its capabilities' max_weight): percent for most
    ttl: int = 0
    rtype: str = "A"  # what the target is: "A" or "AAAA" for an address, "server" for a load balancer's

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.name, self.group, self.region)


class Action(StrEnum):
    CREATE = "+"
    UPDATE = "~"
    DELETE = "-"


@dataclass(frozen=True, slots=True)
class Change:
    action: Action
    before: Record | None
    after: Record | None

    @property
    def record(self) -> Record:
        record = self.after or self.before
        assert record is not None
        return record


@dataclass(frozen=True, slots=True)
class ChangeSet:
    provider: str
    changes: tuple[Change, ...]

    def __bool__(self) -> bool:
        return bool(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def render_text(self) -> str:
        if not self.changes:
            return f"{self.provider}: no changes"
        lines = [f"{self.provider}: {len(self.changes)} change(s)"]
        for change in self.changes:
            r = change.record
            what = f"{r.name} [{r.group}] {r.region} -> {r.target}"
            if change.action is Action.UPDATE and change.before is not None:
                lines.append(f"  ~ {what} weight {change.before.weight} => {r.weight}")
            else:
                lines.append(f"  {change.action.value} {what} weight {r.weight}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "changes": [
                {
                    "action": c.action.name.lower(),
                    "before": asdict(c.before) if c.before else None,
                    "after": asdict(c.after) if c.after else None,
                }
                for c in self.changes
            ],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def diff(provider: str, desired: Iterable[Record], current: Iterable[Record]) -> ChangeSet:
    """The changes that turn `current` into `desired`; records are matched by key."""
    want = {r.key: r for r in desired}
    have = {r.key: r for r in current}
    changes: list[Change] = []
    for key in sorted(want.keys() | have.keys()):
        before, after = have.get(key), want.get(key)
        if before is None and after is not None:
            changes.append(Change(Action.CREATE, None, after))
        elif after is None and before is not None:
            changes.append(Change(Action.DELETE, before, None))
        elif before != after:
            changes.append(Change(Action.UPDATE, before, after))
    return ChangeSet(provider, tuple(changes))
