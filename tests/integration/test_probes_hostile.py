"""Probes against a hostile region (chaos.hostile): each ends within its timeout as a failed observation,
holds memory to its cap, and leaves the event loop free for the other probes."""

from __future__ import annotations

import os
import resource
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import pytest

from chaos.hostile import HUGE_METRICS_LOAD, HostileRegion, Hostility, MiB, watched_loop
from chaos.simregion import SimRegion
from controlplane.policy import InferenceProbe, LivenessProbe, ProbeSettings, Region
from probes import metrics as metrics_module
from probes.http import LIVENESS_BODY_CAP, probe_liveness
from probes.inference import INFERENCE_LINE_CAP, INFERENCE_STREAM_CAP, probe_inference
from probes.metrics import METRICS_BODY_CAP, Load, probe_metrics
from probes.observation import Observation

TIMEOUT = 1.0
SETTINGS = ProbeSettings(timeout=TIMEOUT, inference=InferenceProbe(timeout=TIMEOUT, max_tokens=8))
# Generous: a capped probe holds a few MiB at most; the uncapped one read hundreds of MiB per second.
MEMORY_BOUND = 64 * MiB
# Generous: the watching ticks are 5 ms apart; parsing a 4 MiB page on the loop took seconds.
STALL_BOUND = 0.25

Probe = Callable[[aiohttp.ClientSession, Region, ProbeSettings], Awaitable[Observation]]


@dataclass
class Cost:
    seconds: float
    peak_bytes: int  # Python allocations at their peak while the probe ran (the hostile server's included)
    max_lag: float  # longest the event loop was late for a tick of chaos.hostile.watched_loop


@pytest.fixture
async def hostile(sim: SimRegion) -> AsyncIterator[HostileRegion]:
    async with HostileRegion(
        "127.0.0.61", metrics_size=METRICS_BODY_CAP - 1024, redirect_to=sim.endpoint, lifetime=10
    ) as server:
        yield server


def region_at(endpoint: str) -> Region:
    return Region(name="hostile", endpoint=endpoint, jurisdiction="US")


async def measured(probe: Awaitable[Observation]) -> tuple[Observation, Cost]:
    async with watched_loop() as monitor:
        tracemalloc.start()
        started = time.perf_counter()
        try:
            observation = await probe
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return observation, Cost(seconds, peak, monitor.max_lag)


def assert_cheap(cost: Cost) -> None:
    assert cost.seconds < TIMEOUT + 0.5
    assert cost.peak_bytes < MEMORY_BOUND, f"{cost.peak_bytes / MiB:.0f} MiB"
    assert cost.max_lag < STALL_BOUND, f"loop stalled {cost.max_lag:.2f}s"


async def failed_cheaply(probe: Awaitable[Observation], error: str) -> tuple[Observation, Cost]:
    """The probe's observation and cost, asserted to be a failure with `error` at a bounded cost."""
    observation, cost = await measured(probe)
    assert (observation.ok, observation.error) == (False, error)
    assert_cheap(cost)
    return observation, cost


async def test_endless_health_body_is_cut_at_the_cap(
    hostile: HostileRegion, probe_session: aiohttp.ClientSession
) -> None:
    region = region_at(hostile.endpoint(Hostility.ENDLESS_BODY))
    live, cost = await failed_cheaply(
        probe_liveness(probe_session, region, SETTINGS), f"body over {LIVENESS_BODY_CAP} bytes"
    )
    assert not live.inconclusive
    assert cost.seconds < TIMEOUT / 2  # the cap, not the timeout, ended it


