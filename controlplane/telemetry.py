"""OpenTelemetry set-up: spans always made, exported only when configured."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter


def setup_tracing() -> TracerProvider:
    """CONTROLPLANE_TRACE=console prints spans; otherwise spans are recorded for no one (the exporter is off)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "controlplane"}))
    if os.environ.get("CONTROLPLANE_TRACE") == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
