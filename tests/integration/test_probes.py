"""Each probe against real simulated regions on loopback: every fault is seen by the probe meant to see it."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from chaos.simregion import FaultMode, FaultSpec, SimRegion
from controlplane.policy import InferenceProbe, LivenessProbe, ProbeSettings, Region
from probes.http import probe_liveness
from probes.inference import probe_inference
from probes.metrics import probe_metrics
from probes.observation import ProbeKind
from tests.conftest import require_binary

SETTINGS = ProbeSettings(timeout=0.3, inference=InferenceProbe(timeout=1.0, model="demo-llm", max_tokens=6))


def region_of(sim: SimRegion, model: str | None = None) -> Region:
    return Region(name=sim.name, endpoint=sim.endpoint, jurisdiction="US", model=model)


async def test_healthy_region_passes_every_probe(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    region = region_of(sim)
    live = await probe_liveness(probe_session, region, SETTINGS)
    assert (live.region, live.kind, live.ok, live.error) == ("sim", ProbeKind.LIVENESS, True, None)
    inference = await probe_inference(probe_session, region, SETTINGS)
    assert inference.ok, inference.error
    assert inference.model == "demo-llm"
    assert inference.ttft_s is not None and 0.02 <= inference.ttft_s < 0.1
    # 6 tokens 5 ms apart: 200/s; the region's clock catches up after a late first token, hence the band.
    assert inference.tokens_per_s is not None and 60 < inference.tokens_per_s < 400
    metrics = await probe_metrics(probe_session, region, SETTINGS)
    assert metrics.ok, metrics.error
    assert (metrics.queue_depth, metrics.running, metrics.kv_cache_usage) == (0, 0, 0)


async def test_down_fails_liveness_fast_with_connection_refused(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    region = region_of(sim)
    assert (await probe_liveness(probe_session, region, SETTINGS)).ok  # a pooled connection now exists
    await sim.set_fault(FaultSpec(FaultMode.DOWN))
    live = await probe_liveness(probe_session, region, SETTINGS)
    assert not live.ok
    assert live.error == "connect failed: Connection refused"
    assert live.latency_s < 0.1  # refused at once, not a timeout
    assert not (await probe_inference(probe_session, region, SETTINGS)).ok
    assert not (await probe_metrics(probe_session, region, SETTINGS)).ok
    await sim.set_fault(FaultSpec())
    assert (await probe_liveness(probe_session, region, SETTINGS)).ok


async def test_hang_times_liveness_out_within_the_timeout(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    await sim.set_fault(FaultSpec(FaultMode.HANG))
    started = time.perf_counter()
    live = await probe_liveness(probe_session, region_of(sim), SETTINGS)
    assert not live.ok
    assert live.error == "timed out after 0.3s"
    assert 0.3 <= time.perf_counter() - started < 0.45


async def test_hang_mid_stream_times_inference_out_but_keeps_the_first_token(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    settings = SETTINGS.model_copy(update={"inference": InferenceProbe(timeout=0.3, max_tokens=1000)})
    probe = asyncio.create_task(probe_inference(probe_session, region_of(sim), settings))
    await asyncio.sleep(0.1)  # first token came at 20 ms; now the region freezes mid-stream
    await sim.set_fault(FaultSpec(FaultMode.HANG))
    inference = await probe
    assert not inference.ok
    assert inference.error == "timed out after 0.3s"
    assert inference.ttft_s is not None and inference.ttft_s < 0.1


async def test_errors_fail_inference_while_liveness_stays_ok(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    await sim.set_fault(FaultSpec(FaultMode.ERRORS))
    region = region_of(sim)
    assert (await probe_liveness(probe_session, region, SETTINGS)).ok
    inference = await probe_inference(probe_session, region, SETTINGS)
    assert not inference.ok
    assert inference.error in ("HTTP 500", "HTTP 503")
    assert inference.ttft_s is None
    metrics = await probe_metrics(probe_session, region, SETTINGS)
    assert not metrics.ok and metrics.error in ("HTTP 500", "HTTP 503")


async def test_wrong_model_fails_inference_and_records_the_served_model(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    await sim.set_fault(FaultSpec(FaultMode.WRONG_MODEL, model="other-model"))
    inference = await probe_inference(probe_session, region_of(sim), SETTINGS)
    assert not inference.ok
    assert inference.model == "other-model"
    assert inference.error == "served model 'other-model', expected 'demo-llm'"
    # The region's own model overrides the policy-wide one.
    assert (await probe_inference(probe_session, region_of(sim, model="other-model"), SETTINGS)).ok
    # No expectation at all: any model proves the region serves.
    settings = SETTINGS.model_copy(update={"inference": InferenceProbe(model="")})
    assert (await probe_inference(probe_session, region_of(sim), settings)).ok


async def test_slow_grows_ttft_by_about_the_factor(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    region = region_of(sim)
    before = await probe_inference(probe_session, region, SETTINGS)
    await sim.set_fault(FaultSpec(FaultMode.SLOW, factor=10))
    after = await probe_inference(probe_session, region, SETTINGS)
    assert before.ok and after.ok
    assert before.ttft_s is not None and after.ttft_s is not None
    assert 0.2 <= after.ttft_s < 0.3
    assert 6 < after.ttft_s / before.ttft_s <= 10


async def test_metrics_reflect_load_knobs_and_running_requests(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    region = region_of(sim)
    await sim.set_fault(FaultSpec(queue_depth=12, kv_cache=0.75))
    metrics = await probe_metrics(probe_session, region, SETTINGS)
    assert (metrics.ok, metrics.queue_depth, metrics.running, metrics.kv_cache_usage) == (True, 12, 0, 0.75)
    long_one = SETTINGS.model_copy(update={"inference": InferenceProbe(max_tokens=100)})
    streaming = asyncio.create_task(probe_inference(probe_session, region, long_one))
    await asyncio.sleep(0.05)
    metrics = await probe_metrics(probe_session, region, SETTINGS)
    assert metrics.running == 1
    assert metrics.kv_cache_usage is not None and metrics.kv_cache_usage > 0.75
    assert (await streaming).ok


async def test_metrics_count_the_output_tokens_and_requests_a_region_served(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    region = region_of(sim)
    # A labelled counter appears on the page with the first request it counts.
    assert (await probe_inference(probe_session, region, SETTINGS)).ok
    before = await probe_metrics(probe_session, region, SETTINGS)
    assert before.output_tokens is not None and before.requests_ok is not None
    for _ in range(3):
        assert (await probe_inference(probe_session, region, SETTINGS)).ok
    after = await probe_metrics(probe_session, region, SETTINGS)
    assert after.output_tokens is not None and after.requests_ok is not None
    # Three completions of max_tokens each, counted by the server itself.
    assert after.output_tokens - before.output_tokens == 3 * SETTINGS.inference.max_tokens
    assert after.requests_ok - before.requests_ok == 3


async def test_metrics_probe_uses_metrics_url_and_reports_unknown_pages(
    sim: SimRegion, probe_session: aiohttp.ClientSession
) -> None:
    # metrics_url is a base URL; the path comes from the policy's metrics settings.
    region = Region(name="r", endpoint="http://127.0.0.1:9", metrics_url=sim.endpoint, jurisdiction="US")
    assert (await probe_metrics(probe_session, region, SETTINGS)).ok
    settings = SETTINGS.model_copy(
        update={"metrics": SETTINGS.metrics.model_copy(update={"path": "/health"})}
    )
    empty = await probe_metrics(probe_session, region, settings)
    assert not empty.ok
    assert empty.error == "no vLLM, SGLang or TGI load metrics on the page"


async def test_liveness_checks_status_and_body(sim: SimRegion, probe_session: aiohttp.ClientSession) -> None:
    region = region_of(sim)
    wants_204 = SETTINGS.model_copy(update={"liveness": LivenessProbe(expect_status=204)})
    assert (await probe_liveness(probe_session, region, wants_204)).error == "HTTP 200, expected 204"
    wants_body = SETTINGS.model_copy(update={"liveness": LivenessProbe(body_match="ok")})
    assert (await probe_liveness(probe_session, region, wants_body)).error == "body lacks 'ok'"
    models = SETTINGS.model_copy(update={"liveness": LivenessProbe(path="/v1/models", body_match="demo-llm")})
    assert (await probe_liveness(probe_session, region, models)).ok


async def test_probes_ask_for_bodies_as_they_are(probe_session: aiohttp.ClientSession) -> None:
    """Accept-Encoding: identity, so an honest server never compresses what the probes will not inflate."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=f"accept-encoding: {request.headers.get('Accept-Encoding')}")

    app = web.Application()
    app.router.add_get("/health", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.33", 0).start()
    try:
        region = Region(
            name="echo", endpoint=f"http://127.0.0.33:{runner.addresses[0][1]}", jurisdiction="US"
        )
        wants = SETTINGS.model_copy(
            update={"liveness": LivenessProbe(body_match="accept-encoding: identity")}
        )
        live = await probe_liveness(probe_session, region, wants)
    finally:
        await runner.cleanup()
    assert live.ok, live.error


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.32."""
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.32",
            "-addext",
            "subjectAltName=IP:127.0.0.32",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_server(certificate: tuple[Path, Path]) -> AsyncIterator[str]:
    """An HTTPS /health behind a self-signed certificate."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.32", 0, ssl_context=context).start()
    try:
        yield f"https://127.0.0.32:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_tls_is_verified_unless_the_policy_says_not_to(
    tls_server: str, probe_session: aiohttp.ClientSession
) -> None:
    region = Region(name="tls", endpoint=tls_server, jurisdiction="US")
    refused = await probe_liveness(probe_session, region, SETTINGS)
    assert not refused.ok
    assert refused.error == "TLS certificate rejected: self-signed certificate"
    trusting = SETTINGS.model_copy(update={"tls_verify": False})
    assert (await probe_liveness(probe_session, region, trusting)).ok
