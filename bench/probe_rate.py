"""Benchmark: liveness probes per second on one core for 10,000 targets, and the scheduler's lag.

The targets are served by a child process pinned to another core: a minimal HTTP/1.1 responder on
`--ports` loopback ports, the regions spread over them. Prints figures; asserts nothing. Loopback only,
bounded in time: it stops by itself.

    python -m bench.probe_rate [--targets 10000] [--rate 5000 8000] [--seconds 10] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import multiprocessing
import os
import pstats
import resource
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection

from controlplane.policy import Policy
from probes.observation import Observation
from probes.scheduler import ProbeScheduler

HOST = "127.0.0.1"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class _Responder(asyncio.Protocol):
    """Answers every request head with an empty 200; requests carry no body, so heads are the requests."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        *heads, self._tail = (self._tail + data).split(b"\r\n\r\n")
        if heads:
            self._transport.write(RESPONSE * len(heads))


def _serve(ports: int, cpu: int, pipe: Connection) -> None:
    """Child process: listen on `ports` ports, send them back, serve until the parent says stop."""
    os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(_Responder, HOST, 0, backlog=1024) for _ in range(ports)]
        pipe.send([s.sockets[0].getsockname()[1] for s in servers])
        await loop.run_in_executor(None, pipe.recv)
        for server in servers:
            server.close()

    asyncio.run(main())


def _policy(targets: int, ports: Sequence[int], rate: float) -> Policy:
    names = [f"r{i:05d}" for i in range(targets)]
    return Policy.model_validate(
        {
            "regions": [
                {"name": name, "endpoint": f"http://{HOST}:{ports[i % len(ports)]}", "jurisdiction": "US"}
                for i, name in enumerate(names)
            ],
            "client_groups": [{"name": "all", "allowed_jurisdictions": ["US"]}],
            "default_client_group": "all",
            "services": [{"name": "chat", "dns_name": "chat.llm.internal", "regions": names}],
            "probes": {
                "interval": targets / rate,
                "timeout": 2.0,
                "jitter": 0.1,
                "inference": {"enabled": False},
                "metrics": {"enabled": False},
            },
        }
    )


async def _measure(policy: Policy, seconds: float, warmup: float) -> None:
    results = {True: 0, False: 0}
    errors: dict[str, int] = {}

    def sink(obs: Observation) -> None:
        results[obs.ok] += 1
        if obs.error:
            errors[obs.error] = errors.get(obs.error, 0) + 1

    scheduler = ProbeScheduler(policy, sink)
    task = asyncio.create_task(scheduler.run())
    started = time.perf_counter()
    try:
        # Targets start spread over one interval: the first round takes about that long.
        limit = 3 * policy.probes.interval + warmup
        try:
            async with asyncio.timeout(limit):
                await scheduler.first_round.wait()
            first_round = f"{time.perf_counter() - started:.1f} s"
        except TimeoutError:
            first_round = f"not done in {limit:.1f} s"
        await asyncio.sleep(warmup)
        scheduler.stats.reset()
        results.update({True: 0, False: 0})
        cpu0, wall0 = _cpu(), time.perf_counter()
        await asyncio.sleep(seconds)
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        stats = scheduler.stats
        target = len(policy.regions) / policy.probes.interval
        print(
            f"  offered {target:7.0f}/s  done {stats.completed / wall:7.0f}/s  "
            f"ok {results[True]:6d}  failed {results[False]:5d}  shed {stats.shed:5d}  "
            f"lag p50 {stats.p50 * 1e3:6.1f} ms  p99 {stats.p99 * 1e3:6.1f} ms  "
            f"prober CPU {cpu / wall:4.0%}  first round {first_round}",
            flush=True,
        )
        for error, count in sorted(errors.items(), key=lambda e: -e[1])[:3]:
            print(f"    {count:6d} x {error}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scheduler.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--ports", type=int, default=100, help="server ports the targets are spread over")
    parser.add_argument("--rate", type=float, nargs="+", default=[5_000, 8_000], help="offered probes/s")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per rate")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds after the first round")
    parser.add_argument("--profile", action="store_true", help="cProfile the prober; print the top functions")
    parser.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="leave the policy's objects to the cyclic garbage collector (its full passes then lag probes)",
    )
    args = parser.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0))
    prober_cpu, server_cpu = cpus[0], cpus[-1]
    os.sched_setaffinity(0, {prober_cpu})
    parent, child = multiprocessing.get_context("spawn").Pipe()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(args.ports, server_cpu, child))
    server.start()
    try:
        ports = parent.recv()
        print(
            f"{args.targets} liveness targets over {len(ports)} loopback ports; prober on CPU {prober_cpu}, "
            f"server on CPU {server_cpu}; {args.seconds:g} s per rate; gc.freeze() {'on' if args.gc_freeze else 'off'}",
            flush=True,
        )
        profiler = cProfile.Profile() if args.profile else None
        for rate in args.rate:
            policy = _policy(args.targets, ports, rate)
            if args.gc_freeze:
                # What a daemon should do after loading a policy: its long-lived objects leave the
                # collector's generations, so full passes stop walking 10,000 regions (~60 ms pauses).
                gc.collect()
                gc.freeze()
            if profiler is not None:
                profiler.enable()
            asyncio.run(_measure(policy, args.seconds, args.warmup))
            if profiler is not None:
                profiler.disable()
            gc.unfreeze()
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        parent.send("stop")
        server.join(timeout=5)
        if server.is_alive():
            server.kill()
            server.join()


if __name__ == "__main__":
    main()
