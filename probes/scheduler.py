"""ProbeScheduler: runs every enabled probe of every region on its own jittered period, over one session."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import aiohttp

from controlplane.policy import Policy, ProbeSettings, Region
from probes.http import Clock, make_session, probe_liveness
from probes.inference import probe_inference
from probes.metrics import probe_metrics
from probes.observation import Observation, ProbeKind

log = logging.getLogger(__name__)

ProbeFunction = Callable[[aiohttp.ClientSession, Region, ProbeSettings, Clock], Awaitable[Observation]]
Sink = Callable[[Observation], None]
Transitioning = Callable[[str, ProbeKind], bool]
Key = tuple[str, ProbeKind]

DEFAULT_PROBES: Mapping[ProbeKind, ProbeFunction] = MappingProxyType(
    {ProbeKind.LIVENESS: probe_liveness, ProbeKind.INFERENCE: probe_inference, ProbeKind.METRICS: probe_metrics}
)


def _never(region: str, kind: ProbeKind) -> bool:
    return False


class ScheduleStats:
    """Launch counts and schedule lag (actual start - intended start) over a window of recent launches."""

    def __init__(self, window: int = 65_536) -> None:
        self.launched = 0
        self.skipped = 0  # due, but the (region, kind) already had max_in_flight probes running
        self.completed = 0
        self._lags: deque[float] = deque(maxlen=window)

    def record_lag(self, lag: float) -> None:
        self._lags.append(lag)

    def quantile(self, q: float) -> float:
        """Lag in seconds at quantile q (0..1) of the window; 0.0 before any launch."""
        if not self._lags:
            return 0.0
        ordered = sorted(self._lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return self.quantile(0.50)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    def reset(self) -> None:
        self.launched = self.skipped = self.completed = 0
        self._lags.clear()


@dataclass(slots=True, eq=False)
class _Target:
    region: Region
    kind: ProbeKind
    due: float = 0.0  # loop time of the next intended start
    timer: asyncio.TimerHandle | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def halt(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for task in self.tasks:
            task.cancel()


class ProbeScheduler:
    """Probes run on loop timers, not in per-target loops awaiting each probe: a hung region keeps
    producing a timeout result every period, and 10,000 targets cost timers, not sleeping tasks.

    `run()` probes until cancelled (or `close()`); `close()` also releases the HTTP session.
    """

    def __init__(
        self,
        policy: Policy,
        sink: Sink,
        is_transitioning: Transitioning = _never,
        *,
        probes: Mapping[ProbeKind, ProbeFunction] = DEFAULT_PROBES,
        max_in_flight: int = 4,
        now: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._sink = sink
        self._is_transitioning = is_transitioning
        self._probes = probes
        self._max_in_flight = max_in_flight
        self._now = now
        self._rng = rng or random.Random()
        self._targets: dict[Key, _Target] = {}
        self._seen: set[Key] = set()
        self._unseen: set[Key] = set()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Future[None] | None = None
        self._orphans: set[asyncio.Task[None]] = set()  # probes of removed targets, still finishing
        self.first_round = asyncio.Event()
        self.stats = ScheduleStats()

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def in_flight(self) -> int:
        return sum(len(t.tasks) for t in self._targets.values())

    async def run(self) -> None:
        """Schedule probes until cancelled or closed; calling it again after that resumes probing."""
        self._loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = make_session()
        self._idle = self._loop.create_future()
        self._sync_targets(self._policy.probes)
        try:
            await self._idle
        finally:
            self._idle = None
            self._halt_all()

    def update_policy(self, policy: Policy) -> None:
        """Hot reload: add and remove targets; the others keep their schedule unless probe settings changed."""
        old, self._policy = self._policy.probes, policy
        if self._idle is not None:
            self._sync_targets(old)

    async def close(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        tasks = self._halt_all()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---------------------------------------------------------------- targets

    def _kinds(self) -> tuple[ProbeKind, ...]:
        settings = self._policy.probes
        enabled = {
            ProbeKind.LIVENESS: True,
            ProbeKind.INFERENCE: settings.inference.enabled,
            ProbeKind.METRICS: settings.metrics.enabled,
        }
        return tuple(kind for kind, on in enabled.items() if on and kind in self._probes)

    def _sync_targets(self, previous: ProbeSettings) -> None:
        kinds = self._kinds()
        wanted = {(r.name, kind): r for r in self._policy.regions for kind in kinds}
        for key in self._targets.keys() - wanted.keys():
            self._retire(self._targets.pop(key))
        # A changed interval should not wait out the old, maybe much longer, period.
        respread = self._policy.probes != previous
        for key, region in wanted.items():
            target = self._targets.get(key)
            if target is None:
                target = self._targets[key] = _Target(region, key[1])
            elif target.region != region:
                # Results from the old endpoint must not be reported as the new one's.
                self._retire(target)
                target.region = region
            elif not respread:
                continue
            # The first start is spread over a whole period so that many targets do not fire at once.
            self._schedule(target, self._clock() + self._rng.uniform(0, self._period(target)))
        if not self.first_round.is_set():
            self._unseen = wanted.keys() - self._seen
            self._check_first_round()

    def _retire(self, target: _Target) -> None:
        """Stop a target's timer and probes; the cancelled probes are still awaited by close()."""
        target.halt()
        self._orphans |= target.tasks
        for task in target.tasks:
            task.add_done_callback(self._orphans.discard)
        target.tasks = set()

    def _halt_all(self) -> list[asyncio.Task[None]]:
        for target in self._targets.values():
            self._retire(target)
        self._targets.clear()
        return list(self._orphans)

    # ---------------------------------------------------------------- timing

    def _clock(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _period(self, target: _Target) -> float:
        settings = self._policy.probes
        if target.kind is ProbeKind.INFERENCE:
            period = settings.inference.interval
        elif target.kind is ProbeKind.METRICS:
            period = settings.metrics.interval
        else:
            period = settings.interval
        if self._is_transitioning(target.region.name, target.kind):
            # Like HAProxy's fastinter: confirm a suspected change quickly, never probe slower for it.
            period = min(period, settings.fast_interval)
        return period

    def _jittered(self, period: float) -> float:
        jitter = self._policy.probes.jitter
        return period * (1.0 + self._rng.uniform(-jitter, jitter))

    def _schedule(self, target: _Target, due: float) -> None:
        assert self._loop is not None
        if target.timer is not None:
            target.timer.cancel()
        target.due = due
        target.timer = self._loop.call_at(due, self._fire, target)

    def _fire(self, target: _Target) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.stats.record_lag(now - target.due)
        if len(target.tasks) < self._max_in_flight:
            self.stats.launched += 1
            task = self._loop.create_task(self._probe(target))
            target.tasks.add(task)
            task.add_done_callback(target.tasks.discard)
        else:
            self.stats.skipped += 1
        due = target.due + self._jittered(self._period(target))
        if due <= now:
            # The loop fell a whole period behind: start again from now rather than firing a catch-up burst.
            due = now + self._jittered(self._period(target))
        self._schedule(target, due)

    # ---------------------------------------------------------------- results

    async def _probe(self, target: _Target) -> None:
        region, kind = target.region, target.kind
        assert self._session is not None
        started = time.perf_counter()
        try:
            obs = await self._probes[kind](self._session, region, self._policy.probes, self._now)
        except Exception as exc:
            # A probe bug must not stop probing; the region reads as failing this probe, visibly.
            log.exception("%s probe of %s crashed", kind, region.name)
            obs = Observation(
                region.name, kind, False, self._now(), time.perf_counter() - started,
                error=f"probe crashed: {type(exc).__name__}",
            )
        self.stats.completed += 1
        try:
            self._sink(obs)
        except Exception:
            log.exception("observation sink failed on %s %s", region.name, kind)
        if not self.first_round.is_set():
            self._seen.add((region.name, kind))
            self._unseen.discard((region.name, kind))
            self._check_first_round()
        if self._is_transitioning(region.name, kind) and target.timer is not None:
            # A result that starts (or continues) a transition pulls the next probe in, rather than
            # leaving it a whole normal period away.
            due = self._clock() + self._jittered(self._policy.probes.fast_interval)
            if due < target.due:
                self._schedule(target, due)

    def _check_first_round(self) -> None:
        if not self._unseen:
            self.first_round.set()
            self._seen.clear()
