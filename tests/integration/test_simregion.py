"""The simulated region over real loopback HTTP: OpenAI wire format, vLLM metrics, control API, faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaos.simregion import FaultMode, FaultSpec, SimFleet, SimRegion
from controlplane.cost.traffic import STREAMED_BYTES_PER_TOKEN
from tests.builders import us_policy

CHAT = {"messages": [{"role": "user", "content": "say ok"}], "max_tokens": 5}


async def sse_chunks(resp: aiohttp.ClientResponse) -> list[Any]:
    """Every `data:` payload of a stream, JSON-decoded except the final [DONE] marker."""
    events = [line.removeprefix("data: ") for line in (await resp.text()).split("\n\n") if line]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def metric_values(session: aiohttp.ClientSession, sim: SimRegion) -> dict[str, float]:
    async with session.get(f"{sim.endpoint}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if not s.labels.get("le")
    }


async def test_streamed_chat_is_openai_format_with_max_tokens(
    sim: SimRegion, session: aiohttp.ClientSession
) -> None:
    async with session.post(f"{sim.endpoint}/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        chunks = await sse_chunks(resp)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"demo-llm"}
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert sum(1 for d in deltas if d.get("content")) == 5
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_non_streamed_chat_completion(sim: SimRegion, session: aiohttp.ClientSession) -> None:
    async with session.post(f"{sim.endpoint}/v1/chat/completions", json={**CHAT, "max_tokens": 3}) as resp:
        body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "demo-llm"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 3


async def test_bad_chat_request_is_400(sim: SimRegion, session: aiohttp.ClientSession) -> None:
    async with session.post(f"{sim.endpoint}/v1/chat/completions", json={"messages": []}) as resp:
        assert resp.status == 400
        assert "messages" in (await resp.json())["error"]["message"]


async def test_models_health_and_metrics(sim: SimRegion, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{sim.endpoint}/v1/models") as resp:
        models = await resp.json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["demo-llm"]
    async with session.get(f"{sim.endpoint}/health") as resp:
        assert (resp.status, await resp.read()) == (200, b"")
    async with session.post(f"{sim.endpoint}/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        await resp.read()
    values = await metric_values(session, sim)
    assert values["vllm:num_requests_waiting"] == 0
    assert values["vllm:generation_tokens_total"] == 5
    assert values["vllm:time_to_first_token_seconds_count"] == 1
    assert values["vllm:request_success_total"] == 1


async def test_metrics_follow_in_flight_requests_and_load_knobs(
    sim: SimRegion, session: aiohttp.ClientSession
) -> None:
    await sim.set_fault(FaultSpec(queue_depth=9, kv_cache=0.5))
    async with session.post(
        f"{sim.endpoint}/v1/chat/completions", json={**CHAT, "max_tokens": 200, "stream": True}
    ) as resp:
        await resp.content.readline()  # the stream has started: the request is running
        values = await metric_values(session, sim)
        assert values["vllm:num_requests_running"] == 1
        assert values["vllm:num_requests_waiting"] == 9
        assert 0.5 < values["vllm:kv_cache_usage_perc"] < 0.6
    # The client went away mid-stream: the request is aborted, as vLLM does.
    for _ in range(50):
        if (await metric_values(session, sim))["vllm:num_requests_running"] == 0:
            break
        await asyncio.sleep(0.01)
    assert (await metric_values(session, sim))["vllm:num_requests_running"] == 0


async def post_fault(session: aiohttp.ClientSession, sim: SimRegion, body: Any) -> tuple[int, Any]:
    async with session.post(
        f"{sim.control_url}/fault", data=json.dumps(body) if not isinstance(body, str) else body
    ) as resp:
        return resp.status, await resp.json()


async def test_control_api_sets_and_reports_the_fault(sim: SimRegion, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{sim.control_url}/fault") as resp:
        assert (await resp.json())["mode"] == "ok"
    status, body = await post_fault(session, sim, {"mode": "slow", "factor": 5, "queue_depth": 3})
    assert status == 200
    assert sim.fault == FaultSpec(FaultMode.SLOW, factor=5, queue_depth=3)
    async with session.get(f"{sim.control_url}/fault") as resp:
        assert (
            await resp.json()
            == body
            == {
                "mode": "slow",
                "fraction": 1.0,
                "factor": 5,
                "model": "wrong-model",
                "queue_depth": 3,
                "kv_cache": 0.0,
                "ttl": None,
                "expires_in": None,
            }
        )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "Expecting property name"),
        ({"mode": "melt"}, "mode: must be one of ['ok', 'down', 'hang', 'slow', 'errors', 'wrong_model']"),
        ({"mode": "ok", "colour": 1}, "colour: unknown field; allowed fields are"),
        ({"fraction": 2}, "fraction: must be between 0 and 1"),
        ({"queue_depth": 1.5}, "queue_depth: must be an integer"),
        ({"kv_cache": "full"}, "kv_cache: must be a number"),
        ([1], "body must be a JSON object"),
        ({"mode": "down", "ttl": 0}, "ttl: must be more than 0 and at most 3600 seconds"),
        ({"mode": "down", "ttl": 3601}, "ttl: must be more than 0 and at most 3600 seconds"),
        ({"mode": "down", "ttl": "5s"}, "ttl: must be a number of seconds or null"),
    ],
)
async def test_control_api_rejects_bad_input_clearly(
    sim: SimRegion, session: aiohttp.ClientSession, body: Any, message: str
) -> None:
    status, answer = await post_fault(session, sim, body)
    assert status == 400
    assert message in answer["error"]["message"]
    assert sim.fault == FaultSpec()


async def test_down_refuses_connections_and_drops_open_ones(
    sim: SimRegion, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{sim.endpoint}/health") as resp:  # leaves a pooled keep-alive connection
        assert resp.status == 200
    await sim.set_fault(FaultSpec(FaultMode.DOWN))
    for _ in range(2):  # the pooled connection was closed too, and a new one is refused
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{sim.endpoint}/health"):
                pass
    async with session.get(f"{sim.control_url}/fault") as resp:  # the control API stays up
        assert (await resp.json())["mode"] == "down"
    await sim.set_fault(FaultSpec())
    async with session.get(f"{sim.endpoint}/health") as resp:
        assert resp.status == 200


async def test_hang_never_answers_until_released(sim: SimRegion, session: aiohttp.ClientSession) -> None:
    await sim.set_fault(FaultSpec(FaultMode.HANG))
    # POST: aiohttp silently retries an idempotent GET whose connection the server closed.
    hung = asyncio.create_task(session.post(f"{sim.endpoint}/v1/chat/completions", json=CHAT))
    done, _ = await asyncio.wait([hung], timeout=0.2)
    assert not done
    await sim.set_fault(FaultSpec())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with asyncio.timeout(1):
            await hung
    async with session.get(f"{sim.endpoint}/health") as resp:
        assert resp.status == 200


async def test_hang_stalls_a_stream_in_progress(sim: SimRegion, session: aiohttp.ClientSession) -> None:
    async with session.post(
        f"{sim.endpoint}/v1/chat/completions", json={**CHAT, "max_tokens": 500, "stream": True}
    ) as resp:
        await resp.content.readline()
        await sim.set_fault(FaultSpec(FaultMode.HANG))
        await asyncio.sleep(0.05)
        resp.content.read_nowait()  # drop what was sent before the hang
        await asyncio.sleep(0.1)
        assert resp.content.read_nowait() == b""


async def test_errors_fail_api_and_metrics_but_not_health(
    sim: SimRegion, session: aiohttp.ClientSession
) -> None:
    await sim.set_fault(FaultSpec(FaultMode.ERRORS))
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics")):
        async with session.request(method, f"{sim.endpoint}{path}", json=CHAT) as resp:
            assert resp.status in (500, 503), path
    async with session.get(f"{sim.endpoint}/health") as resp:
        assert resp.status == 200


async def test_errors_hit_the_given_fraction_of_each_callers_requests_spread_evenly(
    sim: SimRegion, session: aiohttp.ClientSession
) -> None:
    await sim.set_fault(FaultSpec(FaultMode.ERRORS, fraction=0.3))

    async def statuses(user_agent: str, count: int = 20) -> list[int]:
        seen = []
        for _ in range(count):
            async with session.get(f"{sim.endpoint}/v1/models", headers={"User-Agent": user_agent}) as resp:
                seen.append(resp.status)
        return seen

    probe = await statuses("probe")
    await statuses("client", 21)  # another caller's requests do not move the probe's pattern
    probe += await statuses("probe")
    failed = [s >= 500 for s in probe]
    assert sum(failed) == 12  # 30 % of 40
    assert failed == [int((n + 1) * 0.3) > int(n * 0.3) for n in range(40)]  # never two in a row


async def test_a_streamed_reply_costs_what_the_cost_model_prices_per_token(
    sim: SimRegion, session: aiohttp.ClientSession
) -> None:
    # One SSE chunk of OpenAI JSON per token: the bytes the cost model's streamed egress default stands for.
    body = {**CHAT, "max_tokens": 100, "stream": True}
    async with session.post(f"{sim.endpoint}/v1/chat/completions", json=body) as resp:
        wire = len(await resp.read())
    assert wire / 100 == pytest.approx(STREAMED_BYTES_PER_TOKEN, rel=0.1)


async def test_wrong_model_is_served_everywhere(sim: SimRegion, session: aiohttp.ClientSession) -> None:
    await post_fault(session, sim, {"mode": "wrong_model", "model": "other-model"})
    async with session.get(f"{sim.endpoint}/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["other-model"]
    async with session.post(f"{sim.endpoint}/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        assert {c["model"] for c in await sse_chunks(resp)} == {"other-model"}


async def serves(session: aiohttp.ClientSession, sim: SimRegion) -> bool:
    try:
        async with asyncio.timeout(0.3), session.get(f"{sim.endpoint}/v1/models") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def serves_within(session: aiohttp.ClientSession, sim: SimRegion, tries: int) -> bool:
    for _ in range(tries):
        if await serves(session, sim):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", ["down", "hang", "errors"])
async def test_a_fault_with_a_ttl_reverts_by_itself(
    sim: SimRegion, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level("INFO", logger="chaos.simregion")
    status, body = await post_fault(session, sim, {"mode": mode, "ttl": 1})
    assert status == 200
    assert (body["mode"], body["ttl"]) == (mode, 1)
    assert 0 < body["expires_in"] <= 1
    assert not await serves(session, sim)
    # Nobody sends "ok": the region mends itself, well within a bound generous for a loaded CI machine.
    assert await serves_within(session, sim, tries=100)
    async with session.get(f"{sim.control_url}/fault") as resp:
        shown = await resp.json()
    assert (shown["mode"], shown["ttl"], shown["expires_in"]) == ("ok", None, None)
    assert sim.fault == FaultSpec()
    assert any("expired" in r.getMessage() and mode in r.getMessage() for r in caplog.records)


async def test_the_next_fault_replaces_the_ttl(sim: SimRegion, session: aiohttp.ClientSession) -> None:
    await sim.set_fault(FaultSpec(FaultMode.DOWN, ttl=0.2))
    await sim.set_fault(FaultSpec(FaultMode.SLOW, factor=2))
    assert sim.expires_in() is None
    await asyncio.sleep(0.5)  # past the first fault's ttl: its timer must not mend the second fault
    assert sim.fault == FaultSpec(FaultMode.SLOW, factor=2)
    await sim.set_fault(FaultSpec(FaultMode.ERRORS, ttl=60))
    expires_in = sim.expires_in()
    assert expires_in is not None and 59 < expires_in <= 60


async def test_stop_cancels_a_pending_revert() -> None:
    region = SimRegion("ttl", "127.0.0.21", port=0, control_port=0)
    async with region:
        await region.set_fault(FaultSpec(FaultMode.DOWN, ttl=30))
        assert any(t.get_name() == "ttl-revert" for t in asyncio.all_tasks())
    assert not any(t.get_name() == "ttl-revert" for t in asyncio.all_tasks())


async def test_fleet_for_policy_starts_every_region_and_cleans_up_on_failure(
    session: aiohttp.ClientSession,
) -> None:
    policy = us_policy(
        {"a": "http://127.0.0.22:0", "b": "http://127.0.0.23:0"}, probes={"inference": {"model": "m1"}}
    )
    fleet = SimFleet.for_policy(policy)
    assert [(r.host, r.model) for r in fleet.regions.values()] == [("127.0.0.22", "m1"), ("127.0.0.23", "m1")]
    # Port 0 means "pick one" for both servers of a region; the control port is port + 1 otherwise.
    async with fleet:
        for region in fleet.regions.values():
            async with session.get(f"{region.endpoint}/health") as resp:
                assert resp.status == 200
        clash = SimFleet(
            [SimRegion("c", "127.0.0.24", 0, 0), SimRegion("d", "127.0.0.22", fleet["a"].port, 0)]
        )
        with pytest.raises(OSError):
            await clash.start()
        with pytest.raises(aiohttp.ClientConnectionError):  # "c" did not stay up after "d" failed
            async with session.get(f"{clash['c'].endpoint}/health"):
                pass


def test_command_line_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chaos.simregion",
            "--name",
            "cli",
            "--host",
            "127.0.0.25",
            "--port",
            "0",
            "--control-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("cli: serving http://127.0.0.25:")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
