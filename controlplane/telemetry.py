"""OpenTelemetry set-up: spans always made, exported only when configured."""

from __future__ import annotations

import os
from collections.abc import Mapping

import aiohttp
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from controlplane.policy import ProbeSettings, Region
from probes.http import Clock
from probes.observation import Observation, ProbeKind
from probes.scheduler import ProbeFunction

tracer = trace.get_tracer("controlplane.probes")


def setup_tracing() -> TracerProvider:
    """CONTROLPLANE_TRACE=console prints spans; otherwise spans are recorded for no one (the exporter is off)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "controlplane"}))
    if os.environ.get("CONTROLPLANE_TRACE") == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def traced_probes(probes: Mapping[ProbeKind, ProbeFunction]) -> dict[ProbeKind, ProbeFunction]:
    """The same probes, each run inside a span that records its region, kind, verdict and error."""

    def wrap(kind: ProbeKind, probe: ProbeFunction) -> ProbeFunction:
        async def traced(
            session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Clock
        ) -> Observation:
            with tracer.start_as_current_span(f"probe {kind}") as span:
                obs = await probe(session, region, settings, now)
                span.set_attribute("region", region.name)
                span.set_attribute("probe.ok", obs.ok)
                span.set_attribute("probe.latency_s", obs.latency_s)
                if obs.error:
                    span.set_attribute("probe.error", obs.error)
                return obs

        return traced

    return {kind: wrap(kind, probe) for kind, probe in probes.items()}
