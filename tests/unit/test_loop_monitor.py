"""LoopMonitor: its pure bookkeeping (LoopLag) with tables and a property, the task on virtual time, and one
test against a really blocked loop."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.loop import LoopLag, LoopMonitor, Stall
from tests.fakes.clock import virtual_loop, virtual_time


def ticked(*times: float, threshold: float = 0.5, window: float = 300.0) -> LoopLag:
    state = LoopLag(interval=0.1, threshold=threshold, window=window).started(0.0)
    for now in times:
        state = state.tick(now)
    return state


def test_on_time_ticks_are_no_stall() -> None:
    state = ticked(0.1, 0.2, 0.32, 0.42)
    assert state.lag == pytest.approx(0.0)
    assert state.max_lag == pytest.approx(0.02)
    assert (state.stall_count, state.stalls, state.last_stall_end) == (0, (), None)


def test_a_late_tick_is_a_stall_spanning_from_the_last_on_time_one() -> None:
    state = ticked(0.1, 0.2, 1.0, 1.1)
    assert state.stall_count == 1
    assert state.stalls == (Stall(0.2, 1.0),)
    assert state.last_stall_end == 1.0
    assert state.lag == pytest.approx(0.0)
    assert state.max_lag == pytest.approx(0.7)


def test_lag_at_the_threshold_is_no_stall() -> None:
    assert ticked(0.1, 0.7, threshold=0.5).stall_count == 0
    assert ticked(0.1, 0.71, threshold=0.5).stall_count == 1


def test_stalls_and_peaks_leave_the_window_but_the_count_and_last_end_stay() -> None:
    state = ticked(0.1, 1.0, *(1.0 + 0.1 * i for i in range(1, 200)), window=10.0)
    assert state.stalls == ()
    assert state.max_lag == pytest.approx(0.0)
    assert (state.stall_count, state.last_stall_end) == (1, 1.0)


@pytest.mark.parametrize(
    ("start", "end", "stalled"),
    [
        (0.0, 0.1, False),  # ended before the stall's span
        (0.0, 0.2, False),  # ended at its start: the last on-time tick, the loop was running then
        (0.1, 0.3, True),
        (0.5, 0.7, True),  # within it
        (0.9, 1.5, True),
        (1.0, 1.5, False),  # began as the loop ran again
    ],
)
def test_stalled_between_is_overlap_with_a_stall(start: float, end: float, stalled: bool) -> None:
    state = ticked(0.1, 0.2, 1.0, 1.1, 1.2)
    assert state.stalled_between(start, end, now=1.25) is stalled


def test_a_stall_still_going_on_counts_before_it_is_recorded() -> None:
    state = ticked(0.1, 0.2)
    assert not state.stalled_between(0.15, 0.79, now=0.79)  # 0.59 s since the last tick: 0.49 s late
    assert state.stalled_between(0.15, 0.81, now=0.81)
    assert not state.stalled_between(0.0, 0.2, now=0.81)  # ended before the tick it overdue from
    assert not state.stopped().stalled_between(0.15, 5.0, now=5.0), "a stopped monitor is not late"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.1, 3.0), min_size=1, max_size=60))
def test_max_lag_is_the_largest_lag_within_the_window(gaps: list[float]) -> None:
    state = LoopLag(interval=0.1, window=5.0).started(0.0)
    now, lags = 0.0, []
    for gap in gaps:
        now += gap
        state = state.tick(now)
        lags.append((now, gap - 0.1))
    assert state.max_lag == pytest.approx(max(lag for at, lag in lags if at > now - 5.0))
    assert len(state.peaks) <= len(gaps)
    assert state.stall_count == sum(1 for _, lag in lags if lag > state.threshold)


def test_the_monitor_must_wake_more_often_than_a_stall() -> None:
    with pytest.raises(ValueError):
        LoopMonitor(interval=0.5, threshold=0.5)


@virtual_time
async def test_a_blocked_loop_is_a_stall_known_even_before_the_monitor_runs_again() -> None:
    loop = virtual_loop()
    monitor = LoopMonitor(interval=0.1, threshold=0.5)
    watching = asyncio.create_task(monitor.run())
    await asyncio.sleep(1.05)
    assert monitor.stalls == 0
    assert monitor.max_lag == pytest.approx(0.0)
    loop.call_soon(loop.advance, 2.0)  # as a callback parsing a huge body for two seconds would
    await asyncio.sleep(0.01)  # due before the monitor's wake-up, so this resumes first, at 3.05
    assert monitor.stalls == 0
    # A probe resumed here, before the monitor, must already be told.
    assert monitor.stalled_between(1.1, loop.time())
    await asyncio.sleep(0.05)
    assert monitor.stalls == 1
    assert monitor.last_stall_end == pytest.approx(3.05)
    assert monitor.lag == pytest.approx(1.95)  # due at 1.1, woke at 3.05
    await asyncio.sleep(0.3)
    assert monitor.lag == pytest.approx(0.0)
    assert monitor.max_lag == pytest.approx(1.95)
    assert monitor.stalled_between(1.1, 3.0)
    assert not monitor.stalled_between(3.1, loop.time())
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    await asyncio.sleep(60)
    assert not monitor.stalled_between(3.1, loop.time()), "a monitor that does not run is not late"


async def test_a_really_blocked_loop_is_seen_on_the_real_clock() -> None:
    monitor = LoopMonitor(interval=0.05, threshold=0.3)
    watching = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    before = loop.time()
    time.sleep(1.0)  # noqa: ASYNC251 -- the point: a loop held by blocking work
    await asyncio.sleep(0.2)
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    assert monitor.stalls >= 1
    assert monitor.max_lag >= 0.3
    assert monitor.stalled_between(before, loop.time())
