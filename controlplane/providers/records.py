"""The record library every provider shares: rendering a plan to weighted records, and checking a change set
against what a provider holds before anything is sent."""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.changes import Action, ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import PermanentProviderError

MAX_WEIGHT = 100
RecordKey = tuple[str, str, str]


def dns_name(name: str) -> str:
    """The one spelling of a DNS name in records: lower case, no trailing dot, so case edits cause no churn."""
    return name.rstrip(".").lower()


def address_type(address: str) -> str:
    """The DNS record type that answers with `address`: AAAA for IPv6, A otherwise."""
    return "AAAA" if ":" in address else "A"


def render_records(policy: Policy, plan: RoutingPlan) -> list[Record]:
    """One weighted record per (service, client group, allowed region) in `plan`, weight-0 ones included.

    Weight-0 records are kept so a drained region stays visible in `current()` and diffs; regions the
    group may not use (residency) get no record at all, and a plan weighting one is refused.
    """
    services = {s.name: s for s in policy.services}
    groups = {g.name: g for g in policy.client_groups}
    records: dict[RecordKey, Record] = {}
    for group_plan in plan:
        service = services.get(group_plan.service)
        group = groups.get(group_plan.group)
        if service is None or group is None:
            raise PermanentProviderError(
                f"plan names service {group_plan.service!r} / client group {group_plan.group!r}, "
                "which the policy does not define"
            )
        allowed = policy.allowed_regions(service, group)
        allowed_names = {r.name for r in allowed}
        forbidden = sorted(
            w.region for w in group_plan.weights if w.weight > 0 and w.region not in allowed_names
        )
        if forbidden:
            raise PermanentProviderError(
                f"plan sends {service.name}/{group.name} traffic to {forbidden}, which residency forbids"
            )
        for region in allowed:
            record = Record(
                name=dns_name(service.dns_name),
                group=group.name,
                region=region.name,
                target=region.dns_address,
                weight=group_plan.weight(region.name),
                ttl=service.ttl,
                rtype=address_type(region.dns_address),
            )
            if record.key in records:
                raise PermanentProviderError(f"plan lists {service.name}/{group.name} more than once")
            records[record.key] = record
    return sorted(records.values())


def apply_changes(
    provider: str, held: Mapping[RecordKey, Record], changes: ChangeSet
) -> dict[RecordKey, Record]:
    """The records after `changes`, computed on a copy; raises listing every problem and leaves `held` as is.

    A change must match what is held: creating an existing key, or updating or deleting a missing one or
    one that changed since the change set was planned, is refused, as is the whole change set with it.
    """
    if changes.provider != provider:
        raise PermanentProviderError(f"change set for provider {changes.provider!r} sent to {provider!r}")
    after = dict(held)
    problems: list[str] = []
    for change in changes.changes:
        key = change.record.key
        if change.action is Action.UPDATE and (change.before is None or change.before.key != key):
            problems.append(f"{key}: an update must name the same record before and after")
        if change.after is not None and not 0 <= change.after.weight <= MAX_WEIGHT:
            problems.append(f"{key}: weight {change.after.weight} is outside 0..{MAX_WEIGHT}")
        if change.action is Action.CREATE:
            if key in after:
                problems.append(f"{key}: create, but the record exists")
        elif key not in after:
            problems.append(f"{key}: {change.action.name.lower()}, but there is no such record")
        elif change.before is not None and after[key] != change.before:
            problems.append(f"{key}: changed since the change set was planned")
        if change.action is Action.DELETE:
            after.pop(key, None)
        elif change.after is not None:
            after[key] = change.after
    if problems:
        raise PermanentProviderError(f"{provider}: change set refused: " + "; ".join(problems))
    return after
