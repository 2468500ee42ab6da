"""A worker process of the embedded DNS server: answers on the sockets the provider bound, from the tables it
sends, and reports its counts back (see controlplane.providers.localdns_pool).

Run by the provider as `python -m controlplane.providers.localdns_worker UDP_FD TCP_FD SETTINGS_JSON`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys

from controlplane.providers.localdns import Responder
from controlplane.providers.localdns_pool import REPORT_INTERVAL, Report, frame, read_frame, serial

_STDOUT = 1
NICENESS = 5


class _Reporter:
    """Reports over stdout without ever blocking: answering must not wait on a provider whose loop stalls.

    A report is a snapshot, so one that does not fit in the pipe just waits, and newer counts are taken
    only once it is through.
    """

    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._pending = b""
        os.set_blocking(_STDOUT, False)

    def send(self) -> None:
        if not self._pending:
            r = self._responder
            self._pending = frame(Report(serial(r.table), dict(r.stats), dict(r.dropped), r.connections))
        try:
            written = os.write(_STDOUT, self._pending)
        except BlockingIOError:
            return
        except BrokenPipeError:
            os._exit(0)  # the provider is gone
        self._pending = self._pending[written:]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self.send()


async def serve(udp_fd: int, tcp_fd: int, settings: dict[str, float]) -> None:
    loop = asyncio.get_running_loop()
    tables = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(tables), sys.stdin)
    table = await read_frame(tables)
    if table is None:
        return
    responder = Responder(
        table,
        idle_timeout=settings["idle_timeout"],
        query_timeout=settings["query_timeout"],
        max_connections=int(settings["max_connections"]),
    )
    await responder.serve(socket.socket(fileno=udp_fd), socket.socket(fileno=tcp_fd))
    reporter = _Reporter(responder)
    reporter.send()
    reporting = asyncio.create_task(reporter.run())
    # The previous table serves until the next one has arrived whole and been unpickled.
    while (table := await read_frame(tables)) is not None:
        responder.table = table
        reporter.send()
    reporting.cancel()
    # The provider closed our input: it is closing, or gone. Leave at once; the kernel closes every socket,
    # and so every open TCP connection, without a traceback per cancelled connection task.
    os._exit(0)


def main() -> None:
    # Interrupts go to the whole process group (a terminal's ^C): the provider ends its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the plane in the scheduler's eyes: on a machine with fewer cores than busy processes, a flood
    # of queries must not take CPU time from the probes and decisions.
    os.nice(NICENESS)
    logging.basicConfig(level=logging.WARNING, format=f"localdns worker {os.getpid()}: %(message)s")
    udp_fd, tcp_fd, settings = sys.argv[1:4]
    asyncio.run(serve(int(udp_fd), int(tcp_fd), json.loads(settings)))


if __name__ == "__main__":
    main()
