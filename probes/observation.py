"""Observation: the one record every probe produces, whatever it measured."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ProbeKind(StrEnum):
    LIVENESS = "liveness"
    INFERENCE = "inference"
    METRICS = "metrics"


@dataclass(frozen=True, slots=True)
class Observation:
    """What one probe of one region saw. `at` is wall-clock seconds when the probe finished."""

    region: str
    kind: ProbeKind
    ok: bool
    at: float
    latency_s: float
    error: str | None = None
    # The probe could not look (the plane's own descriptors ran out, its loop stalled past the timeout):
    # not evidence against the region, so it is neither counted toward a verdict nor toward staleness.
    inconclusive: bool = False
    # inference
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    model: str | None = None
    # metrics (whichever names the server exposes: vLLM, SGLang, TGI)
    queue_depth: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None
    output_tokens: float | None = None  # counters since the server started: rates come from two scrapes
    requests_ok: float | None = None
