"""Benchmark of the embedded DNS server next to BIND 9 and PowerDNS, all asked by dnsperf on loopback; the
probe schedule's lag while a flood of queries hits the embedded server; and what one query costs each path.

Prints figures, asserts nothing. Run from the project root: `python -m bench.dns_server [--seconds 5]`.
Needs Debian's dnsperf; BIND (bind9) and PowerDNS (pdns-server, pdns-backend-sqlite3) are each left out,
and said so, when missing.

The same names and plan everywhere, with one difference: BIND cannot pick among weighted addresses, so its
zone (written here from the plan) gives each served name one A record, the heaviest region of the global
group. The embedded server and PowerDNS (a LUA record per name, from the plane's powerdns provider) pick by
client group and weight on every query.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import timeit
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rcode
import yaml

from bench.probe_rate import _policy as probe_policy
from bench.probe_rate import _serve as serve_probe_targets
from chaos.hostile import heavy_queries
from chaos.loopback import DEMO_POLICY, SERVICE_NAME, free_port
from controlplane.changes import diff
from controlplane.plan import GroupMode, GroupPlan, RouteWeight, RoutingPlan
from controlplane.policy import Policy
from controlplane.providers.base import Provider
from controlplane.providers.localdns import AnswerTable, LocalDnsProvider, answer
from controlplane.providers.localdns_fast import resolve
from controlplane.providers.records import render_records
from controlplane.stats import quantile
from probes.scheduler import ProbeScheduler

HOST = "127.0.0.1"
ZONE = "llm.internal"
CLIENTS = 16  # dnsperf's clients, as in issue 12's measurement
RATE = 10_000  # queries/s offered for the latency percentiles
FLOOD = 50_000  # queries/s offered while the probes run
PROBE_TARGETS = 500
PROBE_RATE = 500.0  # probes/s: each target once a second
HEAVY_RATE = 200.0  # 64 KB packets/s sent beside the legitimate queries
KEY_ENV = "BENCH_DNS_PDNS_API_KEY"
START_TIMEOUT = 15.0
SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"  # servers live there, off a user's PATH
PLAN = RoutingPlan(
    0.0,
    (
        GroupPlan(
            "chat",
            "global",
            GroupMode.NORMAL,
            tuple(
                RouteWeight(r, w, "bench") for r, w in {"us-east": 40, "us-west": 30, "eu-west": 30}.items()
            ),
        ),
        GroupPlan("chat", "eu", GroupMode.NORMAL, (RouteWeight("eu-west", 100, "bench"),)),
    ),
)


@dataclass(frozen=True)
class Run:
    """One dnsperf run: answered queries/s, queries lost, and each query's latency when asked for."""

    qps: float
    lost: int
    codes: str  # dnsperf's count of each response code
    latencies: list[float]  # of NOERROR responses

    def percentile(self, q: float) -> float:
        return quantile(self.latencies, q) or 0.0


class Dnsperf:
    def __init__(self, root: Path) -> None:
        binary = shutil.which("dnsperf")
        if binary is None:
            raise SystemExit("dnsperf is not installed (Debian: apt-get install dnsperf)")
        self._binary = binary
        self._root = root
        self._queries = root / "queries.txt"
        self._queries.write_text(f"{SERVICE_NAME} A\n", encoding="utf-8")

    async def run(
        self,
        port: int,
        seconds: float,
        *,
        rate: float | None = None,
        clients: int = CLIENTS,
        each: bool = False,
    ) -> Run:
        """dnsperf against (HOST, port) for `seconds`, at most `rate` queries/s; `each`: every latency too.

        Its output goes to a file, not through this process's event loop, which may be the one answering.
        """
        command = [self._binary, "-s", HOST, "-p", str(port), "-d", str(self._queries), "-c", str(clients)]
        command += ["-l", f"{seconds:g}", "-t", "1"]
        command += ["-Q", f"{rate:.0f}"] if rate else ["-q", "200"]
        command += ["-v"] if each else []
        out = self._root / "dnsperf.out"
        with out.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(*command, stdout=sink, stderr=subprocess.STDOUT)
            await process.wait()
        text = out.read_text(encoding="utf-8", errors="replace")
        qps = re.search(r"Queries per second:\s+([\d.]+)", text)
        lost = re.search(r"Queries lost:\s+(\d+)", text)
        codes = re.search(r"Response codes:\s+(.*)$", text, re.MULTILINE)
        if qps is None or lost is None or codes is None:
            raise RuntimeError(f"dnsperf said:\n{text[-2000:]}")
        latencies = [float(m) for m in re.findall(r"^> NOERROR \S+ \S+ ([\d.]+)$", text, re.MULTILINE)]
        return Run(float(qps.group(1)), int(lost.group(1)), codes.group(1), latencies)


def policy_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEMO_POLICY.read_text(encoding="utf-8"))
    data["providers"]["localdns"].update(listen=HOST, port=free_port())
    return data


async def converge(provider: Provider) -> None:
    await provider.apply(diff(provider.name, provider.render(PLAN), await provider.current()))


