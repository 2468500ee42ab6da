"""A userspace TCP proxy on loopback that breaks the path between the plane and one region, for drills.

One listening port relays to one upstream host:port. Faults, each with an optional time-to-live kept inside
the proxy (it clears itself, so a drill runner that dies cannot leave the path broken):

- `latency`: every chunk is held `latency` seconds in each direction before it is forwarded, so a round
  trip grows by twice that. Chunks queue in arrival order, so bytes are never reordered, and the pipe stays
  full (throughput is not cut to one chunk per delay), as on a long path.
- `partition`, mode `blackhole`: nothing is forwarded any more. New connections are accepted and then left
  hanging (no upstream connection is made); open ones stop forwarding. What was held flows again when the
  partition ends, as TCP retransmission would deliver it on a healed path.
- `partition`, mode `reset`: every open connection is reset (RST both ways) and new ones are reset at once.
- `clear`: no fault.

Bounded: at most `max_connections` open (the longest idle one is dropped for a new one), at most
QUEUE_CHUNKS x CHUNK bytes buffered per direction per connection (reading waits for writing: backpressure),
and a timeout on connecting upstream.

In-process only (a drill runner runs in the same event loop):

    async with TcpFaultProxy("127.0.0.1", region_port) as proxy:
        proxy.set_fault("latency", latency=0.3, ttl=30)
        proxy.set_fault("partition", mode="blackhole", ttl=10)
        proxy.clear()
        proxy.stats()
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Self, TypeVar

from chaos.loopback import require_loopback

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
QUEUE_CHUNKS = 16  # 1 MiB per direction per connection, and with a 0.3 s latency still over 3 MB/s
MAX_CONNECTIONS = 256
CONNECT_TIMEOUT = 5.0
MAX_LATENCY = 60.0
MAX_TTL = 3600.0
# SO_LINGER on, zero seconds: close() sends RST instead of FIN, which is what a reset path looks like.
_RESET_LINGER = struct.pack("ii", 1, 0)

_Enum = TypeVar("_Enum", bound=StrEnum)


class FaultKind(StrEnum):
    CLEAR = "clear"
    LATENCY = "latency"
    PARTITION = "partition"


class PartitionMode(StrEnum):
    BLACKHOLE = "blackhole"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class TcpFault:
    """One fault on the path; `ttl` seconds until it clears itself (None: until the next fault)."""

    kind: FaultKind = FaultKind.CLEAR
    latency: float = 0.0
    mode: PartitionMode = PartitionMode.BLACKHOLE
    ttl: float | None = None

    @classmethod
    def of(
        cls,
        kind: FaultKind | str,
        latency: float = 0.0,
        mode: PartitionMode | str = PartitionMode.BLACKHOLE,
        ttl: float | None = None,
    ) -> TcpFault:
        """From the plain strings a drill file speaks too."""
        return cls(_member(FaultKind, "kind", kind), latency, _member(PartitionMode, "mode", mode), ttl)

    def __post_init__(self) -> None:
        if self.kind is FaultKind.LATENCY and not 0.0 < self.latency <= MAX_LATENCY:
            raise ValueError(
                f"latency: must be more than 0 and at most {MAX_LATENCY:g} seconds, got {self.latency!r}"
            )
        if self.kind is not FaultKind.LATENCY and self.latency:
            raise ValueError(f"latency: only a latency fault has one, not {self.kind.value}")
        if self.ttl is not None and (self.kind is FaultKind.CLEAR or not 0.0 < self.ttl <= MAX_TTL):
            raise ValueError(
                f"ttl: must be more than 0 and at most {MAX_TTL:g} seconds on a fault to clear, got {self.ttl!r}"
            )


def _member(enum: type[_Enum], name: str, value: _Enum | str) -> _Enum:
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{name}: must be one of {[m.value for m in enum]}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class ProxyStats:
    connections: int  # open now
    accepted: int
    dropped: int  # closed by the proxy: reset by a fault, evicted for a new one, upstream unreachable
    bytes_up: int  # client to upstream, forwarded
    bytes_down: int


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    last_active: float
    upstream: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def reset(self) -> None:
        """RST both sides and end the link's task."""
        for writer in (self.client, self.upstream):
            if writer is None or writer.transport.is_closing():
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_LINGER)
            writer.transport.abort()
        if self.task is not None:
            self.task.cancel()


