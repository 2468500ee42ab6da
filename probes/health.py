"""HealthView: observations folded into per-region health with rise/fall hysteresis, staleness and a score."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from controlplane.policy import HealthSettings, Policy
from probes.observation import Observation, ProbeKind

# Kinds whose failure takes a region out. Metrics only inform the score: a broken /metrics endpoint
# says nothing about whether the region can serve a completion.
DECISIVE_KINDS = (ProbeKind.LIVENESS, ProbeKind.INFERENCE)
_EWMA_ALPHA = 0.3


class State(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class KindHealth:
    """Hysteresis state of one probe kind of one region."""

    healthy: bool | None  # None: no verdict yet
    streak: int  # consecutive results contradicting `healthy`
    changed_at: float  # when `healthy` last flipped between True and False; 0.0 if never
    last: Observation
    ttft_ewma: float | None = None
    streak_since: float = 0.0  # when the current contradicting streak began
    # Seconds of unbroken success the next recovery needs: HealthSettings.recover_after, doubled for each
    # failure that came within flap_window of the recovery before it (a flapping region waits longer).
    hold: float = 0.0
    # metrics: the last good read of the output-token counter (at, count) and the rate it last gave
    tokens_out: tuple[float, float] | None = None
    tokens_out_per_s: float | None = None

    @property
    def transitioning(self) -> bool:
        return self.healthy is None or self.streak > 0


Kinds = Mapping[tuple[str, ProbeKind], KindHealth]


def token_rate(
    previous: KindHealth | None, obs: Observation
) -> tuple[tuple[float, float] | None, float | None]:
    """The output-token counter's last good read and its rate per second since the read before it.

    A failed scrape changes neither: the next good one measures over the whole gap. The first read gives no
    rate; a counter that went down (the server restarted) gives none for that interval, so the rate before
    it stands until the next interval measures again.
    """
    sample = previous.tokens_out if previous else None
    rate = previous.tokens_out_per_s if previous else None
    if not obs.ok:
        return sample, rate
    if obs.output_tokens is None:
        return None, None  # the server stopped exporting it: no figure rather than an old one
    read = (obs.at, obs.output_tokens)
    if sample is None:
        return read, None
    elapsed, counted = obs.at - sample[0], obs.output_tokens - sample[1]
    if elapsed <= 0:
        return sample, rate
    return read, counted / elapsed if counted >= 0 else rate


def advance(previous: KindHealth | None, obs: Observation, settings: HealthSettings) -> KindHealth:
    """One observation through rise/fall hysteresis and flap damping. The first verdict needs no streak: it
    is not a guess, it is the first fact, and start-up waits for it. A recovery needs `rise` successes in a
    row and, since the last failure, `hold` seconds of them, which doubles with each flap."""
    # Only a metrics scrape reads the token counter; other kinds keep nothing of it.
    counted = token_rate(previous, obs) if obs.kind is ProbeKind.METRICS else (None, None)
    ttft = previous.ttft_ewma if previous else None
    if obs.ok and obs.ttft_s is not None:
        ttft = obs.ttft_s if ttft is None else _EWMA_ALPHA * obs.ttft_s + (1 - _EWMA_ALPHA) * ttft
    if previous is None or previous.healthy is None:
        return KindHealth(obs.ok, 0, 0.0, obs, ttft, 0.0, settings.recover_after, *counted)
    if obs.ok == previous.healthy:
        return KindHealth(previous.healthy, 0, previous.changed_at, obs, ttft, 0.0, previous.hold, *counted)
    streak = previous.streak + 1
    since = obs.at if previous.streak == 0 else previous.streak_since
    if previous.healthy:
        if streak >= settings.fall:
            recovered = previous.changed_at
            flapped = recovered > 0.0 and obs.at - recovered < settings.flap_window
            base = max(previous.hold, settings.recover_after)
            hold = min(settings.max_recover_after, 2 * base) if flapped else settings.recover_after
            return KindHealth(False, 0, obs.at, obs, ttft, 0.0, hold, *counted)
    elif streak >= settings.rise and obs.at - since >= previous.hold:
        return KindHealth(True, 0, obs.at, obs, ttft, 0.0, previous.hold, *counted)
    return KindHealth(
        previous.healthy, streak, previous.changed_at, obs, ttft, since, previous.hold, *counted
    )


class HealthTracker:
    """What the health view remembers between observations: one KindHealth per (region, kind), replaced
    through the pure advance(), so an observation costs O(1) however many regions are probed."""

    def __init__(self) -> None:
        self.kinds: dict[tuple[str, ProbeKind], KindHealth] = {}

    def observe(self, obs: Observation, settings: HealthSettings) -> None:
        key = (obs.region, obs.kind)
        self.kinds[key] = advance(self.kinds.get(key), obs, settings)

    def forget_regions(self, keep: Iterable[str]) -> None:
        """Drop the memory of regions no longer in the policy (hot reload)."""
        wanted = set(keep)
        self.kinds = {k: v for k, v in self.kinds.items() if k[0] in wanted}

    def transitioning(self, region: str, kind: ProbeKind) -> bool:
        kh = self.kinds.get((region, kind))
        return kh is None or kh.transitioning


@dataclass(frozen=True, slots=True)
class RegionHealth:
    region: str
    state: State
    score: float  # 0..1; 0 unless healthy
    since: float  # when the region last recovered from unhealthy; 0.0 if it never failed
    reasons: tuple[str, ...]
    last_observed: float | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    queue_depth: float | None = None
    kv_cache_usage: float | None = None
    tokens_out_per_s: float | None = None  # output tokens/s the server counted, from its last two scrapes


@dataclass(frozen=True, slots=True)
class HealthView:
    at: float
    regions: Mapping[str, RegionHealth]

    def get(self, region: str) -> RegionHealth:
        return self.regions.get(region) or RegionHealth(region, State.UNKNOWN, 0.0, 0.0, ("never observed",))


def enabled_kinds(policy: Policy) -> tuple[ProbeKind, ...]:
    kinds = [ProbeKind.LIVENESS]
    if policy.probes.inference.enabled:
        kinds.append(ProbeKind.INFERENCE)
    if policy.probes.metrics.enabled:
        kinds.append(ProbeKind.METRICS)
    return tuple(kinds)


def _headroom(value: float | None, target: float) -> float:
    """1 up to the target, then falling as target/value: twice the target halves the share."""
    if value is None or value <= target:
        return 1.0
    return target / value


def score(settings: HealthSettings, ttft: float | None, queue: float | None, kv: float | None) -> float:
    kv_factor = 1.0
    if kv is not None and kv > settings.kv_cache_target:
        kv_factor = (
            max(0.0, (1.0 - kv) / (1.0 - settings.kv_cache_target)) if settings.kv_cache_target < 1 else 1.0
        )
    raw = _headroom(ttft, settings.ttft_target) * _headroom(queue, settings.queue_target) * kv_factor
    return round(max(settings.min_score, min(1.0, raw)), 4)


def region_health(kinds: Kinds, policy: Policy, region: str, now: float) -> RegionHealth:
    settings = policy.health
    decisive = [k for k in enabled_kinds(policy) if k in DECISIVE_KINDS]
    reasons: list[str] = []
    verdicts: list[State] = []
    since = 0.0
    last_seen: float | None = None
    for kind in decisive:
        kh = kinds.get((region, kind))
        if kh is None:
            verdicts.append(State.UNKNOWN)
            reasons.append(f"{kind}: no result yet")
            continue
        last_seen = max(last_seen or 0.0, kh.last.at)
        if now - kh.last.at > settings.stale_after:
            verdicts.append(State.UNKNOWN)
            reasons.append(f"{kind}: stale ({now - kh.last.at:.1f}s old)")
        elif kh.healthy:
            verdicts.append(State.HEALTHY)
            since = max(since, kh.changed_at)
        else:
            verdicts.append(State.UNHEALTHY)
            if kh.last.ok:
                reasons.append(
                    f"{kind}: recovering, healthy for {now - kh.streak_since:.1f}s of the "
                    f"{kh.hold:g}s a recovery needs"
                )
            else:
                reasons.append(f"{kind}: {kh.last.error or 'failing'}")
    metrics = kinds.get((region, ProbeKind.METRICS))
    fresh_metrics = (
        metrics.last
        if metrics and metrics.last.ok and now - metrics.last.at <= settings.stale_after
        else None
    )
    inference = kinds.get((region, ProbeKind.INFERENCE))
    ttft = inference.ttft_ewma if inference else None
    tokens_per_s = inference.last.tokens_per_s if inference and inference.last.ok else None
    queue = fresh_metrics.queue_depth if fresh_metrics else None
    kv = fresh_metrics.kv_cache_usage if fresh_metrics else None
    tokens_out_per_s = metrics.tokens_out_per_s if metrics and fresh_metrics else None
    if State.UNHEALTHY in verdicts:
        overall = State.UNHEALTHY
    elif State.UNKNOWN in verdicts:
        overall = State.UNKNOWN
    else:
        overall = State.HEALTHY
    value = score(settings, ttft, queue, kv) if overall is State.HEALTHY else 0.0
    return RegionHealth(
        region,
        overall,
        value,
        since,
        tuple(reasons),
        last_seen,
        ttft,
        tokens_per_s,
        queue,
        kv,
        tokens_out_per_s,
    )


def health_view(kinds: Kinds, policy: Policy, now: float) -> HealthView:
    """An immutable snapshot: safe to hand to decide() in another thread while observations go on."""
    return HealthView(
        at=now,
        regions=MappingProxyType({r.name: region_health(kinds, policy, r.name, now) for r in policy.regions}),
    )
