"""A drill's journal: everything that happened, timestamped, and enough on its own to re-render the report.

Times are seconds since the drill started, on the monotonic clock (the event loop's time minus the drill's
start), so a wall-clock step during a drill cannot reorder what happened. The journal keeps the order
events were appended in, which is not always time order (the load generator's buckets arrive at the end):
readers sort by `at` where order matters.

Reading and writing journal.json are synchronous; from async code call them through asyncio.to_thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import Field, JsonValue, TypeAdapter

from chaos.loadgen import LoadReport

FORMAT = 1
MAX_EVENTS = 100_000
Params = Mapping[str, JsonValue]


@dataclass(frozen=True, slots=True)
class _Fault:
    at: float
    fault: str  # the fault's id within the drill, the same on its start and its end
    kind: str  # region, network, provider, bucket, daemon
    region: str | None  # the region it breaks; None for a fault of the plane or its provider
    params: Params = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FaultStarted(_Fault):
    event: Literal["fault_started"] = "fault_started"


@dataclass(frozen=True, slots=True)
class FaultEnded(_Fault):
    event: Literal["fault_ended"] = "fault_ended"


@dataclass(frozen=True, slots=True)
class RegionHealth:
    state: str  # probes.health.State's values: healthy, unhealthy, unknown
    score: float | None = None


@dataclass(frozen=True, slots=True)
class HealthSample:
    at: float
    regions: Mapping[str, RegionHealth]
    event: Literal["health"] = "health"


@dataclass(frozen=True, slots=True)
class PlanSample:
    at: float
    service: str
    weights: Mapping[str, Mapping[str, int]]  # group -> region -> weight; a region left out has 0
    event: Literal["plan"] = "plan"


@dataclass(frozen=True, slots=True)
class DnsSample:
    at: float
    answers: Mapping[str, frozenset[str]]  # group -> the regions the embedded DNS answers it with
    event: Literal["dns"] = "dns"


@dataclass(frozen=True, slots=True)
class OverrideSample:
    """The overrides in force, as the admin API listed them; none is taken when it could not be asked (a
    daemon being restarted), so a missing sample is no override lost."""

    at: float
    overrides: tuple[tuple[str, str], ...]  # (region, action)
    event: Literal["overrides"] = "overrides"


ALL_GROUPS = "*"


@dataclass(frozen=True, slots=True)
class ClientBucket:
    """Client requests started in [at, at + width) that reached `region` (loadgen.NO_REGION: none).

    The load generator's series does not split buckets by group, so theirs carry ALL_GROUPS.
    """

    at: float
    width: float
    region: str
    successes: int
    failures: int
    group: str = ALL_GROUPS
    event: Literal["clients"] = "clients"

    @property
    def requests(self) -> int:
        return self.successes + self.failures


@dataclass(frozen=True, slots=True)
class LoadTotals:
    """The load generator's own counts at its end: exact where its series and outcomes are bounded."""

    at: float
    successes: Mapping[str, int]  # region -> requests that succeeded
    failures: Mapping[str, Mapping[str, int]]  # region -> reason -> requests
    residency_violations: int
    skipped: int
    event: Literal["load_totals"] = "load_totals"


@dataclass(frozen=True, slots=True)
class SteadyState:
    at: float
    phase: Literal["before", "after"]
    held: bool
    details: tuple[str, ...] = ()  # one line per check, what was seen
    event: Literal["steady_state"] = "steady_state"


@dataclass(frozen=True, slots=True)
class ExpectationResult:
    at: float
    name: str  # the expectation's key in the drill file: leaves_dns, max_client_failures, ...
    params: Params
    passed: bool
    observed: JsonValue  # what was measured, None when nothing could be
    message: str = ""
    event: Literal["expectation"] = "expectation"


Event = (
    FaultStarted
    | FaultEnded
    | HealthSample
    | PlanSample
    | DnsSample
    | OverrideSample
    | ClientBucket
    | LoadTotals
    | SteadyState
    | ExpectationResult
)
E = TypeVar("E", bound=Event)
_EVENT: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="event")])
# What the report cannot do without: never dropped when the journal is full, and few by construction.
_KEPT = (FaultStarted, FaultEnded, SteadyState, ExpectationResult, LoadTotals)


def event_to_json(event: Event) -> dict[str, Any]:
    dumped: dict[str, Any] = _EVENT.dump_python(event, mode="json")
    return dumped


def event_from_json(data: object) -> Event:
    """Raises pydantic.ValidationError on anything that is not an event of a known kind."""
    return _EVENT.validate_python(data)


def client_events(
    report: LoadReport, offset: float, width: float, at: float
) -> list[ClientBucket | LoadTotals]:
    """A load report in journal form: `offset` is the load's start in drill time (loadgen's started_at minus
    the drill's start), `width` its bucket setting, `at` when the report was taken."""
    buckets: list[ClientBucket | LoadTotals] = [
        ClientBucket(offset + b.start, width, b.region, b.successes, b.failures) for b in report.series
    ]
    totals = LoadTotals(
        at,
        {region: s.successes for region, s in report.by_region.items()},
        {region: {r.value: n for r, n in s.failures.items()} for region, s in report.by_region.items()},
        report.residency_violations,
        report.skipped,
    )
    return [*buckets, totals]


class Journal:
    """Append-only and bounded: past `limit` events, samples are counted in `dropped` and not kept, while
    faults, steady-state checks, expectations and load totals still are (the report needs them)."""

    def __init__(self, drill: str, description: str = "", started: str = "", limit: int = MAX_EVENTS) -> None:
        self.drill = drill
        self.description = description
        self.started = started  # the wall-clock start, ISO 8601, for people; measurements never use it
        self.limit = limit
        self.dropped = 0
        self._events: list[Event] = []

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    def append(self, event: Event) -> None:
        if len(self._events) >= self.limit and not isinstance(event, _KEPT):
            self.dropped += 1
            return
        self._events.append(event)

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.append(event)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one kind, by time (stable: equal times keep the order they were appended in)."""
        return sorted((e for e in self._events if isinstance(e, kind)), key=lambda e: e.at)

    @property
    def end(self) -> float:
        return max((e.at for e in self._events), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "drill": self.drill,
            "description": self.description,
            "started": self.started,
            "dropped": self.dropped,
            "events": [event_to_json(e) for e in self._events],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], limit: int = MAX_EVENTS) -> Self:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a journal of format {FORMAT}: {data.get('format')!r}")
        journal = cls(str(data["drill"]), str(data.get("description", "")), str(data.get("started", "")))
        journal.limit = max(limit, len(data["events"]))  # what was kept when written is kept when read
        journal.dropped = int(data.get("dropped", 0))
        journal.extend(event_from_json(e) for e in data["events"])
        return journal

    def write(self, path: Path) -> None:
        """Replaces `path` atomically, so a reader never sees half a journal."""
        part = path.with_name(path.name + ".part")
        part.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        os.replace(part, path)

    @classmethod
    def load(cls, path: Path) -> Self:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