async def test_metrics_page_near_the_cap_is_parsed_off_the_loop(
    hostile: HostileRegion, probe_session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Filtering made a cap-sized page cheap, so a stall no longer shows where it is parsed: ask the parser.
    parsed_on: list[threading.Thread] = []
    parse = metrics_module.read_page

    def read_page(page: bytes) -> Load:
        parsed_on.append(threading.current_thread())
        return parse(page)

    monkeypatch.setattr(metrics_module, "read_page", read_page)
    region = region_at(hostile.endpoint(Hostility.HUGE_METRICS))
    metrics, cost = await measured(probe_metrics(probe_session, region, SETTINGS))
    assert metrics.ok, metrics.error
    assert (metrics.queue_depth, metrics.running, metrics.kv_cache_usage) == HUGE_METRICS_LOAD
    assert_cheap(cost)
    assert parsed_on and threading.main_thread() not in parsed_on


async def test_metrics_page_over_the_cap_is_refused(
    hostile: HostileRegion, probe_session: aiohttp.ClientSession
) -> None:
    hostile.metrics_size = 16 * MiB
    region = region_at(hostile.endpoint(Hostility.HUGE_METRICS))
    await failed_cheaply(
        probe_metrics(probe_session, region, SETTINGS), f"body over {METRICS_BODY_CAP} bytes"
    )


REFUSED_GZIP = "Content-Encoding 'gzip' refused, identity was asked for"


@pytest.mark.parametrize(
    ("hostility", "probe", "settings", "error"),
    [
        # Liveness reads the raw bytes (the status is what counts): the compressed bomb is over the cap.
        pytest.param(
            Hostility.GZIP_BOMB,
            probe_liveness,
            SETTINGS,
            f"body over {LIVENESS_BODY_CAP} bytes",
            id="gzip-bomb-liveness",
        ),
        # Unless it must match the body: text is never matched against compressed bytes.
        pytest.param(
            Hostility.GZIP_BOMB,
            probe_liveness,
            SETTINGS.model_copy(update={"liveness": LivenessProbe(body_match="ok")}),
            REFUSED_GZIP,
            id="gzip-bomb-liveness-body-match",
        ),
        pytest.param(Hostility.GZIP_BOMB, probe_metrics, SETTINGS, REFUSED_GZIP, id="gzip-bomb-metrics"),
        pytest.param(Hostility.GZIP_BOMB, probe_inference, SETTINGS, REFUSED_GZIP, id="gzip-bomb-inference"),
        pytest.param(
            Hostility.ENDLESS_BODY,
            probe_inference,
            SETTINGS,
            f"stream line over {INFERENCE_LINE_CAP} bytes",
            id="endless-sse-line-cut-at-the-line-cap",
        ),
        pytest.param(
            Hostility.DRIP,
            probe_liveness,
            SETTINGS,
            f"timed out after {TIMEOUT:g}s",
            id="drip-ends-at-the-timeout",
        ),
    ],
)
async def test_hostile_answer_fails_the_probe_cheaply(
    hostile: HostileRegion,
    probe_session: aiohttp.ClientSession,
    hostility: Hostility,
    probe: Probe,
    settings: ProbeSettings,
    error: str,
) -> None:
    await failed_cheaply(probe(probe_session, region_at(hostile.endpoint(hostility)), settings), error)


async def test_endless_stream_of_valid_chunks_is_cut_at_the_stream_cap(
    hostile: HostileRegion, probe_session: aiohttp.ClientSession
) -> None:
    region = region_at(hostile.endpoint(Hostility.ENDLESS_STREAM))
    inference, _ = await failed_cheaply(
        probe_inference(probe_session, region, SETTINGS), f"stream over {INFERENCE_STREAM_CAP} bytes"
    )
    assert inference.ttft_s is not None  # what it saw before the cap is still reported


async def test_deeply_nested_chunk_fails_the_probe_instead_of_raising(
    hostile: HostileRegion, probe_session: aiohttp.ClientSession
) -> None:
    region = region_at(hostile.endpoint(Hostility.DEEP_JSON))
    inference = await probe_inference(probe_session, region, SETTINGS)
    assert (inference.ok, inference.error) == (False, "ValueError: stream chunk nested too deeply")


async def test_inference_does_not_borrow_health_through_a_redirect(
    hostile: HostileRegion, probe_session: aiohttp.ClientSession, sim: SimRegion
) -> None:
    # The redirect target is a healthy region: following the 307 would pass the probe.
    assert (await probe_inference(probe_session, region_at(sim.endpoint), SETTINGS)).ok
    region = region_at(hostile.endpoint(Hostility.REDIRECT))
    inference = await probe_inference(probe_session, region, SETTINGS)
    assert (inference.ok, inference.error) == (False, "redirected (HTTP 307), not followed")


@contextmanager
def descriptors_exhausted() -> Iterator[None]:
    """Every file descriptor of the process in use, under a lowered soft limit restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("probe", [probe_liveness, probe_metrics, probe_inference])
async def test_plane_out_of_descriptors_is_inconclusive(
    sim: SimRegion, probe_session: aiohttp.ClientSession, probe: Probe
) -> None:
    # The fixture's session is fresh, with no pooled connection: the probe must open a socket.
    with descriptors_exhausted():
        observation = await probe(probe_session, region_at(sim.endpoint), SETTINGS)
    assert (observation.ok, observation.inconclusive) == (False, True)
    assert observation.error == "connect failed: Too many open files"
