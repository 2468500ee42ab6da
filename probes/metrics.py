"""The metrics probe: scrape the server's Prometheus page and read its queue, batch and KV-cache load."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from controlplane.policy import ProbeSettings, Region
from probes.http import PROBE_ERRORS, Clock, describe_error, failed
from probes.observation import Observation, ProbeKind

# Per quantity, the names that carry it, in order of preference: the first present wins, so a server
# exporting both vLLM's new and deprecated KV-cache gauge is not counted twice.
QUEUE = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size")
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
_WANTED = frozenset((*QUEUE, *RUNNING, *KV_CACHE))

Load = tuple[float | None, float | None, float | None]


def read_load(text: str) -> Load:
    """(queue depth, running requests, KV-cache usage 0..1) from a Prometheus text page; None if absent.

    Counts add up across label sets (several models or engines behind one endpoint). KV-cache usage is a
    fraction, so across label sets it is the fullest one, not a sum. Raises ValueError on a malformed page.
    """
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _WANTED and math.isfinite(sample.value):
                values.setdefault(sample.name, []).append(float(sample.value))

    def pick(names: Iterable[str], combine: Callable[[list[float]], float]) -> float | None:
        return next((combine(values[n]) for n in names if n in values), None)

    return pick(QUEUE, sum), pick(RUNNING, sum), pick(KV_CACHE, max)


async def probe_metrics(
    session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Clock = time.time
) -> Observation:
    """GET {metrics_url or endpoint}{metrics.path}; ok when the page parses and carries a known load gauge."""
    url = (region.metrics_url or region.endpoint) + settings.metrics.path
    started = time.perf_counter()
    try:
        async with (
            asyncio.timeout(settings.timeout),
            session.get(url, ssl=settings.tls_verify, allow_redirects=False) as resp,
        ):
            text = await resp.text(errors="replace")
    except PROBE_ERRORS as exc:
        return failed(region, ProbeKind.METRICS, started, now, describe_error(exc, settings.timeout))
    if resp.status != 200:
        return failed(region, ProbeKind.METRICS, started, now, f"HTTP {resp.status}")
    try:
        queue, running, kv = read_load(text)
    except ValueError as exc:
        return failed(region, ProbeKind.METRICS, started, now, f"unparseable metrics: {exc}")
    if queue is None and running is None and kv is None:
        return failed(
            region, ProbeKind.METRICS, started, now, "no vLLM, SGLang or TGI load metrics on the page"
        )
    return Observation(
        region.name,
        ProbeKind.METRICS,
        True,
        now(),
        time.perf_counter() - started,
        queue_depth=queue,
        running=running,
        kv_cache_usage=kv,
    )
