"""Simulated OpenAI-compatible LLM regions over real HTTP, with fault knobs driven by a control API."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controlplane.policy import Policy, load_policy

log = logging.getLogger(__name__)

# A running sequence holds part of the KV cache; this makes /metrics move with real load.
KV_PER_RUNNING = 0.01
# vLLM's own TTFT bucket edges, so dashboards built for vLLM read the simulator the same way.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
REPLY = ("ok", ",", " simulated", " reply", " from", " region")
DEFAULT_MAX_TOKENS = 16
# A drill's faults last seconds to minutes; an hour is the most a forgotten one may break a region for.
MAX_FAULT_TTL = 3600.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FaultMode(StrEnum):
    OK = "ok"
    DOWN = "down"
    HANG = "hang"
    SLOW = "slow"
    ERRORS = "errors"
    WRONG_MODEL = "wrong_model"


_NUMBER = ((int, float), "a number")
_MAX_CALLERS = 1024

# JSON field -> (accepted Python types, how to name them in an error).
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "mode": ((str,), "a string"),
    "fraction": _NUMBER,
    "factor": _NUMBER,
    "model": ((str,), "a string"),
    "queue_depth": ((int,), "an integer"),
    "kv_cache": _NUMBER,
    "ttl": ((int, float, type(None)), "a number of seconds or null"),
}


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What is wrong with a region right now, plus the load it pretends to carry."""

    mode: FaultMode = FaultMode.OK
    fraction: float = 1.0
    factor: float = 20.0
    model: str = "wrong-model"
    queue_depth: int = 0
    kv_cache: float = 0.0
    # Seconds until the region itself reverts to OK; None: until the next fault. A drill runner that dies
    # mid-drill cannot leave a region broken for longer than this.
    ttl: float | None = None

    def __post_init__(self) -> None:
        try:
            # Accept the plain string too: the control API and scripts speak JSON strings.
            object.__setattr__(self, "mode", FaultMode(self.mode))
        except ValueError:
            raise ValueError(
                f"mode: must be one of {[m.value for m in FaultMode]}, got {self.mode!r}"
            ) from None
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction: must be between 0 and 1, got {self.fraction!r}")
        if self.factor < 1.0:
            raise ValueError(f"factor: must be at least 1, got {self.factor!r}")
        if not self.model:
            raise ValueError("model: must be a non-empty model id")
        if self.queue_depth < 0:
            raise ValueError(f"queue_depth: must be 0 or more, got {self.queue_depth!r}")
        if not 0.0 <= self.kv_cache <= 1.0:
            raise ValueError(f"kv_cache: must be between 0 and 1, got {self.kv_cache!r}")
        if self.ttl is not None and not 0.0 < self.ttl <= MAX_FAULT_TTL:
            raise ValueError(
                f"ttl: must be more than 0 and at most {MAX_FAULT_TTL:g} seconds, got {self.ttl!r}"
            )

    @classmethod
    def from_json(cls, data: object) -> FaultSpec:
        """Build from a decoded JSON object; ValueError names the bad field and what it allows."""
        if not isinstance(data, dict):
            raise ValueError(f"body must be a JSON object with fields {sorted(_FIELDS)}")
        for name, value in data.items():
            if name not in _FIELDS:
                raise ValueError(f"{name}: unknown field; allowed fields are {sorted(_FIELDS)}")
            types, description = _FIELDS[name]
            # bool is an int in Python but never a sensible count or fraction in JSON.
            if isinstance(value, bool) or not isinstance(value, types):
                raise ValueError(f"{name}: must be {description}, got {value!r}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SimRegion:
    """One simulated region: an OpenAI-compatible server on host:port, its control API on control_port.

    Port 0 lets the OS pick a free port (tests); `port` and `control_port` hold the real ones after start().
    A fault with a `ttl` reverts to OK by itself when it runs out (logged); GET /fault shows `expires_in`.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 8000,
        control_port: int = 8001,
        model: str = "demo-llm",
        ttft: float = 0.02,
        token_interval: float = 0.005,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.control_port = control_port
        self.model = model
        self.ttft = ttft
        self.token_interval = token_interval
        self._fault = FaultSpec()
        self._rng = random.Random()
        self._calls: dict[tuple[str, str], int] = {}  # requests per (path, caller) under the errors fault
        self._running = 0
        self._hung: set[RequestHandler] = set()
        self._transition = asyncio.Lock()
        self._revert: asyncio.Task[None] | None = None
        self._expires_at: float | None = None  # loop.time() at which the fault's ttl runs out
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._control: web.AppRunner | None = None
        self._registry = CollectorRegistry()
        labels = ["model_name"]
        self._waiting_g = Gauge(
            "vllm:num_requests_waiting", "Requests waiting to be processed.", labels, registry=self._registry
        )
        self._running_g = Gauge(
            "vllm:num_requests_running",
            "Requests in model execution batches.",
            labels,
            registry=self._registry,
        )
        self._kv_g = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            labels,
            registry=self._registry,
        )
        self._ttft_h = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=self._registry,
        )
        self._prompt_c = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=self._registry
        )
        self._generation_c = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            labels,
            registry=self._registry,
        )
        self._success_c = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=self._registry,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"

    @property
    def fault(self) -> FaultSpec:
        return self._fault

    def expires_in(self) -> float | None:
        """Seconds until the fault reverts by itself; None when it lasts until changed."""
        if self._expires_at is None:
            return None
        return max(0.0, self._expires_at - asyncio.get_running_loop().time())

    @property
    def served_model(self) -> str:
        return self._fault.model if self._fault.mode is FaultMode.WRONG_MODEL else self.model

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # half-started (say, the port was taken): release what did start
            raise

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._faults])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        # handler_cancellation: a client that goes away aborts its request, as vLLM does;
        # that keeps the running gauge honest and lets a closed connection end a hung request.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        control = web.Application()
        control.router.add_get("/fault", self._get_fault)
        control.router.add_post("/fault", self._post_fault)
        self._control = web.AppRunner(control, access_log=None, shutdown_timeout=1.0)
        await self._control.setup()
        await web.TCPSite(self._control, self.host, self.control_port).start()
        self.control_port = self._control.addresses[0][1]  # the real one when 0 asked the OS to pick
        if self._fault.mode is not FaultMode.DOWN:
            await self._listen()

    async def stop(self) -> None:
        await self._cancel_revert()
        self._drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._control is not None:
            await self._control.cleanup()
        self._runner = self._control = self._site = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def set_fault(self, spec: FaultSpec) -> None:
        """Apply a fault; returns once the listening socket really is closed or open again."""
        # Serialised: two control requests racing must not both open, or close, the listening socket.
        async with self._transition:
            await self._cancel_revert()
            await self._apply(spec)
            if spec.ttl is not None:
                self._expires_at = asyncio.get_running_loop().time() + spec.ttl
                self._revert = asyncio.create_task(self._revert_after(spec.ttl), name=f"{self.name}-revert")

    async def _cancel_revert(self) -> None:
        revert, self._revert, self._expires_at = self._revert, None, None
        if revert is not None:
            revert.cancel()
            # Wait: a revert mid-way through reopening the socket must finish or stop before the next fault.
            await asyncio.gather(revert, return_exceptions=True)

    async def _revert_after(self, ttl: float) -> None:
        await asyncio.sleep(ttl)
        async with self._transition:
            # Past the lock no set_fault can cancel this task any more: it is no longer the pending revert.
            self._revert = self._expires_at = None
            log.info(
                "region %s: fault %s expired after %gs, reverting to ok", self.name, self._fault.mode, ttl
            )
            try:
                await self._apply(FaultSpec())
            except OSError:
                # Another process took the port while the region was down; the next set_fault tries again.
                log.exception("region %s: could not listen again after the fault expired", self.name)

    async def _apply(self, spec: FaultSpec) -> None:
        previous, self._fault = self._fault, spec
        self._calls.clear()
        log.info("region %s: fault %s", self.name, spec)
        if previous.mode is FaultMode.HANG and spec.mode is not FaultMode.HANG:
            self._drop_connections(list(self._hung))
        if spec.mode is FaultMode.DOWN and self._site is not None:
            site, self._site = self._site, None
            await site.stop()
            # A dead server also loses its established connections, keep-alive ones included.
            self._drop_connections()
        elif spec.mode is not FaultMode.DOWN and self._site is None and self._runner is not None:
            await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        # With port 0 the OS picked one; keep it, so that coming back from `down` reopens the same port.
        self.port = self._runner.addresses[0][1]

    def _drop_connections(self, handlers: Iterable[RequestHandler] | None = None) -> None:
        server = self._runner.server if self._runner is not None else None
        if handlers is None:
            handlers = server.connections if server is not None else ()
        for handler in handlers:
            handler.force_close()

    # ------------------------------------------------------------------ faults

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        await self._stall_while_hung(request)
        spec = self._fault
        if (
            spec.mode is FaultMode.ERRORS
            and request.path != "/health"  # vLLM's /health stays 200 while inference is broken
            and self._fails_next(request, spec.fraction)
        ):
            status = self._rng.choice((500, 503))
            return web.json_response(
                {
                    "error": {
                        "message": f"simulated failure in {self.name}",
                        "type": "server_error",
                        "code": status,
                    }
                },
                status=status,
            )
        return await handler(request)

    def _fails_next(self, request: web.Request, fraction: float) -> bool:
        """Spread failures evenly over each caller's requests to each path: exactly `fraction` of them, never
        two in a row below one half. A random pick would hand the probes an unlucky streak now and then, and a
        drill's verdict would rest on luck rather than on the plane's rules."""
        key = (request.path, request.headers.get("User-Agent", ""))
        if key not in self._calls and len(self._calls) >= _MAX_CALLERS:
            self._calls.clear()  # a flood of made-up paths must not grow the table without end
        n = self._calls.get(key, 0)
        self._calls[key] = n + 1
        return int((n + 1) * fraction) > int(n * fraction)

    async def _stall_while_hung(self, request: web.Request) -> None:
        """Never answer while the region hangs; leaving the fault closes the connection, ending this."""
        if self._fault.mode is not FaultMode.HANG:
            return
        protocol = request.protocol
        self._hung.add(protocol)
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self._hung.discard(protocol)

    # ------------------------------------------------------------------ OpenAI-compatible API

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        model = self.served_model
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": model,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "vllm",
                        "root": model,
                        "parent": None,
                    }
                ],
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        model = self.served_model
        spec = self._fault
        for gauge, value in (
            (self._waiting_g, spec.queue_depth),
            (self._running_g, self._running),
            (self._kv_g, min(1.0, spec.kv_cache + self._running * KV_PER_RUNNING)),
        ):
            # Only the served model's series: a stale one left under the old model id would double count.
            gauge.clear()
            gauge.labels(model).set(value)
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _bad_request("request body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _bad_request("messages: must be a non-empty list")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            return _bad_request("max_tokens: must be a positive integer")
        prompt_tokens = sum(
            len(str(m.get("content", "")).split()) for m in body["messages"] if isinstance(m, dict)
        )
        model = self.served_model
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        self._running += 1
        self._prompt_c.labels(model).inc(prompt_tokens)
        try:
            if body.get("stream"):
                return await self._stream(request, model, completion_id, created, max_tokens)
            text = "".join([token async for token in self._tokens(request, model, max_tokens)])
        finally:
            self._running -= 1
        self._success_c.labels(model, "length").inc()
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "length",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": max_tokens,
                    "total_tokens": prompt_tokens + max_tokens,
                },
            }
        )

    async def _stream(
        self, request: web.Request, model: str, completion_id: str, created: int, max_tokens: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

        try:
            # The role arrives before any token, as from OpenAI: a probe must time the first *content*.
            await response.write(chunk({"role": "assistant", "content": ""}))
            async for token in self._tokens(request, model, max_tokens):
                await response.write(chunk({"content": token}))
            await response.write(chunk({}, "length"))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            # The client gave up (a probe's timeout) or a `down` fault closed the connection mid-stream.
            log.debug("region %s: stream to a closed connection abandoned", self.name)
            return response
        self._success_c.labels(model, "length").inc()
        return response

    async def _tokens(self, request: web.Request, model: str, count: int) -> AsyncIterator[str]:
        """Yield `count` tokens on the region's clock: the first after ttft (x factor when slow)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        spec = self._fault
        ttft = self.ttft * (spec.factor if spec.mode is FaultMode.SLOW else 1.0)
        for i in range(count):
            # Sleep to an absolute deadline so the rate does not drift with scheduling delays.
            await asyncio.sleep(max(0.0, start + ttft + i * self.token_interval - loop.time()))
            await self._stall_while_hung(request)
            if i == 0:
                self._ttft_h.labels(model).observe(loop.time() - start)
            self._generation_c.labels(model).inc()
            yield REPLY[i % len(REPLY)]

    # ------------------------------------------------------------------ control API

    def _fault_json(self) -> dict[str, Any]:
        return {**self._fault.to_json(), "expires_in": self.expires_in()}

    async def _get_fault(self, request: web.Request) -> web.Response:
        return web.json_response(self._fault_json())

    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            spec = FaultSpec.from_json(await request.json())
        except ValueError as exc:  # JSONDecodeError is a ValueError too
            return _bad_request(str(exc))
        await self.set_fault(spec)
        return web.json_response(self._fault_json())


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=400)


