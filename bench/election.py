"""Leader election on a real 3-member etcd cluster: leader loss to a new leader, and writes by deposed leaders.

Run from the project root: python -m bench.election [--trials 20] [--ttl 3]

Three candidate processes campaign (controlplane.coord.election); the leader writes a fenced key every 50 ms.
- kill trials: SIGKILL the leader; time until another candidate leads (goal p99 <= ttl + 1 s). The dead
  leader revokes nothing, so its lease runs out first: this is the worst case, not a resignation.
- stop trials: SIGSTOP the leader past its lease, wait for a new leader, SIGCONT the old one; count the
  old leader's fenced writes that etcd accepted after the new leader's epoch (goal 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from controlplane.coord.election import Deposed, campaign, fenced
from controlplane.coord.etcd import EtcdClient, EtcdUnavailable, Put
from controlplane.stats import quantile
from tests.fakes.etcd import etcd_cluster

PREFIX = "/bench/election"
WRITE_EVERY = 0.05


async def candidate(name: str, endpoints: list[str], ttl: int) -> None:
    """Campaign, then write fenced keys until deposed; again, for ever. Says LEADER/DEPOSED on stdout."""
    async with EtcdClient(endpoints, timeout=ttl / 6) as client:
        while True:
            leadership = await campaign(client, PREFIX, name, ttl)
            print(f"LEADER {name} {leadership.epoch}", flush=True)
            seq = 0
            while True:
                seq += 1
                key = f"{PREFIX}/log/{leadership.epoch:012d}/{seq:06d}".encode()
                try:
                    await fenced(leadership, [Put(key, name.encode())])
                except Deposed:
                    print(f"DEPOSED {name} {leadership.epoch}", flush=True)
                    break
                except EtcdUnavailable:
                    pass  # outcome unknown: the epoch compare decides whether it landed
                await asyncio.sleep(WRITE_EVERY)


@dataclass
class Event:
    kind: str  # LEADER or DEPOSED
    name: str
    epoch: int
    at: float


class Candidates:
    def __init__(self, endpoints: list[str], ttl: int) -> None:
        self.endpoints, self.ttl = endpoints, ttl
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.readers: list[asyncio.Task[None]] = []

    async def start(self, name: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.election", "--candidate", name, "--ttl", str(self.ttl),
            "--endpoints", ",".join(self.endpoints),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        self.procs[name] = proc
        self.readers.append(asyncio.create_task(self._read(name, proc)))

    async def _read(self, name: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            kind, who, epoch = line.decode().split()
            await self.events.put(Event(kind, who, int(epoch), time.monotonic()))

    async def next(self, kind: str, within: float, not_name: str | None = None) -> Event:
        async with asyncio.timeout(within):
            while True:
                event = await self.events.get()
                if event.kind == kind and event.name != not_name:
                    return event

    async def close(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            await proc.wait()
        for task in self.readers:
            task.cancel()


async def trials(endpoints: list[str], ttl: int, count: int) -> None:
    group = Candidates(endpoints, ttl)
    try:
        for name in ("a", "b", "c"):
            await group.start(name)
        leader = await group.next("LEADER", within=30)
        takeovers: list[float] = []
        for i in range(count):
            killed_at = time.monotonic()
            group.procs[leader.name].kill()
            await group.procs[leader.name].wait()
            successor = await group.next("LEADER", within=ttl + 30, not_name=leader.name)
            takeovers.append(successor.at - killed_at)
            print(
                f"  kill {i + 1:3d}: {leader.name} killed, {successor.name} leads after {takeovers[-1]:.2f} s"
            )
            await group.start(leader.name)
            leader = successor
        print(
            f"leader killed -> new leader, {count} trials, ttl {ttl} s: p50 {statistics.median(takeovers):.2f} s"
            f"  p99 {quantile(takeovers, 0.99) or 0.0:.2f} s  max {max(takeovers):.2f} s  (goal p99 <= {ttl + 1} s)"
        )
        deposed_writes = 0
        async with EtcdClient(endpoints) as client:
            for i in range(count):
                old = group.procs[leader.name]
                old.send_signal(signal.SIGSTOP)
                successor = await group.next("LEADER", within=ttl + 30, not_name=leader.name)
                old.send_signal(signal.SIGCONT)
                # The woken leader either finds its deadline passed or has its next write refused.
                await group.next("DEPOSED", within=ttl + 30)
                _, kvs = await client.range(f"{PREFIX}/log/{leader.epoch:012d}/".encode())
                late = [kv for kv in kvs if kv.mod_revision > successor.epoch]
                deposed_writes += len(late)
                print(
                    f"  stop {i + 1:3d}: {leader.name} (epoch {leader.epoch}) paused, {successor.name} leads "
                    f"(epoch {successor.epoch}); writes by the old leader after it: {len(late)}"
                )
                leader = successor
        print(f"leader SIGSTOPped past its lease, {count} trials: writes accepted from a deposed leader: "
              f"{deposed_writes} (goal 0)")  # fmt: skip
    finally:
        await group.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--candidate", help=argparse.SUPPRESS)
    parser.add_argument("--endpoints", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.candidate:
        asyncio.run(candidate(args.candidate, args.endpoints.split(","), args.ttl))
        return
    binary = shutil.which("etcd")
    if binary is None:
        raise SystemExit("bench.election needs etcd (apt-get install etcd-server)")
    with tempfile.TemporaryDirectory() as tmp, etcd_cluster(binary, Path(tmp), 3) as cluster:
        asyncio.run(trials(cluster.endpoints, args.ttl, args.trials))


if __name__ == "__main__":
    main()
