"""A virtual-time event loop: timers fire in order at once, so tests of timing neither sleep nor race.

`VirtualClockEventLoop` is a real selector loop whose `time()` is a counter. Whenever the loop would wait
(nothing ready, no I/O pending) the counter leaps to the next timer instead, so `asyncio.sleep(60)` returns
at once with `loop.time()` exactly 60 s on. Everything that orders by the loop's clock (timers, timeouts,
the probe scheduler's heap) behaves as on a real loop that is never late, unless a test says otherwise
with `advance()`, which stands for a callback that blocked the loop that long.

Real I/O and threads still work, but they race the leaping clock: use this loop for code whose waits are
timers and other coroutines (fake probes), not for real servers.

The same idea as asynctest's ClockedTestCase, aiotools' VirtualClock and looptime, in a few lines of
public API: a loop subclass with its own selector and `time()`.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

P = ParamSpec("P")

# Wall-clock seconds at virtual time 0, so that wall times derived from the loop look like real ones.
EPOCH = 1_700_000_000.0
# With no timer left, only real I/O (a thread's call_soon_threadsafe, a socket) can wake the loop; a test
# that waits for none would hang, so it fails after this many real seconds instead.
REAL_WAIT_LIMIT = 10.0


class _LeapingSelector(selectors.DefaultSelector):
    """Polls real I/O without blocking; where the loop would block for a timer, moves the clock to it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            ready = super().select(REAL_WAIT_LIMIT)
            if not ready:
                raise RuntimeError(f"virtual-time loop: nothing scheduled and no I/O for {REAL_WAIT_LIMIT}s")
            return ready
        self.now += timeout
        return ready


class VirtualClockEventLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time; see the module docstring."""

    def __init__(self) -> None:
        self._leaping = _LeapingSelector()
        super().__init__(self._leaping)

    def time(self) -> float:
        return self._leaping.now

    def wall(self) -> float:
        """Wall-clock seconds (time.time's scale) moving with the virtual clock."""
        return EPOCH + self._leaping.now

    def advance(self, seconds: float) -> None:
        """Move the clock on as a callback that blocked the loop this long would: timers due meanwhile fire
        late, all at once, after the current callback returns."""
        self._leaping.now += seconds


def virtual_loop() -> VirtualClockEventLoop:
    """The running loop, which a test on virtual time can ask for its clock."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualClockEventLoop), "run the test with @virtual_time"
    return loop


def virtual_time(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh VirtualClockEventLoop (fixtures such as caplog still arrive as
    arguments); it is then a plain function to pytest-asyncio, which leaves it alone."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with asyncio.Runner(loop_factory=VirtualClockEventLoop) as runner:
            runner.run(test(*args, **kwargs))

    return run
