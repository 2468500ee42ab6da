"""The safety gate for one-shot applies: a change set that deletes too much of what a provider owns, or
touches a name the policy does not serve, is refused unless forced (octodns's TooMuchChange)."""

from __future__ import annotations

from collections.abc import Iterable

from controlplane.changes import Action, ChangeSet
from controlplane.errors import InvalidInput
from controlplane.policy import Policy, in_zone

DNS_TYPES = frozenset({"A", "AAAA", "CNAME", "TXT"})


class TooMuchChange(InvalidInput):
    """A change set the safety gate refused; `--force` applies it anyway."""

    exit_code = 3
    http_status = 409


def problems(changes: ChangeSet, owned: int, max_delete_share: float, policy: Policy) -> list[str]:
    """Why `changes` should not be applied without a second look; empty when it may be."""
    found: list[str] = []
    deletes = sum(1 for c in changes.changes if c.action is Action.DELETE)
    if owned and deletes / owned > max_delete_share:
        found.append(
            f"{changes.provider}: deletes {deletes} of the {owned} records it owns "
            f"({deletes / owned:.0%}, more than {max_delete_share:.0%})"
        )
    services = [s.dns_name for s in policy.services]
    outside = sorted(
        {
            c.record.name
            for c in changes.changes
            if c.record.rtype in DNS_TYPES and not any(in_zone(c.record.name, name) for name in services)
        }
    )
    if outside:
        found.append(f"{changes.provider}: touches names the policy does not serve: {outside[:5]}")
    return found


def check(items: Iterable[tuple[ChangeSet, int, float]], policy: Policy) -> None:
    """Raise TooMuchChange listing every problem of every (change set, owned records, max delete share)."""
    found = [p for changes, owned, share in items for p in problems(changes, owned, share, policy)]
    if found:
        raise TooMuchChange(
            "refused by the safety gate (use --force to apply anyway):\n  " + "\n  ".join(found)
        )
