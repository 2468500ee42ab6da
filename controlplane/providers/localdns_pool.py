"""The embedded DNS server's worker processes, from the provider's side: started on the sockets it bound, fed
every new answer table, restarted when they die, their statistics gathered.

Provider and worker speak in frames over the worker's stdin and stdout: a 4-byte length, then a pickle.
Down go FastTables, whole, in order; up come Reports. Pickle is safe here: both ends are this program, and
the pipes are no one else's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from controlplane.providers.localdns_fast import FastTable, StatKey

log = logging.getLogger(__name__)

REPORT_INTERVAL = 0.2  # seconds between two statistics reports of a worker
SETTLE_TIMEOUT = 2.0
"""Seconds apply() waits for every worker to serve the new table. A worker that served an earlier one but
not this one by then is stuck: it is killed, and its replacement starts from the newest table."""
MAX_BACKLOG = 16 * 1024 * 1024  # bytes of tables a worker may leave unread before it counts as stuck
RESTART_INITIAL = 0.1  # seconds before a dead worker's first restart, doubling up to RESTART_MAX
RESTART_MAX = 5.0
STABLE_AFTER = 10.0  # a worker that ran this long before it died restarts after RESTART_INITIAL again
CLOSE_TIMEOUT = 2.0  # seconds a worker has to leave once told to, before it is killed
_LENGTH = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Report:
    """A worker's state: the serial of the table it serves and its counts since it started."""

    serial: int
    stats: dict[StatKey, int]
    dropped: dict[str, int]
    connections: int


def frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message on `reader`; None at its end (the other side is gone)."""
    try:
        (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        return pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None


def serial(table: FastTable) -> int:
    return int(table.full.soa[0].serial)


@dataclass(slots=True)
class _Worker:
    process: asyncio.subprocess.Process
    started: float
    report: Report | None = None


@dataclass(slots=True)
class _Totals:
    stats: Counter[StatKey] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)

    def add(self, report: Report) -> None:
        self.stats.update(report.stats)
        self.dropped.update(report.dropped)


class WorkerPool:
    """`count` worker processes answering on `udp` and `tcp`, each kept alive and fed `table()` and what
    publish() sends."""

    def __init__(
        self,
        udp: socket.socket,
        tcp: socket.socket,
        count: int,
        table: Callable[[], FastTable],
        settings: dict[str, float],
    ) -> None:
        self._udp, self._tcp = udp, tcp
        self._table = table
        self._settings = settings
        self._workers: list[_Worker | None] = [None] * count
        self._supervisors: list[asyncio.Task[None]] = []
        self._gone = _Totals()  # what workers that died had reported
        self._reported = asyncio.Event()
        self._closing = asyncio.Event()
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None and w.process.returncode is None]

    @property
    def stats(self) -> Counter[StatKey]:
        return self._totals().stats

    @property
    def dropped(self) -> Counter[str]:
        return self._totals().dropped

    @property
    def connections(self) -> int:
        return sum(w.report.connections for w in self._workers if w is not None and w.report is not None)

    def _totals(self) -> _Totals:
        totals = _Totals(Counter(self._gone.stats), Counter(self._gone.dropped))
        for worker in self._workers:
            if worker is not None and worker.report is not None:
                totals.add(worker.report)
        return totals

    async def start(self) -> None:
        try:
            for slot in range(len(self._workers)):
                self._workers[slot] = await self._spawn()
        except BaseException:
            for worker in self._workers:
                if worker is not None:
                    with suppress(ProcessLookupError):
                        worker.process.kill()
                    await worker.process.wait()
            raise
        self._supervisors = [asyncio.create_task(self._supervise(slot)) for slot in range(len(self._workers))]

    async def close(self) -> None:
        self._closing.set()
        for worker in self._workers:
            if worker is not None and worker.process.stdin is not None:
                worker.process.stdin.close()  # its end of input: the worker leaves
        _, late = await asyncio.wait(self._supervisors, timeout=CLOSE_TIMEOUT)
        for worker in self._workers:
            if late and worker is not None and worker.process.returncode is None:
                worker.process.kill()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._udp.close()
        self._tcp.close()

    def publish(self, table: FastTable) -> None:
        """Send `table` to every worker; one too far behind to take it is killed and restarted."""
        message = frame(table)
        for worker in self._workers:
            stdin = worker.process.stdin if worker is not None else None
            if worker is None or stdin is None or stdin.is_closing():
                continue
            if stdin.transport.get_write_buffer_size() > MAX_BACKLOG:
                log.warning(
                    "localdns: worker %d left %d bytes unread, restarting it", worker.process.pid, MAX_BACKLOG
                )
                with suppress(ProcessLookupError):
                    worker.process.kill()
                continue
            stdin.write(message)

    async def settle(self) -> None:
        """Wait until every worker serves the newest table; a stuck one is restarted (see SETTLE_TIMEOUT)."""
        target = serial(self._table())
        deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT

        def behind() -> list[_Worker]:
            return [
                w
                for w in self._workers
                if w is not None
                and w.process.returncode is None
                and (w.report is None or w.report.serial < target)
            ]

        while behind():
            self._reported.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._reported.wait()
            except TimeoutError:
                break
        for worker in behind():
            if worker.report is not None:  # it served before, so it is stuck, not starting
                log.warning("localdns: worker %d did not take a new table, restarting it", worker.process.pid)
                with suppress(ProcessLookupError):
                    worker.process.kill()

    async def _spawn(self) -> _Worker:
        fds = (self._udp.fileno(), self._tcp.fileno())
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controlplane.providers.localdns_worker",
            *map(str, fds),
            json.dumps(self._settings),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=fds,
        )
        assert process.stdin is not None
        process.stdin.write(frame(self._table()))
        return _Worker(process, time.monotonic())

    async def _supervise(self, slot: int) -> None:
        delay = RESTART_INITIAL
        while True:
            worker = self._workers[slot]
            assert worker is not None
            await self._follow(worker)
            if worker.report is not None:
                self._gone.add(worker.report)
            self._workers[slot] = None
            if self._closing.is_set():
                return
            self.restarts += 1
            ran = time.monotonic() - worker.started
            if ran >= STABLE_AFTER:
                delay = RESTART_INITIAL
            log.warning(
                "localdns: worker %d ended (%s) after %.1fs; restarting it in %.1fs",
                worker.process.pid,
                worker.process.returncode,
                ran,
                delay,
            )
            with suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()
                    return
            delay = min(delay * 2, RESTART_MAX)
            self._workers[slot] = await self._spawn()

    async def _follow(self, worker: _Worker) -> None:
        """Take the worker's reports until it ends."""
        stdout = worker.process.stdout
        assert stdout is not None
        while (report := await read_frame(stdout)) is not None:
            worker.report = report
            self._reported.set()
        await worker.process.wait()
        self._reported.set()
