"""The metrics probe: scrape the server's Prometheus page and read its queue, batch and KV-cache load, and
its cumulative output-token and finished-request counters."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from controlplane.policy import ProbeSettings, Region
from probes.http import PROBE_ERRORS, Clock, errored, failed, read_capped, refuse_encoded
from probes.observation import Observation, ProbeKind

# Per quantity, the names that carry it, in order of preference: the first present wins, so a server
# exporting both vLLM's new and deprecated KV-cache gauge is not counted twice.
QUEUE = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size")
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
# Counters since the server started. TGI has no output-token counter, but its histogram of generated tokens
# per request has one in its sum. SGLang counts requests processed, not only those that succeeded.
OUTPUT_TOKENS = (
    "vllm:generation_tokens_total",
    "sglang:generation_tokens_total",
    "tgi_request_generated_tokens_sum",
)
# TGI's counter has no _total suffix on the page; the parser adds one when a TYPE line says "counter".
REQUESTS_OK = (
    "vllm:request_success_total",
    "sglang:num_requests_total",
    "tgi_request_success_total",
    "tgi_request_success",
)
_WANTED = frozenset((*QUEUE, *RUNNING, *KV_CACHE, *OUTPUT_TOKENS, *REQUESTS_OK))
_WANTED_BYTES = tuple(name.encode() for name in sorted(_WANTED))
# A real vLLM page, histograms of every engine and model included, is 50-500 KB; 4 MiB leaves room for
# many models behind one endpoint and bounds what a hostile page costs in memory and in scanning.
METRICS_BODY_CAP = 4 * 1024 * 1024
# Lines kept for the parser: a real server has a few per engine and model. Parsing costs ~50 us a line, so
# this bounds the parse at tens of milliseconds even on a page that repeats a wanted gauge to the cap.
MAX_LOAD_LINES = 1000
# Bytes between a line's start and a wanted name that can still be "# TYPE " or "# HELP " and a little
# indentation; looking back further would make a page of one long line quadratic to scan.
_LOOKBACK = 16
_LINE_PREFIXES: tuple[list[bytes], ...] = ([], [b"#", b"TYPE"], [b"#", b"HELP"])


class Load(NamedTuple):
    """What one page says; None for what it does not export."""

    queue_depth: float | None
    running: float | None
    kv_cache_usage: float | None  # 0..1
    output_tokens: float | None  # cumulative
    requests_ok: float | None  # cumulative


def read_load(text: str) -> Load:
    """The load gauges and counters of a Prometheus text page.

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

    return Load(
        pick(QUEUE, sum),
        pick(RUNNING, sum),
        pick(KV_CACHE, max),
        pick(OUTPUT_TOKENS, sum),
        pick(REQUESTS_OK, sum),
    )


def read_page(page: bytes) -> Load:
    """read_load over only the page's lines for the wanted names (samples and their TYPE/HELP lines).

    Finding them is a few C-speed scans, so a cap-sized page of other metrics parses in milliseconds; a
    malformed line of another metric is not read at all. Raises ValueError past MAX_LOAD_LINES lines.
    """
    return read_load(b"".join(line + b"\n" for line in _wanted_lines(page)).decode("utf-8", "replace"))


def _wanted_lines(page: bytes) -> list[bytes]:
    lines: dict[int, bytes] = {}  # by start offset: page order, and one line mentioning two names once
    for name in _WANTED_BYTES:
        at = page.find(name)
        while at != -1:
            end = at + len(name)
            window = page[max(0, at - _LOOKBACK) : at]
            newline = window.rfind(b"\n")
            at_line_start = newline != -1 or at <= _LOOKBACK
            prefix = window[newline + 1 :]
            if (
                at_line_start
                and page[end : end + 1] in (b" ", b"\t", b"{")
                and prefix.split() in _LINE_PREFIXES
            ):
                line_end = page.find(b"\n", end)
                line_end = len(page) if line_end == -1 else line_end
                lines[at - len(prefix)] = page[at - len(prefix) : line_end]
                if len(lines) > MAX_LOAD_LINES:
                    raise ValueError(f"more than {MAX_LOAD_LINES} lines of load metrics")
                end = line_end
            at = page.find(name, end)
    return [lines[start] for start in sorted(lines)]


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
            refuse_encoded(resp)
            page = await read_capped(resp, METRICS_BODY_CAP)
    except PROBE_ERRORS as exc:
        return errored(region, ProbeKind.METRICS, started, now, exc, settings.timeout)
    if resp.status != 200:
        return failed(region, ProbeKind.METRICS, started, now, f"HTTP {resp.status}")
    try:
        # Off the loop: even filtered, a page is the region's input, and the probes share this loop.
        load = await asyncio.to_thread(read_page, page)
    except ValueError as exc:
        return failed(region, ProbeKind.METRICS, started, now, f"unparseable metrics: {exc}")
    if load.queue_depth is None and load.running is None and load.kv_cache_usage is None:
        return failed(
            region, ProbeKind.METRICS, started, now, "no vLLM, SGLang or TGI load metrics on the page"
        )
    return Observation(
        region.name,
        ProbeKind.METRICS,
        True,
        now(),
        time.perf_counter() - started,
        queue_depth=load.queue_depth,
        running=load.running,
        kv_cache_usage=load.kv_cache_usage,
        output_tokens=load.output_tokens,
        requests_ok=load.requests_ok,
    )