@asynccontextmanager
async def embedded(workers: int) -> AsyncIterator[LocalDnsProvider]:
    provider = LocalDnsProvider(Policy.model_validate(policy_data()), workers=workers)
    async with provider:
        await converge(provider)
        await wait_answering(provider.address[1])
        yield provider


async def wait_answering(port: int) -> None:
    """Until (HOST, port) answers with an address: a server just started, or its workers, may take a moment."""
    query = dns.message.make_query(SERVICE_NAME, "A")
    deadline = time.monotonic() + START_TIMEOUT
    said = "nothing"
    while time.monotonic() < deadline:
        try:
            response = await asyncio.to_thread(dns.query.udp, query, HOST, port=port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            continue
        if response.answer:
            return
        said = dns.rcode.to_text(response.rcode())
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{HOST}:{port} answers {SERVICE_NAME} with {said}")


@asynccontextmanager
async def bind9(root: Path) -> AsyncIterator[int]:
    """named, one thread (-n 1), authoritative for ZONE with one A per served name."""
    named = shutil.which("named", path=SBIN_PATH)
    if named is None:
        raise LookupError("named is not installed (Debian: apt-get install bind9)")
    port = free_port()
    # The heaviest region of the global group per served name (what a weighted pick returns most often).
    rendered = render_records(Policy.model_validate(policy_data()), PLAN)
    by_weight = sorted((r for r in rendered if r.group == "global" and r.weight > 0), key=lambda r: r.weight)
    heaviest = {r.name: r for r in by_weight}  # the heaviest comes last, so it stays
    records = "".join(f"{r.name}. 5 IN A {r.target}\n" for r in heaviest.values())
    (root / "zone").write_text(
        f"$TTL 5\n@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 5\n@ IN NS ns.{ZONE}.\n"
        f"ns IN A {HOST}\n{records}",
        encoding="utf-8",
    )
    (root / "named.conf").write_text(
        f'options {{ directory "{root}"; pid-file "{root}/named.pid"; listen-on port {port} {{ {HOST}; }};\n'
        f"  listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; }};\n"
        f'controls {{ }};\nzone "{ZONE}" {{ type primary; file "{root}/zone"; }};\n',
        encoding="utf-8",
    )
    with (root / "named.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            named, "-g", "-n", "1", "-c", str(root / "named.conf"), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        await wait_answering(port)
        yield port
    finally:
        with suppress(ProcessLookupError):
            process.terminate()
        await process.wait()


@asynccontextmanager
async def powerdns(root: Path) -> AsyncIterator[int]:
    """pdns_server with the plane's powerdns provider having written the plan as LUA records."""
    from chaos.pdnsproc import powerdns as pdns_server  # the other DNS: only when it is benchmarked
    from controlplane.providers.powerdns import PowerDnsProvider

    binary = shutil.which("pdns_server", path=SBIN_PATH)
    if binary is None:
        raise LookupError(
            "pdns_server is not installed (Debian: apt-get install pdns-server pdns-backend-sqlite3)"
        )
    with pdns_server(binary, root / "pdns") as server:
        server.create_zone(ZONE)
        os.environ[KEY_ENV] = server.api_key
        data = policy_data()
        data["providers"]["powerdns"] = {
            "api_url": server.api_url,
            "api_key_env": KEY_ENV,
            "zone": ZONE,
            "owner": "bench",
        }
        policy = Policy.model_validate(data)
        provider = PowerDnsProvider(policy, policy.providers.powerdns_list[0])
        await provider.start()
        try:
            await converge(provider)
            await wait_answering(server.dns_port)
            yield server.dns_port
        finally:
            await provider.close()


async def compare(perf: Dnsperf, root: Path, seconds: float) -> None:
    print(
        f"dnsperf, {CLIENTS} clients, {seconds:g} s a run: most queries/s; then latency at {RATE:,} queries/s"
    )
    servers: list[tuple[str, Callable[[], Any]]] = [
        ("embedded, in process", partial(embedded, 0)),
        ("embedded, 1 worker", partial(embedded, 1)),
        ("embedded, 2 workers", partial(embedded, 2)),
        ("BIND 9 (named -n 1)", partial(bind9, root)),
        ("PowerDNS (LUA records)", partial(powerdns, root)),
    ]
    most: dict[str, float] = {}
    for name, start in servers:
        try:
            async with start() as started:
                port = started if isinstance(started, int) else started.address[1]
                top = await perf.run(port, seconds)
                paced = await perf.run(port, seconds, rate=RATE, each=True)
        except (LookupError, RuntimeError, OSError, ImportError, AttributeError) as exc:
            print(f"  {name:<24} left out: {exc}")
            continue
        most[name] = top.qps
        print(
            f"  {name:<24} {top.qps:9,.0f} queries/s (lost {top.lost});  at {paced.qps:7,.0f}/s: "
            f"p50 {paced.percentile(0.5) * 1e3:5.2f} ms  p99 {paced.percentile(0.99) * 1e3:6.2f} ms  "
            f"max {max(paced.latencies, default=0) * 1e3:6.1f} ms  (lost {paced.lost})"
        )
        if not re.fullmatch(r"NOERROR \d+ \(100\.00%\)", top.codes.strip()):
            print(f"  {'':<24} responses: {top.codes}")
    bind = most.get("BIND 9 (named -n 1)")
    if bind:
        print("  queries/s against BIND's (goal: embedded >= 0.25):")
        for name, qps in most.items():
            print(f"    {name:<24} {qps / bind:5.2f}")


async def probe_lag(perf: Dnsperf, seconds: float) -> None:
    print(
        f"probe schedule lag: {PROBE_TARGETS} liveness targets at {PROBE_RATE:g} probes/s on this loop, "
        f"while dnsperf offers {FLOOD:,} queries/s to the embedded server (goal: p99 < 100 ms)"
    )
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    targets = context.Process(
        target=serve_probe_targets, args=(4, sorted(os.sched_getaffinity(0))[-1], child)
    )
    targets.start()
    try:
        ports = await asyncio.to_thread(parent.recv)
        scheduler = ProbeScheduler(probe_policy(PROBE_TARGETS, ports, PROBE_RATE), lambda _: None)
        probing = asyncio.create_task(scheduler.run())
        try:
            async with asyncio.timeout(3 * PROBE_TARGETS / PROBE_RATE + 5):
                await scheduler.first_round.wait()
            for name, workers in (
                ("no DNS load", None),
                ("in process", 0),
                ("1 worker", 1),
                ("2 workers", 2),
            ):
                if workers is None:
                    scheduler.stats.reset()
                    await asyncio.sleep(seconds)
                    load = ""
                else:
                    async with embedded(workers) as provider:
                        scheduler.stats.reset()
                        run = await perf.run(provider.address[1], seconds, rate=FLOOD, clients=4)
                        load = f"  DNS answered {run.qps:7,.0f} queries/s (lost {run.lost})"
                stats = scheduler.stats
                print(
                    f"  {name:<12} lag p50 {stats.p50 * 1e3:6.1f} ms  p99 {stats.p99 * 1e3:6.1f} ms  "
                    f"probes done {stats.completed / seconds:5.0f}/s{load}"
                )
        finally:
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)
            await scheduler.close()
    finally:
        parent.send("stop")
        await asyncio.to_thread(targets.join, 5)
        if targets.is_alive():
            targets.kill()


def send_heavy(port: int, seconds: float) -> int:
    """heavy_queries() in turn at HEAVY_RATE a second for `seconds`, from a thread; how many were sent."""
    packets = heavy_queries()
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        while (now := time.monotonic()) < start + seconds:
            due = start + sent / HEAVY_RATE
            if now < due:
                time.sleep(due - now)
                continue
            sock.sendto(packets[sent % len(packets)], (HOST, port))
            sent += 1
    return sent


async def under_heavy_packets(perf: Dnsperf, seconds: float) -> None:
    print(f"legitimate queries (dnsperf, 4 clients) beside {HEAVY_RATE:g} packets/s of 64 KB:")
    for name, workers in (("in process", 0), ("1 worker", 1)):
        async with embedded(workers) as provider:
            port = provider.address[1]
            sent, run = await asyncio.gather(
                asyncio.to_thread(send_heavy, port, seconds), perf.run(port, seconds, clients=4)
            )
            await asyncio.sleep(2 * 0.2)  # the workers' last reports
            dropped = provider.dropped["oversize"]
        print(
            f"  {name:<12} {run.qps:9,.0f} queries/s, lost {run.lost};  {dropped} of {sent} heavy packets dropped unparsed"
        )


def full_path(wire: bytes, table: AnswerTable, rng: random.Random) -> bytes:
    return answer(dns.message.from_wire(wire), HOST, table, rng).to_wire()


def microseconds(run: Callable[[], object]) -> float:
    number, seconds = timeit.Timer(run).autorange()
    return seconds / number * 1e6


async def per_query() -> None:
    async with embedded(0) as server:
        for kind, packet in zip(("records", "options"), heavy_queries(), strict=True):
            print(
                f"one 64 KB query of many {kind}: dropped in {microseconds(partial(server._handle, packet, HOST)):6.1f} us"
            )
        fast = server._responder.table
        table, rng = fast.full, random.Random(0)
    plain = dns.message.make_query(SERVICE_NAME, "A")
    subnet = dns.message.make_query(
        SERVICE_NAME, "A", use_edns=0, options=[dns.edns.ECSOption("127.0.1.0", 24)]
    )
    for name, query in (("by source address", plain), ("by client subnet", subnet)):
        wire = query.to_wire()
        fast_us = microseconds(partial(resolve, wire, HOST, fast, rng))
        full_us = microseconds(partial(full_path, wire, table, rng))
        print(
            f"one query {name:<18} fast path {fast_us:5.1f} us;  parse + answer() + encode {full_us:6.1f} us"
        )


async def main(seconds: float) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (figures move with it)")
    with tempfile.TemporaryDirectory() as tmp:
        perf = Dnsperf(Path(tmp))
        await compare(perf, Path(tmp), seconds)
        await probe_lag(perf, seconds)
        await under_heavy_packets(perf, seconds)
    await per_query()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each dnsperf run")
    asyncio.run(main(parser.parse_args().seconds))
