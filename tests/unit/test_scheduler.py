"""ProbeScheduler with fake probe functions: timing, in-flight bounds, first round, hot reload, shutdown,
and what a stalled event loop does to results.

Every test runs on virtual time (tests/fakes/clock.py): sleeps cost nothing and timers fire exactly when
due, so counts and intervals are exact; only `advance()` makes the loop late, on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest

from controlplane.policy import Policy, ProbeSettings, Region
from probes.loop import LoopMonitor
from probes.observation import Observation, ProbeKind
from probes.scheduler import FIRST_ROUND_TRIES, ProbeFunction, ProbeScheduler
from tests.builders import us_policy
from tests.fakes.clock import EPOCH, virtual_loop, virtual_time

L, INF, M = ProbeKind.LIVENESS, ProbeKind.INFERENCE, ProbeKind.METRICS


def make_policy(regions: tuple[str, ...] = ("a", "b"), **probes: Any) -> Policy:
    """Probes every 50 ms (10 ms while transitioning), no jitter; `probes` overrides."""
    fast = {
        "interval": 0.05,
        "fast_interval": 0.01,
        "jitter": 0.0,
        "inference": {"interval": 0.05},
        "metrics": {"interval": 0.05},
    }
    return us_policy({n: f"http://{n}.test:8000" for n in regions}, probes=fast | probes)


def instant(kind: ProbeKind = L) -> ProbeFunction:
    async def probe(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        return Observation(region.name, kind, True, now(), 0.0)

    return probe


ALL_KINDS = {kind: instant(kind) for kind in ProbeKind}


def answers_when(event: asyncio.Event, kind: ProbeKind = L) -> ProbeFunction:
    """A passing probe that answers only once `event` is set."""

    async def probe(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        await event.wait()
        return Observation(region.name, kind, True, now(), 0.0)

    return probe


def takes(seconds: float, cancelled: list[str]) -> ProbeFunction:
    """A passing liveness probe that lasts `seconds`; the region of each one cancelled goes to `cancelled`."""

    async def probe(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append(region.name)
            raise
        return Observation(region.name, L, True, now(), seconds)

    return probe


class Harness:
    """A scheduler running in the background, with every observation it produced."""

    def __init__(
        self,
        policy: Policy,
        probes: Mapping[ProbeKind, ProbeFunction],
        transitioning: Callable[[str, ProbeKind], bool],
        **kwargs: Any,
    ) -> None:
        self.seen: list[Observation] = []
        self._arrived = asyncio.Event()
        self.scheduler = ProbeScheduler(
            policy,
            self.sink,
            transitioning,
            probes=probes,
            rng=random.Random(7),
            now=virtual_loop().wall,
            **kwargs,
        )

    def sink(self, obs: Observation) -> None:
        self.seen.append(obs)
        self._arrived.set()

    def count(self, region: str, kind: ProbeKind = L) -> int:
        return sum(1 for o in self.seen if (o.region, o.kind) == (region, kind))

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait, at most a second, until an observation makes the condition true."""
        async with asyncio.timeout(1):
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def running(
    policy: Policy,
    probes: Mapping[ProbeKind, ProbeFunction],
    transitioning: Callable[[str, ProbeKind], bool] = lambda region, kind: False,
    **kwargs: Any,
) -> AsyncIterator[Harness]:
    harness = Harness(policy, probes, transitioning, **kwargs)
    scheduler = harness.scheduler
    task = asyncio.create_task(scheduler.run())
    try:
        yield harness
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await scheduler.close()


@virtual_time
async def test_first_round_waits_for_every_region_and_enabled_kind() -> None:
    slow_metrics = asyncio.Event()
    async with running(make_policy(), {**ALL_KINDS, M: answers_when(slow_metrics, M)}) as h:
        await asyncio.sleep(0.12)
        assert h.count("a", L) and h.count("b", INF)
        assert not h.scheduler.first_round.is_set()  # metrics have not answered yet
        slow_metrics.set()
        async with asyncio.timeout(1):
            await h.scheduler.first_round.wait()
        assert {(o.region, o.kind) for o in h.seen} == {(r, k) for r in "ab" for k in ProbeKind}