class SimFleet:
    """Several simulated regions started and stopped together."""

    def __init__(self, regions: Sequence[SimRegion]) -> None:
        self.regions = {region.name: region for region in regions}

    @classmethod
    def for_policy(cls, policy: Policy, ttft: float = 0.02, token_interval: float = 0.005) -> SimFleet:
        """One region per policy region at its endpoint's host:port; control API on port + 1 (0: OS picks)."""
        regions = []
        for region in policy.regions:
            parts = urlsplit(region.endpoint)
            port = parts.port if parts.port is not None else 80
            regions.append(
                SimRegion(
                    region.name,
                    parts.hostname or "127.0.0.1",
                    port,
                    port + 1 if port else 0,
                    model=region.model or policy.probes.inference.model or "demo-llm",
                    ttft=ttft,
                    token_interval=token_interval,
                )
            )
        return cls(regions)

    def __getitem__(self, name: str) -> SimRegion:
        return self.regions[name]

    async def start(self) -> None:
        started: list[SimRegion] = []
        try:
            for region in self.regions.values():
                await region.start()
                started.append(region)
        except BaseException:
            # Leave nothing listening behind when one region cannot start.
            await asyncio.gather(*(r.stop() for r in started))
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.regions.values()))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _serve(fleet: SimFleet) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fleet:
        for region in fleet.regions.values():
            print(
                f"{region.name}: serving {region.endpoint} (model {region.model}), control {region.control_url}/fault",
                flush=True,
            )
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chaos.simregion", description=__doc__)
    parser.add_argument(
        "--policy", help="start one region per region of this policy file (ignores --name/--host)"
    )
    parser.add_argument("--name", default="sim")
    parser.add_argument("--host", default="127.0.0.11")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--control-port", type=int, default=8001)
    parser.add_argument("--model", default="demo-llm")
    parser.add_argument("--ttft", type=float, default=0.02, help="seconds to the first token")
    parser.add_argument("--token-interval", type=float, default=0.005, help="seconds between tokens")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.policy:
        fleet = SimFleet.for_policy(load_policy(args.policy), args.ttft, args.token_interval)
    else:
        fleet = SimFleet(
            [
                SimRegion(
                    args.name,
                    args.host,
                    args.port,
                    args.control_port,
                    args.model,
                    args.ttft,
                    args.token_interval,
                )
            ]
        )
    asyncio.run(_serve(fleet))


if __name__ == "__main__":
    main()
