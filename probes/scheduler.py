"""ProbeScheduler: runs every enabled probe of every region on its own jittered period, over one session."""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import aiohttp

from controlplane.policy import Policy, ProbeSettings, Region
from controlplane.stats import quantile
from probes.http import Clock, make_session, probe_liveness
from probes.inference import probe_inference
from probes.loop import LoopMonitor
from probes.metrics import probe_metrics
from probes.observation import Observation, ProbeKind

log = logging.getLogger(__name__)

ProbeFunction = Callable[[aiohttp.ClientSession, Region, ProbeSettings, Clock], Awaitable[Observation]]
Sink = Callable[[Observation], None]
Transitioning = Callable[[str, ProbeKind], bool]
Key = tuple[str, ProbeKind]

# A probe due this long ago (or an eighth of its timeout, if less) is shed rather than started (see _fire).
# Tighter bounds shed more after a lone garbage-collector pause; looser ones let a 2x overload tip into
# timeouts (bench/probes.py shows both).
SHED_LAG = 0.05
OVERLOAD_LOG_EVERY = 10.0
# Before the first round, a target that could not be looked at this many times in a row counts as looked
# at (see _missed): a plane that keeps stalling must still come to a first round, or it never reconciles.
FIRST_ROUND_TRIES = 3

DEFAULT_PROBES: Mapping[ProbeKind, ProbeFunction] = MappingProxyType(
    {
        ProbeKind.LIVENESS: probe_liveness,
        ProbeKind.INFERENCE: probe_inference,
        ProbeKind.METRICS: probe_metrics,
    }
)


def _never(region: str, kind: ProbeKind) -> bool:
    return False


class ScheduleStats:
    """Launch counts and schedule lag (actual start - intended start) over a window of recent launches."""

    def __init__(self, window: int = 65_536) -> None:
        self.launched = 0
        self.skipped = 0  # due, but the (region, kind) already had max_in_flight probes running
        self.shed = 0  # due, but the scheduler was too far behind to start it in time
        self.completed = 0
        self.inconclusive = 0  # completed, but the plane could not look (see ProbeScheduler); not reported
        self._lags: deque[float] = deque(maxlen=window)

    def record_lag(self, lag: float) -> None:
        self._lags.append(lag)

    def quantile(self, q: float) -> float:
        """Lag in seconds at quantile q (0..1) of the window; 0.0 before any launch."""
        return quantile(self._lags, q) or 0.0

    @property
    def p50(self) -> float:
        return self.quantile(0.50)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    def reset(self) -> None:
        self.launched = self.skipped = self.shed = self.completed = self.inconclusive = 0
        self._lags.clear()


@dataclass(slots=True, eq=False)
class _Target:
    region: Region
    kind: ProbeKind
    due: float = 0.0  # loop time of the next intended start
    entry: int = -1  # sequence number of its live heap entry; -1 once retired
    in_flight: int = 0
    missed: int = 0  # inconclusive results before its first conclusive one