@virtual_time
async def test_disabled_kinds_are_not_probed_nor_awaited() -> None:
    policy = make_policy(inference={"enabled": False}, metrics={"enabled": False})
    async with running(policy, ALL_KINDS) as h:
        async with asyncio.timeout(1):
            await h.scheduler.first_round.wait()
        await asyncio.sleep(0.1)
        assert {o.kind for o in h.seen} == {L}


@virtual_time
async def test_a_hung_probe_does_not_hold_back_the_next_one() -> None:
    async def times_out(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        if region.name == "a":
            await asyncio.sleep(0.2)  # a probe that only ends at its timeout, four periods later
            return Observation(region.name, L, False, now(), 0.2, error="timeout")
        return Observation(region.name, L, True, now(), 0.0)

    async with running(make_policy(), {L: times_out}) as h:
        await asyncio.sleep(0.6)
    # Periods of 50 ms: ~12 launches; the first results arrive only after 200 ms, then one per period.
    assert h.count("a") >= 6
    assert h.count("b") >= 10
    assert all(not o.ok for o in h.seen if o.region == "a")


@virtual_time
async def test_in_flight_probes_are_bounded_per_target() -> None:
    never = asyncio.Event()
    async with running(make_policy(("a",)), {L: answers_when(never)}, max_in_flight=3) as h:
        await asyncio.sleep(0.4)
        stats = h.scheduler.stats
        assert h.scheduler.in_flight == 3
        assert stats.launched == 3
        assert stats.skipped >= 4  # due again and again, but never a fourth concurrent probe
    assert h.scheduler.in_flight == 0  # close() cancelled and awaited them


@virtual_time
async def test_fast_interval_while_transitioning() -> None:
    async def takes_40ms(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        await asyncio.sleep(0.04)
        return Observation(region.name, L, True, now(), 0.04)

    policy = make_policy(interval=0.2)
    async with running(policy, {L: takes_40ms}, transitioning=lambda region, kind: region == "a") as h:
        async with asyncio.timeout(1):
            await h.scheduler.first_round.wait()
        h.seen.clear()
        await asyncio.sleep(0.3)
    # "a" starts a probe every 10 ms (at most 4 at once: ~100/s), not only after each result (~20/s);
    # "b" every 200 ms.
    assert h.count("a") >= 20
    assert h.count("b") <= 2


@virtual_time
async def test_a_result_that_starts_a_transition_pulls_the_next_probe_in_once() -> None:
    results: Counter[str] = Counter()

    async def a_fails_once(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        results[region.name] += 1
        return Observation(region.name, L, region.name != "a" or results["a"] > 1, now(), 0.0)

    def transitioning(region: str, kind: ProbeKind) -> bool:
        return region == "a" and results["a"] == 1  # as a health view would say after one failure only

    # "b" only keeps other entries in the heap, as in any real fleet.
    policy = make_policy(("a", "b"), interval=0.3)
    async with running(policy, {L: a_fails_once}, transitioning=transitioning) as h:
        await h.until(lambda: h.count("a") >= 1)
        first = virtual_loop().time()
        await h.until(lambda: h.count("a") >= 2)
        pulled_in = virtual_loop().time() - first
        await asyncio.sleep(0.45)
    # Without the pull-in the second probe would come a whole period (300 ms) after the first.
    assert pulled_in < 0.1
    # The pulled-in probe still sees the transition and schedules one more 10 ms later; after that the
    # normal period. The probe that was due at the old time does not also run (that would be a fifth).
    assert h.count("a") == 4


@virtual_time
async def test_update_policy_adds_and_removes_targets_without_resetting_the_others() -> None:
    cancelled: list[str] = []
    async with running(make_policy(("a", "b"), interval=0.4), {L: takes(0.03, cancelled)}) as h:
        await h.until(lambda: h.count("a") >= 1 and h.count("b") >= 1)
        await asyncio.sleep(0.01)  # "a" and "b" each have a probe in flight or due soon
        h.scheduler.update_policy(make_policy(("b", "c"), interval=0.4))
        await h.until(lambda: h.count("b") >= 2 and h.count("c") >= 1)
    assert h.count("a") == 1
    # "b" kept its phase: its next probe came a period after the last, not at a fresh random offset.
    first, second = (o.at for o in h.seen if o.region == "b")
    assert second - first == pytest.approx(0.4, abs=0.03)
    assert "b" not in cancelled


@virtual_time
async def test_removing_a_region_cancels_its_probes_in_flight() -> None:
    cancelled: list[str] = []
    async with running(make_policy(("a", "b")), {L: takes(10, cancelled)}) as h:
        await asyncio.sleep(0.1)
        h.scheduler.update_policy(make_policy(("b",)))
        await asyncio.sleep(0)
        assert set(cancelled) == {"a"}
        assert h.scheduler.in_flight >= 1  # b's go on
    assert h.seen == []


@virtual_time
async def test_hot_reload_of_probe_settings_takes_effect_at_once() -> None:
    async with running(make_policy(("a",), interval=5.0), {L: instant()}) as h:
        await asyncio.sleep(0.05)
        h.seen.clear()
        h.scheduler.update_policy(make_policy(("a",), interval=0.02))
        await asyncio.sleep(0.3)
    assert h.count("a") >= 8


@virtual_time
async def test_a_crashing_probe_reports_a_failure_and_probing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def crashes(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        raise KeyError("bug")

    async with running(make_policy(("a",)), {L: crashes}) as h:
        await asyncio.sleep(0.15)
    assert h.count("a") >= 2
    assert {(o.ok, o.error) for o in h.seen} == {(False, "probe crashed: KeyError")}
    assert "liveness probe of a crashed" in caplog.text


@virtual_time
async def test_a_failing_sink_does_not_stop_probing(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def sink(obs: Observation) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("sink bug")

    scheduler = ProbeScheduler(make_policy(("a",)), sink, probes={L: instant()}, now=virtual_loop().wall)
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.15)
    await scheduler.close()  # close() alone ends run()
    async with asyncio.timeout(1):
        await task
    assert calls >= 2
    assert scheduler.first_round.is_set()
    assert "observation sink failed" in caplog.text


@virtual_time
async def test_many_targets_start_on_time_and_lag_is_recorded() -> None:
    regions = tuple(f"r{i}" for i in range(60))
    policy = make_policy(regions, interval=0.1, jitter=0.5)
    async with running(policy, {L: instant()}) as h:
        await asyncio.sleep(0.5)
        stats = h.scheduler.stats
        assert stats.launched >= 200
        assert stats.shed == stats.skipped == 0
        assert 0 <= stats.p50 <= stats.p99 < 0.02
        stats.reset()
        assert (stats.launched, stats.p99) == (0, 0.0)


@virtual_time
async def test_a_changed_endpoint_is_probed_from_then_on() -> None:
    async def reports_endpoint(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        await asyncio.sleep(0.04)  # with a period of 20 ms, one is always in flight
        return Observation(region.name, L, True, now(), 0.04, error=region.endpoint)

    policy = make_policy(("a",), interval=0.02)
    async with running(policy, {L: reports_endpoint}) as h:
        await asyncio.sleep(0.1)
        moved = policy.regions[0].model_copy(update={"endpoint": "http://elsewhere.test:8000"})
        h.scheduler.update_policy(policy.model_copy(update={"regions": (moved,)}))
        h.seen.clear()
        await asyncio.sleep(0.1)
    # Probes of the old endpoint still in flight were cancelled, not reported under the new one.
    assert {o.error for o in h.seen} == {"http://elsewhere.test:8000"}


@virtual_time
async def test_first_spread_bounds_how_long_the_first_round_takes() -> None:
    # Periods of a minute: spread over a whole period, the first round could take a minute.
    slow = make_policy(interval=60.0, inference={"interval": 60.0}, metrics={"interval": 60.0})
    started = virtual_loop().time()
    async with running(slow, ALL_KINDS, first_spread=0.05) as h:
        async with asyncio.timeout(2):
            await h.scheduler.first_round.wait()
    assert virtual_loop().time() - started <= 0.05
    async with running(slow, ALL_KINDS) as h:
        await asyncio.sleep(0.2)
        assert not h.scheduler.first_round.is_set(), "without it, first probes spread over the whole minute"


def b_answers_a_fails(after: float, inconclusive: bool = False) -> ProbeFunction:
    async def probe(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        await asyncio.sleep(after)
        ok = region.name == "b"
        return Observation(
            region.name,
            L,
            ok,
            now(),
            after,
            error=None if ok else "timed out",
            inconclusive=inconclusive and not ok,
        )

    return probe


@virtual_time
async def test_a_failure_through_a_loop_stall_is_inconclusive_and_a_success_through_it_passes() -> None:
    loop = virtual_loop()
    monitor = LoopMonitor()
    watching = asyncio.create_task(monitor.run())
    # Both probes of the first round start by 50 ms and end at 900 ms; at 500 ms a callback holds the loop
    # for a second. The second round, due at ~1 s, is shed; the third, at ~2 s, runs on a loop that keeps up.
    loop.call_later(0.5, loop.advance, 1.0)
    policy = make_policy(("a", "b"), interval=1.0)
    async with running(policy, {L: b_answers_a_fails(0.85)}, first_spread=0.05, monitor=monitor) as h:
        await asyncio.sleep(3.5)
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    assert monitor.stalls == 1
    assert (h.scheduler.stats.inconclusive, h.scheduler.stats.shed) == (1, 2)
    assert [o.ok for o in h.seen if o.region == "b"] == [True, True]
    # The failure that ran through the stall never reached the sink; the one after it did.
    (failure,) = (o for o in h.seen if o.region == "a")
    assert monitor.last_stall_end is not None
    assert failure.at - failure.latency_s > EPOCH + monitor.last_stall_end


@virtual_time
async def test_inconclusive_results_of_probe_functions_are_not_reported() -> None:
    async with running(make_policy(("a", "b")), {L: b_answers_a_fails(0.0, inconclusive=True)}) as h:
        await asyncio.sleep(1.0)
    stats = h.scheduler.stats
    assert h.count("a") == 0
    assert h.count("b") >= 19
    assert stats.inconclusive == stats.completed - h.count("b") >= 19


def blind_at_first(blind: Callable[[str, int], bool], calls: Counter[str]) -> ProbeFunction:
    """Probes that cannot look (as with descriptors exhausted) at the calls `blind(region, n)` says."""

    async def probe(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Callable[[], float]
    ) -> Observation:
        calls[region.name] += 1
        inconclusive = blind(region.name, calls[region.name])
        return Observation(region.name, L, not inconclusive, now(), 0.0, inconclusive=inconclusive)

    return probe


@virtual_time
async def test_a_region_not_yet_looked_at_holds_the_first_round_back() -> None:
    calls: Counter[str] = Counter()
    probes = {L: blind_at_first(lambda region, n: region == "a" and n == 1, calls)}
    # With no spread, every target is probed at 0, 100, 200 ms and so on.
    async with running(make_policy(("a", "b"), interval=0.1), probes, first_spread=0.0) as h:
        await asyncio.sleep(0.05)
        assert calls["a"] == 1
        assert not h.scheduler.first_round.is_set()
        await asyncio.sleep(0.1)
        assert h.scheduler.first_round.is_set()


@virtual_time
async def test_a_region_that_cannot_be_looked_at_does_not_hold_the_first_round_back_forever() -> None:
    calls: Counter[str] = Counter()
    probes = {L: blind_at_first(lambda region, n: region == "a", calls)}
    async with running(make_policy(("a", "b"), interval=0.1), probes, first_spread=0.0) as h:
        await asyncio.sleep(0.1 * (FIRST_ROUND_TRIES - 1) - 0.05)
        assert calls["a"] == FIRST_ROUND_TRIES - 1
        assert not h.scheduler.first_round.is_set()
        await asyncio.sleep(0.1)
        assert calls["a"] == FIRST_ROUND_TRIES
        assert h.scheduler.first_round.is_set()
    assert h.count("a") == 0
