"""Hostile peers, for tests and benches: HostileRegion, an HTTP server that answers probes the way an
attacker or a broken proxy would; heavy_queries(), DNS packets costly to parse; and watched_loop(), how
long such a peer stalled the event loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Self

import dns.message
from aiohttp import web

from chaos.loopback import SERVICE_NAME, serve_app, stop_app
from probes.loop import LoopMonitor

MiB = 1024 * 1024
_BLOCK = 64 * 1024  # bytes per write of an endless body: the size aiohttp's writer drains at
_SSE_CHUNK = (
    b'data: {"id":"chatcmpl-hostile","object":"chat.completion.chunk","model":"demo-llm",'
    b'"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":null}]}\n\n'
)
_METRICS_LINE = b'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="demo-llm"} 7.0\n'
_METRICS_HEAD = b"# TYPE vllm:time_to_first_token_seconds histogram\n"
# What a page of HUGE_METRICS reads as, after all the filler: (queue, running, KV-cache usage).
HUGE_METRICS_LOAD = (3.0, 2.0, 0.5)
_METRICS_TAIL = (
    b"# TYPE vllm:num_requests_waiting gauge\n"
    b'vllm:num_requests_waiting{model_name="demo-llm"} 3\n'
    b"# TYPE vllm:num_requests_running gauge\n"
    b'vllm:num_requests_running{model_name="demo-llm"} 2\n'
    b"# TYPE vllm:kv_cache_usage_perc gauge\n"
    b'vllm:kv_cache_usage_perc{model_name="demo-llm"} 0.5\n'
)


class Hostility(StrEnum):
    """What the server does under the endpoint `/{hostility}`; every path below it answers so."""

    ENDLESS_BODY = "endless-body"  # 200 and bytes with no end and no newline, on every path
    ENDLESS_STREAM = "endless-stream"  # endless bodies; a chat completion streams valid chunks forever
    HUGE_METRICS = "huge-metrics"  # /metrics: a valid page of `metrics_size` bytes, load gauges last
    GZIP_BOMB = "gzip-bomb"  # Content-Encoding: gzip, `bomb_size` bytes of zeros in about a thousandth
    REDIRECT = "redirect"  # 307 to the same path under `redirect_to`
    DRIP = "drip"  # 200, then one byte every `drip_interval`
    DEEP_JSON = "deep-json"  # a chat completion whose one chunk nests arrays 10,000 deep


def gzip_bomb(size: int) -> bytes:
    """A valid gzip member inflating to `size` (rounded down to MiB) zero bytes, built without compressing them.

    After a full flush deflate forgets its history, so each further MiB of zeros compresses to the same
    ~1 KiB: the bomb is the header, that block repeated, and the trailer.
    """
    zeros = bytes(MiB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    count = max(1, size // MiB)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    final_block = b"\x03\x00"  # an empty last deflate block
    return first + block * (count - 1) + final_block + struct.pack("<II", crc, (count * MiB) & 0xFFFFFFFF)


class HostileRegion:
    """Serves every Hostility at once, each under its own endpoint prefix, on host:port (0: any free port).

    Bounded: an endless response stops after `lifetime` seconds or when the client leaves, and stop() (or
    leaving the context) drops every connection.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        metrics_size: int = 50 * MiB,
        bomb_size: int = 256 * MiB,
        redirect_to: str = "http://127.0.0.1:9",
        drip_interval: float = 0.05,
        lifetime: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics_size = metrics_size
        self.redirect_to = redirect_to.rstrip("/")
        self.drip_interval = drip_interval
        self.lifetime = lifetime
        self._bomb = gzip_bomb(bomb_size)
        self._runner: web.AppRunner | None = None

    def endpoint(self, hostility: Hostility) -> str:
        return f"http://{self.host}:{self.port}/{hostility.value}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{hostility}/{path:.*}", self._answer)
        # handler_cancellation: a client that gives up ends its endless response at once.
        self._runner, self.port = await serve_app(
            app, self.host, self.port, handler_cancellation=True, shutdown_timeout=0.5
        )

    async def stop(self) -> None:
        await stop_app(self._runner, drop_connections=True)
        self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            hostility = Hostility(request.match_info["hostility"])
        except ValueError:
            raise web.HTTPNotFound() from None
        path = "/" + request.match_info["path"]
        sse = path == "/v1/chat/completions"
        kind = "text/event-stream" if sse else "text/plain"
        if hostility is Hostility.ENDLESS_BODY:
            return await self._endless(request, kind, b"x" * _BLOCK, head=b"data: " if sse else b"")
        if hostility is Hostility.ENDLESS_STREAM:
            block = _SSE_CHUNK * (_BLOCK // len(_SSE_CHUNK)) if sse else b"x" * _BLOCK
            return await self._endless(request, kind, block)
        if hostility is Hostility.HUGE_METRICS:
            if path != "/metrics":
                return web.Response(text="ok")
            return await self._huge_metrics(request)
        if hostility is Hostility.GZIP_BOMB:
            return web.Response(body=self._bomb, headers={"Content-Type": kind, "Content-Encoding": "gzip"})
        if hostility is Hostility.REDIRECT:
            raise web.HTTPTemporaryRedirect(self.redirect_to + path)
        if hostility is Hostility.DEEP_JSON:
            depth = 10_000  # past the interpreter's recursion limit, inside any sane line cap
            return web.Response(body=b"data: " + b"[" * depth + b"]" * depth + b"\n\n", content_type=kind)
        return await self._endless(request, kind, b"x", every=self.drip_interval)

    async def _endless(
        self, request: web.Request, kind: str, block: bytes, *, head: bytes = b"", every: float = 0.0
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": kind})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lifetime
        # A client that closes the connection is what a capped probe does: the answer just ends.
        with contextlib.suppress(ConnectionError):
            await response.write(head)
            while loop.time() < deadline:
                await response.write(block)  # waits for the socket to drain: the server's memory stays flat
                if every:
                    await asyncio.sleep(every)
        return response

    async def _huge_metrics(self, request: web.Request) -> web.StreamResponse:
        lines = max(0, (self.metrics_size - len(_METRICS_HEAD) - len(_METRICS_TAIL)) // len(_METRICS_LINE))
        response = web.StreamResponse(headers={"Content-Type": "text/plain; version=0.0.4"})
        response.content_length = len(_METRICS_HEAD) + lines * len(_METRICS_LINE) + len(_METRICS_TAIL)
        await response.prepare(request)
        per_write = _BLOCK // len(_METRICS_LINE)
        block = _METRICS_LINE * per_write
        with contextlib.suppress(ConnectionError):
            await response.write(_METRICS_HEAD)
            for _ in range(lines // per_write):
                await response.write(block)
            await response.write(_METRICS_LINE * (lines % per_write) + _METRICS_TAIL)
        return response


MAX_UDP = 65_507  # the largest UDP payload over IPv4
# A tick this short sees a stall of a few ms; the probes' own monitor (probes.loop.INTERVAL) is coarser.
WATCH_INTERVAL = 0.005


@contextlib.asynccontextmanager
async def watched_loop() -> AsyncIterator[LoopMonitor]:
    """A LoopMonitor ticking every WATCH_INTERVAL on the running loop while entered; its `max_lag` is the
    longest the loop was late for a tick, that is, how long it stalled."""
    monitor = LoopMonitor(interval=WATCH_INTERVAL)
    task = asyncio.create_task(monitor.run())
    try:
        yield monitor
    finally:
        # The tick still pending counts too: a stall in the very step that ends the block (a probe that
        # parses on the loop and returns) would otherwise go unseen.
        monitor.state = monitor.state.tick(asyncio.get_running_loop().time())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def heavy_queries(name: str = SERVICE_NAME) -> tuple[bytes, bytes]:
    """Two 64 KB A queries for `name` that are costly to parse: thousands of answer records, and one OPT
    record with thousands of options (whose section counts are a real query's: only its size gives it
    away)."""
    question = dns.message.make_query(name, "A").to_wire()[12:]
    # An empty record named by a pointer to the question, of a distinct type each: every record is an
    # RRset of its own, the parser's most expensive case.
    record = struct.Struct("!HHHIH")
    count = (MAX_UDP - 12 - len(question)) // record.size
    records = b"".join(record.pack(0xC00C, 1000 + i, 1, 60, 0) for i in range(count))
    many_records = struct.pack("!6H", 0xBEEF, 0x0100, 1, count, 0, 0) + question + records
    options = (MAX_UDP - 12 - len(question) - 11) // 4
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, options * 4) + struct.pack("!HH", 65001, 0) * options
    many_options = struct.pack("!6H", 0xBEEF, 0x0100, 1, 0, 0, 1) + question + opt
    return many_records, many_options


async def _serve(server: HostileRegion) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        for hostility in Hostility:
            print(f"{hostility.value}: {server.endpoint(hostility)}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chaos.hostile", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--metrics-size", type=int, default=50 * MiB, help="bytes of the huge /metrics page")
    parser.add_argument("--redirect-to", default="http://127.0.0.1:9", help="base URL redirects point at")
    parser.add_argument("--lifetime", type=float, default=30.0, help="seconds an endless answer lasts")
    args = parser.parse_args(argv)
    server = HostileRegion(
        args.host,
        args.port,
        metrics_size=args.metrics_size,
        redirect_to=args.redirect_to,
        lifetime=args.lifetime,
    )
    asyncio.run(_serve(server))


if __name__ == "__main__":
    main()