class TcpFaultProxy:
    """Listens on host:port (port 0: the OS picks; `port` is the real one after start())."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = MAX_CONNECTIONS,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        require_loopback(host, "host")
        if max_connections < 1:
            raise ValueError(f"max_connections: must be at least 1, got {max_connections!r}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._fault = TcpFault()
        self._expiry: asyncio.TimerHandle | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._accepted = self._dropped = self._bytes_up = self._bytes_down = 0

    @property
    def fault(self) -> TcpFault:
        return self._fault

    def stats(self) -> ProxyStats:
        return ProxyStats(len(self._links), self._accepted, self._dropped, self._bytes_up, self._bytes_down)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=CHUNK)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._server is not None:
            self._server.close()
        tasks = [link.task for link in self._links if link.task is not None]
        for link in list(self._links):
            link.reset()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ faults

    def set_fault(
        self,
        kind: FaultKind | str,
        *,
        latency: float = 0.0,
        mode: PartitionMode | str = PartitionMode.BLACKHOLE,
        ttl: float | None = None,
    ) -> TcpFault:
        """Replace the fault (and its ttl) at once; ValueError names a bad argument and changes nothing."""
        fault = TcpFault.of(kind, latency, mode, ttl)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._fault = fault
        log.info("tcp proxy :%d -> %s:%d: %s", self.port, self.upstream_host, self.upstream_port, fault)
        if fault.kind is FaultKind.PARTITION:
            self._flowing.clear()
            if fault.mode is PartitionMode.RESET:
                for link in list(self._links):
                    self._drop(link)
        else:
            self._flowing.set()
        if fault.ttl is not None:
            self._expiry = asyncio.get_running_loop().call_later(fault.ttl, self._expire)
        return fault

    def clear(self) -> None:
        self.set_fault(FaultKind.CLEAR)

    def _expire(self) -> None:
        self._expiry = None
        log.info(
            "tcp proxy :%d: %s expired after %gs, cleared", self.port, self._fault.kind.value, self._fault.ttl
        )
        self.clear()

    # ------------------------------------------------------------------ relaying

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that starts a task of the proxy's own: asyncio's task for a coroutine callback
        # cannot be cancelled cleanly (3.11), and stop() must be able to end every link.
        loop = asyncio.get_running_loop()
        self._accepted += 1
        while len(self._links) >= self.max_connections:
            self._drop(min(self._links, key=lambda link: link.last_active))
        link = _Link(writer, loop.time())
        self._links.add(link)
        link.task = asyncio.create_task(self._serve(link, reader), name=f"tcpproxy-{self.port}")
        link.task.add_done_callback(lambda task: self._finished(link, task))

    def _finished(self, link: _Link, task: asyncio.Task[None]) -> None:
        self._links.discard(link)
        if not task.cancelled() and task.exception() is not None:
            log.error("tcp proxy :%d: relaying failed", self.port, exc_info=task.exception())

    def _drop(self, link: _Link) -> None:
        self._dropped += 1
        self._links.discard(link)
        link.reset()

    async def _serve(self, link: _Link, client: asyncio.StreamReader) -> None:
        try:
            if self._fault.kind is FaultKind.PARTITION and self._fault.mode is PartitionMode.RESET:
                self._drop(link)
                return
            await self._flowing.wait()  # a blackholed connection is held without an upstream
            try:
                async with asyncio.timeout(self.connect_timeout):
                    upstream, link.upstream = await asyncio.open_connection(
                        self.upstream_host, self.upstream_port, limit=CHUNK
                    )
            except (OSError, TimeoutError) as exc:
                log.info(
                    "tcp proxy :%d: upstream %s:%d unreachable: %r",
                    self.port,
                    self.upstream_host,
                    self.upstream_port,
                    exc,
                )
                self._drop(link)
                return
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(link, client, link.upstream, up=True))
                group.create_task(self._pipe(link, upstream, link.client, up=False))
        except* OSError as exc:
            # A side went away mid-stream: the other one goes too, as it would behind a real router.
            log.debug("tcp proxy :%d: connection ended: %r", self.port, exc.exceptions)
        finally:
            # close, not abort: what drain() left in the transport's buffer still goes out before the FIN.
            for writer in (link.client, link.upstream):
                if writer is not None:
                    writer.close()

    async def _pipe(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        """One direction: a reader stamps chunks with when they may leave, a writer sends them in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read(link, reader, queue))
            await self._write(link, queue, writer, up=up)

    async def _read(
        self, link: _Link, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await reader.read(CHUNK)
            link.last_active = loop.time()
            # Blocks while the writer is QUEUE_CHUNKS behind: the sender's TCP window closes, nothing piles up here.
            await queue.put((link.last_active + self._fault.latency, chunk))
            if not chunk:
                return

    async def _write(
        self,
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self._flowing.wait()
            if not chunk:
                # Half-close: the other direction may still be answering (HTTP/1.0 style clients).
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()
            link.last_active = loop.time()
            if up:
                self._bytes_up += len(chunk)
            else:
                self._bytes_down += len(chunk)