class ProbeScheduler:
    """Probes start from one heap of due times driven by a single loop timer, never from per-target loops
    awaiting each probe: a hung region keeps producing a timeout result every period.

    One heap entry per target, rather than a loop TimerHandle each (with its context, bound method and
    argument tuple), keeps the live objects of 10,000 targets few, and so the garbage collector's pauses,
    which are the scheduler's worst lag, short.

    `run()` probes until cancelled (or `close()`); `close()` also releases the HTTP session.

    Only what the plane really saw reaches the sink. A result is inconclusive when the probe function says
    so (the plane's own descriptors ran out, say), or when it is a failure and `monitor` saw the event loop
    stall while the probe ran: its timeout may have run out while this process, not the region, was not
    answering. Inconclusive results are counted (`stats.inconclusive`) and dropped, so they count neither
    toward a verdict nor as a fresh look at the region: it keeps its verdict until its observations go
    stale. Successes always pass: a stall only ever makes a probe look worse than the region is.

    `first_round` is set once every target has reported a conclusive result, or, failing that, has come
    back inconclusive FIRST_ROUND_TRIES times in a row: a plane that stalls that often could wait forever,
    and the daemon, which changes nothing before the first round, would then never reconcile (overrides
    included). Such a region then has no observation at all, which is what the health view is told.
    """

    def __init__(
        self,
        policy: Policy,
        sink: Sink,
        is_transitioning: Transitioning = _never,
        *,
        probes: Mapping[ProbeKind, ProbeFunction] = DEFAULT_PROBES,
        max_in_flight: int = 4,
        first_spread: float | None = None,
        now: Clock = time.time,
        rng: random.Random | None = None,
        monitor: LoopMonitor | None = None,
    ) -> None:
        self._policy = policy
        self._sink = sink
        self._is_transitioning = is_transitioning
        self._probes = probes
        self._max_in_flight = max_in_flight
        # Seconds over which first probes are spread; None: a whole period (a one-shot `plan` wants less).
        self._first_spread = first_spread
        self._now = now
        self._rng = rng or random.Random()
        self._monitor = monitor
        self._targets: dict[Key, _Target] = {}
        self._heap: list[tuple[float, int, _Target]] = []
        self._sequence = itertools.count()
        self._wakeup: asyncio.TimerHandle | None = None
        self._ticking = False
        self._tasks: dict[asyncio.Task[None], _Target] = {}
        self._seen: set[Key] = set()
        self._unseen: set[Key] = set()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Future[None] | None = None
        self._overload_logged = -OVERLOAD_LOG_EVERY
        self.first_round = asyncio.Event()
        self.stats = ScheduleStats()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

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
            self._halt()

    def update_policy(self, policy: Policy) -> None:
        """Hot reload: add and remove targets; the others keep their schedule unless probe settings changed."""
        old, self._policy = self._policy.probes, policy
        if self._idle is not None:
            self._sync_targets(old)

    async def close(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        self._halt()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
        retired = [self._targets.pop(key) for key in self._targets.keys() - wanted.keys()]
        # A changed interval should not wait out the old, maybe much longer, period.
        respread = self._policy.probes != previous
        now = self._clock()
        for key, region in wanted.items():
            target = self._targets.get(key)
            if target is None:
                target = self._targets[key] = _Target(region, key[1])
            elif target.region != region:
                # Results from the old endpoint must not be reported as the new one's.
                retired.append(target)
                target = self._targets[key] = _Target(region, key[1])
            elif not respread:
                continue
            # The first start is spread over a whole normal period, so that many targets do not fire at
            # once; not over the fast one, though every new target counts as transitioning: 10,000 targets
            # in 0.2 s would be a 50,000 probes/s burst.
            period = self._base_period(target.kind)
            spread = period if self._first_spread is None else min(period, self._first_spread)
            self._schedule(target, now + self._rng.uniform(0, spread))
        self._retire(retired)
        if not self.first_round.is_set():
            self._unseen = wanted.keys() - self._seen
            self._check_first_round()

    def _retire(self, targets: Collection[_Target]) -> None:
        """Unschedule targets and cancel their probes; close() still awaits the cancelled ones."""
        if not targets:
            return
        for target in targets:
            target.entry = -1
        gone = set(targets)
        for task, target in self._tasks.items():
            if target in gone:
                task.cancel()

    def _halt(self) -> None:
        self._retire(list(self._targets.values()))
        self._targets.clear()
        self._heap.clear()
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None

    # ---------------------------------------------------------------- timing

    def _clock(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _base_period(self, kind: ProbeKind) -> float:
        settings = self._policy.probes
        if kind is ProbeKind.INFERENCE:
            return settings.inference.interval
        if kind is ProbeKind.METRICS:
            return settings.metrics.interval
        return settings.interval

    def _timeout(self, kind: ProbeKind) -> float:
        settings = self._policy.probes
        return settings.inference.timeout if kind is ProbeKind.INFERENCE else settings.timeout

    def _period(self, target: _Target) -> float:
        settings = self._policy.probes
        period = self._base_period(target.kind)
        if self._is_transitioning(target.region.name, target.kind):
            # Like HAProxy's fastinter: confirm a suspected change quickly, never probe slower for it.
            period = min(period, settings.fast_interval)
        return period

    def _jittered(self, period: float) -> float:
        jitter = self._policy.probes.jitter
        return period * (1.0 + self._rng.uniform(-jitter, jitter))

    def _schedule(self, target: _Target, due: float) -> None:
        """(Re)schedule a target; an earlier entry of it left in the heap is skipped when it comes up."""
        target.due = due
        target.entry = next(self._sequence)
        heapq.heappush(self._heap, (due, target.entry, target))
        if not self._ticking and (self._wakeup is None or due < self._wakeup.when()):
            self._arm(due)

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wakeup = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._wakeup = None
        now = self._clock()
        heap = self._heap
        self._ticking = True  # the targets fired below reschedule themselves; arm the timer once, after
        try:
            while heap and heap[0][0] <= now:
                _, entry, target = heapq.heappop(heap)
                if entry == target.entry:
                    self._fire(target, now)
        finally:
            self._ticking = False
        while heap and heap[0][1] != heap[0][2].entry:
            heapq.heappop(heap)  # stale entries at the top would only cause empty wake-ups
        if heap:
            self._arm(heap[0][0])

    def _fire(self, target: _Target, now: float) -> None:
        assert self._loop is not None
        lag = now - target.due
        self.stats.record_lag(lag)
        if lag > min(SHED_LAG, self._timeout(target.kind) / 8):
            # The loop is far behind: a probe started now would spend its timeout waiting for this process,
            # and report a healthy region as timed out. Skipping it lets the backlog drain; the region goes
            # stale (unknown) if this persists, never falsely unhealthy.
            self.stats.shed += 1
            if now - self._overload_logged >= OVERLOAD_LOG_EVERY:
                self._overload_logged = now
                log.warning(
                    "probe scheduler overloaded: %.0f ms behind; %d probes shed so far",
                    lag * 1e3,
                    self.stats.shed,
                )
        elif target.in_flight < self._max_in_flight:
            self.stats.launched += 1
            target.in_flight += 1
            task = self._loop.create_task(self._probe(target))
            self._tasks[task] = target
            task.add_done_callback(self._tasks.pop)
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
        started = self._clock()
        try:
            obs = await self._probes[kind](self._session, region, self._policy.probes, self._now)
        except Exception as exc:
            # A probe bug must not stop probing; the region reads as failing this probe, visibly.
            log.exception("%s probe of %s crashed", kind, region.name)
            obs = Observation(
                region.name,
                kind,
                False,
                self._now(),
                self._clock() - started,
                error=f"probe crashed: {type(exc).__name__}",
            )
        finally:
            target.in_flight -= 1
        self.stats.completed += 1
        if not obs.ok and self._monitor is not None and self._monitor.stalled_between(started, self._clock()):
            obs = dataclasses.replace(obs, inconclusive=True)
        if obs.inconclusive:
            # Nothing was learnt, so nothing starts a transition either: no pull-in of the next probe.
            self.stats.inconclusive += 1
            self._missed(target)
            return
        try:
            self._sink(obs)
        except Exception:
            log.exception("observation sink failed on %s %s", region.name, kind)
        self._looked_at(target)
        if self._is_transitioning(region.name, kind) and target.entry >= 0:
            # A result that starts (or continues) a transition pulls the next probe in, rather than
            # leaving it a whole normal period away.
            due = self._clock() + self._jittered(self._policy.probes.fast_interval)
            if due < target.due:
                self._schedule(target, due)

    def _looked_at(self, target: _Target) -> None:
        if not self.first_round.is_set():
            key = (target.region.name, target.kind)
            self._seen.add(key)
            self._unseen.discard(key)
            self._check_first_round()

    def _missed(self, target: _Target) -> None:
        """An inconclusive result; before the first round, enough of them in a row count as a look."""
        if not self.first_round.is_set():
            target.missed += 1
            if target.missed >= FIRST_ROUND_TRIES:
                self._looked_at(target)

    def _check_first_round(self) -> None:
        if not self._unseen:
            self.first_round.set()
            self._seen.clear()
