from __future__ import annotations

import aiohttp
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from controlplane.policy import ProbeSettings, Region
from controlplane.telemetry import traced_probes
from probes.http import Clock
from probes.observation import Observation, ProbeKind


async def test_every_probe_runs_in_a_span_with_its_verdict(spans: InMemorySpanExporter) -> None:
    async def failing(
        session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Clock
    ) -> Observation:
        return Observation(region.name, ProbeKind.LIVENESS, False, now(), 0.25, "connect failed: refused")

    spans.clear()  # the exporter is the session's: drop what earlier tests recorded
    probe = traced_probes({ProbeKind.LIVENESS: failing})[ProbeKind.LIVENESS]
    region = Region(name="us-east", endpoint="http://127.0.0.11:8000", jurisdiction="US")
    async with aiohttp.ClientSession() as session:
        obs = await probe(session, region, ProbeSettings(), lambda: 5.0)
    assert obs.error == "connect failed: refused"
    (span,) = [s for s in spans.get_finished_spans() if s.name == "probe liveness"]
    assert span.attributes is not None
    assert span.attributes["region"] == "us-east"
    assert span.attributes["probe.ok"] is False
    assert span.attributes["probe.error"] == "connect failed: refused"
