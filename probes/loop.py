"""LoopMonitor: how late the event loop runs, and when it stalled, so that "I could not look" is no evidence.

Probes share the daemon's event loop. A callback that holds the loop for seconds (parsing a huge body, a
garbage-collector pause, a starved VM) makes every probe in flight time out although every region
answered: judged as seen, that would fail the whole fleet over. The monitor wakes every `interval` and
measures how late it woke; a wake-up later than `threshold` is a stall, kept as the span of loop time it
may have covered, so that the probe scheduler can ask whether a probe ran through one.

All times here are the event loop's clock, `loop.time()`: monotonic seconds (time.monotonic() for the
default loop; virtual in tests), never wall-clock time, which jumps. Compare `last_stall_end` and the
arguments of `stalled_between` with `asyncio.get_running_loop().time()`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)

INTERVAL = 0.1
# Probe scheduling already sheds what is 50 ms late, and a garbage-collector pause of 10,000 targets is
# tens of ms: half a second is no ordinary hiccup, and is a real share of a 2 s probe timeout.
THRESHOLD = 0.5
# Stalls are remembered at least as long as the longest probe may run (inference: 10 s by default), and
# the maximum lag is reported over the same window.
WINDOW = 300.0
LOG_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class Stall:
    """The loop could not run its callbacks at some time in (start, end): the monitor's last on-time tick
    and the late one. The block itself may have begun anywhere after `start`, so the whole span counts."""

    start: float
    end: float

    def overlaps(self, start: float, end: float) -> bool:
        return self.start < end and start < self.end


@dataclass(frozen=True, slots=True)
class LoopLag:
    """The monitor's bookkeeping, pure: `tick(now)` returns the state after a wake-up at loop time `now`."""

    interval: float = INTERVAL
    threshold: float = THRESHOLD
    window: float = WINDOW
    last_tick: float | None = None  # None while no monitor runs: nothing is then known to be late
    lag: float = 0.0  # of the last wake-up
    # (tick time, lag) with lags strictly decreasing: the largest lag in the window is always the first,
    # and a tick drops every older entry it outdoes, so the tuple stays a handful long.
    peaks: tuple[tuple[float, float], ...] = ()
    stalls: tuple[Stall, ...] = ()  # those that ended within the window, oldest first
    stall_count: int = 0
    last_stall_end: float | None = None

    def started(self, now: float) -> LoopLag:
        return replace(self, last_tick=now)

    def stopped(self) -> LoopLag:
        return replace(self, last_tick=None)

    def tick(self, now: float) -> LoopLag:
        """A wake-up at `now` of a sleep of `interval` begun at the last tick."""
        if self.last_tick is None:
            return self.started(now)
        lag = max(0.0, now - self.last_tick - self.interval)
        horizon = now - self.window
        peaks = (*(p for p in self.peaks if p[0] > horizon and p[1] > lag), (now, lag))
        stalls = tuple(s for s in self.stalls if s.end > horizon)
        if lag <= self.threshold:
            return replace(self, last_tick=now, lag=lag, peaks=peaks, stalls=stalls)
        return replace(
            self,
            last_tick=now,
            lag=lag,
            peaks=peaks,
            stalls=(*stalls, Stall(self.last_tick, now)),
            stall_count=self.stall_count + 1,
            last_stall_end=now,
        )

    @property
    def max_lag(self) -> float:
        """The largest lag of the window, as of the last tick."""
        return self.peaks[0][1] if self.peaks else 0.0

    def overdue(self, now: float) -> Stall | None:
        """The stall going on at `now`, if the next wake-up is already later than the threshold.

        A stall is recorded only when the monitor runs again, and a probe that timed out in it may be
        resumed first, in the same turn of the loop: this is what tells the scheduler about it then.
        """
        if self.last_tick is None or now - self.last_tick - self.interval <= self.threshold:
            return None
        return Stall(self.last_tick, now)

    def stalled_between(self, start: float, end: float, now: float) -> bool:
        """Whether the loop stalled at some time in (start, end); `now` is the loop time of the question."""
        pending = self.overdue(now)
        return (pending is not None and pending.overlaps(start, end)) or any(
            s.overlaps(start, end) for s in reversed(self.stalls)
        )


class LoopMonitor:
    """Runs `run()` as a task on the loop it watches (supervised like the probe scheduler); cancelling it
    stops it, and a stopped monitor reports only the stalls it saw.

    For /metrics: `lag` (seconds late of the last wake-up), `max_lag` (over the last `window` seconds),
    `stalls` (count since start). For decisions: `stalled_between(start, end)` and `last_stall_end`, in
    loop time (see the module docstring).
    """

    def __init__(
        self, interval: float = INTERVAL, threshold: float = THRESHOLD, window: float = WINDOW
    ) -> None:
        if not 0 < interval < threshold:
            raise ValueError("the monitor must wake more often than the lag it calls a stall")
        self.state = LoopLag(interval, threshold, window)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged = -LOG_EVERY

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.state = self.state.started(loop.time())
        try:
            while True:
                await asyncio.sleep(self.state.interval)
                before = self.state.stall_count
                self.state = self.state.tick(loop.time())
                if self.state.stall_count != before:
                    self._log_stall()
        finally:
            self.state = self.state.stopped()

    def _log_stall(self) -> None:
        # A stall every second under attack must not flood the log: one line per LOG_EVERY at most.
        now = self.state.last_tick
        assert now is not None
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            log.warning(
                "event loop stalled for %.2f s; %d stalls so far; probe failures during a stall are ignored",
                self.state.lag,
                self.state.stall_count,
            )

    @property
    def lag(self) -> float:
        return self.state.lag

    @property
    def max_lag(self) -> float:
        return self.state.max_lag

    @property
    def stalls(self) -> int:
        return self.state.stall_count

    @property
    def last_stall_end(self) -> float | None:
        return self.state.last_stall_end

    def stalled_between(self, start: float, end: float) -> bool:
        """Whether the loop stalled at some time in (start, end), both loop times; a stall still going on
        (this very callback may be the first to run after it) counts."""
        now = end if self._loop is None else self._loop.time()
        return self.state.stalled_between(start, end, now)
