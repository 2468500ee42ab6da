"""Traffic profiles: requests per second by hour of the week per client group, the tokens each request
carries, and the model weights a policy keeps in its buckets, for the cost model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from controlplane.cost.report import HOURS_PER_WEEK
from controlplane.policy import Policy, Service
from controlplane.yamldoc import DocumentError, parse_document, quoted, read_text

HOURS_PER_DAY = 24
WEEKDAYS = 5  # Monday to Friday; hour 0 of the week is Monday 00:00 UTC

Rate = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]
Ref = Annotated[str, Field(min_length=1, max_length=63)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Hourly(_Frozen):
    hourly: Annotated[tuple[Rate, ...], Field(min_length=HOURS_PER_WEEK, max_length=HOURS_PER_WEEK)] = Field(
        description="168 rates, Monday 00:00 UTC first"
    )

    def at(self, hour_of_week: int) -> float:
        return self.hourly[hour_of_week]


class WeekShape(_Frozen):
    weekday: Annotated[tuple[Rate, ...], Field(min_length=HOURS_PER_DAY, max_length=HOURS_PER_DAY)] = Field(
        description="24 rates, 00:00 UTC first, for Monday to Friday"
    )
    weekend: Annotated[tuple[Rate, ...], Field(min_length=HOURS_PER_DAY, max_length=HOURS_PER_DAY)] = Field(
        description="24 rates, 00:00 UTC first, for Saturday and Sunday"
    )

    def at(self, hour_of_week: int) -> float:
        day, hour = divmod(hour_of_week, HOURS_PER_DAY)
        return (self.weekday if day < WEEKDAYS else self.weekend)[hour]


def _rate_kind(value: object) -> str:
    """Which form a rate is written in, so a mistake in one form is not reported against the other two."""
    if isinstance(value, dict):
        return "hourly" if "hourly" in value else "week"
    if isinstance(value, Hourly | WeekShape):
        return "hourly" if isinstance(value, Hourly) else "week"
    return "rate"


# A streamed reply sends one server-sent event per token, each a whole OpenAI chunk of JSON: 225 B per token
# from the simulated regions (22,470 B for 100 tokens), 243 B for vLLM serving Llama-3.1-8B-Instruct (its
# longer model id). A prompt, and a reply that is not streamed, are plain text: about 4 B per token.
STREAMED_BYTES_PER_TOKEN = 230.0
TEXT_BYTES_PER_TOKEN = 4.0


class GroupTraffic(_Frozen):
    service: Ref | None = Field(default=None, description="The service; optional when the policy has one")
    tokens_in: Annotated[float, Field(ge=0, le=1e7)] = Field(description="Prompt tokens per request")
    tokens_out: Annotated[float, Field(ge=0, le=1e7)] = Field(description="Output tokens per request")
    bytes_per_token: Annotated[float, Field(gt=0, le=1e4)] = Field(
        default=STREAMED_BYTES_PER_TOKEN,
        description="Response bytes on the wire per output token: ~230 streamed (SSE), ~4 not streamed",
    )
    home: Ref | None = Field(
        default=None,
        description="The region near the clients: traffic served elsewhere pays inter-region egress",
    )
    requests_per_s: Annotated[
        Annotated[Rate, Tag("rate")] | Annotated[Hourly, Tag("hourly")] | Annotated[WeekShape, Tag("week")],
        Discriminator(_rate_kind),
    ] = Field(description="A number; {hourly: [168]}; or {weekday: [24], weekend: [24]}")

    def rps(self, hour_of_week: int) -> float:
        """Requests per second in hour `hour_of_week` (0: Monday 00:00-01:00 UTC, 167: Sunday 23:00)."""
        if not 0 <= hour_of_week < HOURS_PER_WEEK:
            raise ValueError(f"hour of the week {hour_of_week} is outside 0..{HOURS_PER_WEEK - 1}")
        rate = self.requests_per_s
        return rate if isinstance(rate, float | int) else rate.at(hour_of_week)

    def service_of(self, policy: Policy) -> Service | None:
        """The service this traffic is for: the named one, or the policy's only one; None if neither."""
        if self.service is None:
            return policy.services[0] if len(policy.services) == 1 else None
        return next((s for s in policy.services if s.name == self.service), None)


class ModelFootprint(_Frozen):
    size_gb: Annotated[float, Field(gt=0, le=1e6)] = Field(description="One version's weights, GB")
    updates_per_month: Annotated[float, Field(ge=0, le=10_000)] = Field(
        description="New versions synced to every region per month"
    )
    files: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=1, description="Objects per version (each a PUT at every destination)"
    )
    source: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$", max_length=129)] = (
        Field(description="Where the source bucket is, as cloud/region in the price sheets: aws/us-east-1")
    )

    @property
    def cloud(self) -> str:
        return self.source.split("/", 1)[0]

    @property
    def region(self) -> str:
        return self.source.split("/", 1)[1]


class TrafficProfile(_Frozen):
    version: Literal[1]
    groups: dict[Ref, GroupTraffic] = Field(default_factory=dict)
    models: dict[Ref, ModelFootprint] = Field(default_factory=dict)


class TrafficError(DocumentError):
    """A traffic profile that cannot be used; carries every problem found, each at FILE:LINE:COL."""


def _file_path(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Without the form pydantic names (`requests_per_s.week.weekday` is `requests_per_s.weekday`)."""
    if len(loc) > 3 and loc[0] == "groups" and loc[2] == "requests_per_s":
        return (*loc[:3], *loc[4:])
    return loc


def parse_traffic(text: str, filename: str = "<traffic>") -> TrafficProfile:
    parsed = parse_document(
        text,
        filename,
        TrafficProfile,
        what="traffic profile",
        expected="a mapping with version and groups",
        file_path=_file_path,
        error=TrafficError,
    )
    if parsed.problems:
        raise TrafficError(parsed.problems)
    return parsed.value


def load_traffic(path: Path) -> TrafficProfile:
    try:
        text = read_text(Path(path), "traffic profile")
    except DocumentError as exc:
        raise TrafficError(exc.problems) from None
    return parse_traffic(text, str(path))


def check_traffic(policy: Policy, profile: TrafficProfile) -> list[str]:
    """What the profile names that the policy does not have: groups, services, home regions, models."""
    return list(_unknown(policy, profile))


def _unknown(policy: Policy, profile: TrafficProfile) -> Iterator[str]:
    groups = sorted(g.name for g in policy.client_groups)
    services = sorted(s.name for s in policy.services)
    regions = sorted(r.name for r in policy.regions)
    models = sorted(m.name for m in policy.models)
    for name, group in profile.groups.items():
        if name not in groups:
            yield f"groups.{name}: unknown client group {quoted(name)}; defined: {quoted(groups)}"
        if group.service is None and len(services) > 1:
            yield f"groups.{name}.service: required, the policy has several services: {quoted(services)}"
        elif group.service is not None and group.service not in services:
            yield f"groups.{name}.service: unknown service {quoted(group.service)}; defined: {quoted(services)}"
        if group.home is not None and group.home not in regions:
            yield f"groups.{name}.home: unknown region {quoted(group.home)}; defined: {quoted(regions)}"
    for name in profile.models:
        if name not in models:
            yield f"models.{name}: unknown model {quoted(name)}; the policy defines {quoted(models)}"
