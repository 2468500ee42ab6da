"""The demo stack on loopback as a drill target: simulated regions in this process, each behind a TCP fault
proxy that only the plane's probes go through, the daemon as a child process it can SIGKILL and start again,
file:// weight buckets it can take away, and (when a drill needs it) Route 53 on moto behind a fault proxy.

What the plane probes (a region's `endpoint`) is the proxy; what DNS answers (its `address`) and what
clients reach is the region itself. So a network fault cuts the plane off from a region that still serves
its clients, which is what makes a partition hard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import boto3
import yaml

from chaos.drill import (
    BucketFault,
    DaemonFault,
    Fault,
    NetworkFault,
    NetworkMode,
    OverrideStep,
    ProviderFault,
    ProviderMode,
    RegionFault,
)
from chaos.emulators import EmulatorDidNotStart, moto_on_path
from chaos.faultproxy import Fault as ApiFault
from chaos.faultproxy import FaultProxy
from chaos.loadgen import Target
from chaos.loopback import DEMO_POLICY, free_port
from chaos.remotetarget import DNS_QUERIES, MEND, PlaneView, clients_of, refuse_unsupported, region_spec
from chaos.simregion import SimFleet, SimRegion
from chaos.target import Clients, Look, TargetError
from chaos.tcpproxy import MAX_LATENCY, TcpFaultProxy
from controlplane.demo import with_weights
from controlplane.policy import Policy, load_policy

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# A cold daemon imports its providers, probes every region until rise, then syncs the weights of all four:
# seconds on an idle machine, many more on a loaded two-core CI runner.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0  # SIGTERM to exit: the daemon saves its state and closes its providers
ZONE = "llm.internal"  # the demo service's chat.llm.internal lies in it
OWNER = "drill"
ASIDE = ".drill-aside"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# The daemon is killed when this process dies, even by SIGKILL (PR_SET_PDEATHSIG, Linux): a drill runner
# killed mid-drill must not leave a plane running. Set in the child itself (preexec_fn is unsafe with threads);
# the parent check closes the race with a parent that died before the prctl.
LAUNCH_AS_CHILD = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
if os.getppid() != int(sys.argv[1]):
    sys.exit("the drill runner that started this daemon is gone")
from controlplane.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _write_policy(
    source: Path,
    state_dir: Path,
    endpoints: Mapping[str, tuple[str, str]],
    dns_port: int,
    slow_start: float,
    route53: str | None,
) -> Path:
    """The demo policy with each region probed at `endpoints[name][0]` and answered as `[1]`, the DNS on
    `dns_port`, no HAProxy, and Route 53 at `route53` when given; weights added by demo.with_weights."""
    data: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    for region in data["regions"]:
        region["endpoint"], region["address"] = endpoints[region["name"]]
    providers: dict[str, Any] = data["providers"]
    providers.pop("haproxy", None)
    providers["localdns"]["port"] = dns_port
    for service in data["services"]:
        service["slow_start"] = slow_start
    if route53 is not None:
        # Route 53 places resolvers by geography, not by source address: the EU-only group needs a place.
        for group in data["client_groups"]:
            if group.get("allowed_jurisdictions") == ["EU"]:
                group.setdefault("geo", {"continents": ["EU"]})
        providers["route53"] = {"zone": ZONE, "endpoint_url": route53, "owner": OWNER}
    state_dir.mkdir(parents=True, exist_ok=True)
    base = state_dir / "drill-policy.yaml"
    base.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return with_weights(base, state_dir)


def _break_bucket(folder: Path) -> None:
    """Put a plain file where the bucket's folder was: every read and write under it fails."""
    aside = folder.with_name(folder.name + ASIDE)
    if folder.is_dir() and not aside.exists():
        folder.rename(aside)
    if not folder.exists():
        folder.write_text("unavailable: a drill took this bucket away\n", encoding="utf-8")


def _mend_bucket(folder: Path) -> None:
    aside = folder.with_name(folder.name + ASIDE)
    if folder.is_file():
        folder.unlink()
    if aside.is_dir() and not folder.exists():
        aside.rename(folder)


def _tail(path: Path, size: int = 3000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"


def _create_zone(url: str) -> None:
    session = boto3.session.Session(
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"]
    )
    client = session.client("route53", endpoint_url=url, region_name="us-east-1")
    client.create_hosted_zone(Name=ZONE, CallerReference=f"drill-{secrets.token_hex(4)}")


class DemoTarget:
    """The demo stack on free loopback ports, started by `start` and taken down by `stop`.

    `state_dir`: where the daemon keeps its state, its log (daemon.log) and the buckets; a scratch folder,
    removed at stop, when not given. `with_route53`: also run moto_server behind a fault proxy and let the
    daemon write Route 53 there (a drill with a provider fault needs it; it costs seconds to start).
    """

    def __init__(
        self,
        *,
        with_route53: bool = False,
        state_dir: Path | None = None,
        policy_path: Path = DEMO_POLICY,
        slow_start: float = 1.0,
        start_timeout: float = START_TIMEOUT,
        dns_queries: int = DNS_QUERIES,
    ) -> None:
        self.with_route53 = with_route53
        self.policy_path = policy_path
        self.slow_start = slow_start
        self.start_timeout = start_timeout
        self.dns_queries = dns_queries
        # The shipped policy's names, for checking a drill before anything starts; start() replaces it with
        # the one the daemon runs (same names, the ports and buckets of this run).
        self.policy: Policy = load_policy(policy_path)
        self._given_dir = state_dir
        self._dir: Path | None = None
        self._token = secrets.token_urlsafe(16)
        self._api = ""
        self._dns_port = 0
        self._fleet: SimFleet | None = None
        self._proxies: dict[str, TcpFaultProxy] = {}
        self._api_proxy: FaultProxy | None = None
        self._moto = contextlib.ExitStack()
        self._view: PlaneView | None = None
        self._daemon: asyncio.subprocess.Process | None = None
        self._restart: asyncio.Task[None] | None = None
        self._broken: list[Fault] = []

    # ------------------------------------------------------------------ paths

    @property
    def state_dir(self) -> Path:
        if self._dir is None:
            raise TargetError("the demo target is not started")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.state_dir / "daemon.log"

    @property
    def api(self) -> str:
        """The daemon's admin API, http://127.0.0.1:PORT."""
        return self._api

    @property
    def token(self) -> str:
        return self._token

    @property
    def daemon_pid(self) -> int | None:
        return self._daemon.pid if self._daemon is not None and self._daemon.returncode is None else None

    def region(self, name: str) -> SimRegion:
        if self._fleet is None:
            raise TargetError("the demo target is not started")
        return self._fleet[name]

    def proxy(self, name: str) -> TcpFaultProxy:
        return self._proxies[name]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self) -> None:
        if self._given_dir is not None:
            self._dir = self._given_dir.resolve()
        else:
            self._dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="drill-"))
        model = self.policy.probes.inference.model or "demo-llm"
        self._fleet = SimFleet(
            [
                SimRegion(r.name, urlsplit(r.endpoint).hostname or "127.0.0.1", 0, 0, model=r.model or model)
                for r in self.policy.regions
            ]
        )
        await self._fleet.start()
        for name, sim in self._fleet.regions.items():
            proxy = TcpFaultProxy(sim.host, sim.port, host=sim.host)
            await proxy.start()
            self._proxies[name] = proxy
        route53 = await self._start_route53() if self.with_route53 else None
        endpoints = {
            n: (f"http://{p.upstream_host}:{p.port}", p.upstream_host) for n, p in self._proxies.items()
        }
        self._dns_port = free_port()
        api_port = free_port()
        self._api = f"http://127.0.0.1:{api_port}"
        path = await asyncio.to_thread(
            _write_policy,
            self.policy_path,
            self.state_dir,
            endpoints,
            self._dns_port,
            self.slow_start,
            route53,
        )
        self.policy = await asyncio.to_thread(load_policy, path)
        self._view = PlaneView(
            self.policy, self._api, ("127.0.0.1", self._dns_port), self._token, dns_queries=self.dns_queries
        )
        await self._spawn()
        await self._until("the daemon to be ready", self._ready)
        await self._until("every region's weights to be verified", self._verified)

    async def _start_route53(self) -> str:
        try:
            url = await asyncio.to_thread(self._moto.enter_context, moto_on_path())
        except EmulatorDidNotStart as exc:
            raise TargetError(f"Route 53 for the drill: {exc}") from None
        await asyncio.to_thread(_create_zone, url)
        self._api_proxy = FaultProxy(url)
        await self._api_proxy.start()
        return self._api_proxy.url

    async def stop(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            await asyncio.gather(self._restart, return_exceptions=True)
            self._restart = None
        for fault in list(self._broken):
            try:
                await self._mend(fault)
            except (TargetError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                # Stopping must go on: the regions and proxies it could not mend are stopped next anyway.
                log.warning("could not mend %s while stopping: %s", fault.kind, exc)
        self._broken.clear()
        await self._stop_daemon()
        for proxy in self._proxies.values():
            await proxy.stop()
        self._proxies.clear()
        if self._fleet is not None:
            await self._fleet.stop()
            self._fleet = None
        if self._api_proxy is not None:
            await self._api_proxy.stop()
            self._api_proxy = None
        await asyncio.to_thread(self._moto.close)
        if self._view is not None:
            await self._view.close()
            self._view = None
        if self._dir is not None and self._given_dir is None:
            await asyncio.to_thread(shutil.rmtree, self._dir, True)
        self._dir = None

    # ------------------------------------------------------------------ the daemon

    async def _spawn(self) -> None:
        env = {**os.environ, "CONTROLPLANE_TOKEN": self._token, **(AWS_ENV if self.with_route53 else {})}
        port = str(urlsplit(self._api).port)
        fd = await asyncio.to_thread(os.open, self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._daemon = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                LAUNCH_AS_CHILD,
                str(os.getpid()),
                "run",
                "--policy",
                str(self.state_dir / "policy.yaml"),
                "--state-dir",
                str(self.state_dir),
                "--api-port",
                port,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            os.close(fd)

    async def _stop_daemon(self) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is None or daemon.returncode is not None:
            if daemon is not None:
                await daemon.wait()
            return
        daemon.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await daemon.wait()
        except TimeoutError:
            log.warning("the daemon did not stop within %gs of SIGTERM: killed", STOP_TIMEOUT)
            daemon.kill()
            await daemon.wait()

    async def _kill_daemon(self) -> None:
        daemon = self._daemon
        if daemon is not None and daemon.returncode is None:
            daemon.kill()
            await daemon.wait()

    async def _restart_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._kill_daemon()  # a second daemon fault while the first waits: still one daemon
        await self._spawn()
        await self._until("the restarted daemon to be ready", self._ready)

    async def _until(self, what: str, ready: Callable[[], Awaitable[bool]]) -> None:
        """Poll `ready` until true; TargetError with the daemon log's tail when it exits or time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while True:
            daemon = self._daemon
            if daemon is None or daemon.returncode is not None:
                code = None if daemon is None else daemon.returncode
                tail = await asyncio.to_thread(_tail, self.log_path)
                raise TargetError(f"the daemon exited (code {code}) before {what}; its log ends:\n{tail}")
            try:
                if await ready():
                    return
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass  # not listening yet, or mid-restart
            if loop.time() > deadline:
                tail = await asyncio.to_thread(_tail, self.log_path)
                raise TargetError(f"timed out after {self.start_timeout:g}s waiting for {what}; log:\n{tail}")
            await asyncio.sleep(0.1)

    def _plane(self) -> PlaneView:
        if self._view is None:
            raise TargetError("the demo target is not started")
        return self._view

    async def _request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        return await self._plane().request(method, path, body)

    async def _ready(self) -> bool:
        status, _ = await self._request("GET", "/readyz")
        return status == 200

    async def _verified(self) -> bool:
        _, body = await self._request("GET", "/status")
        return all(m["verified"] for r in body["regions"].values() for m in r["models"].values())

    # ------------------------------------------------------------------ clients

    def clients(self) -> Clients:
        if self._fleet is None:
            raise TargetError("the demo target is not started")
        targets = {sim.host: Target(name, sim.endpoint) for name, sim in self._fleet.regions.items()}
        return clients_of(self.policy, ("127.0.0.1", self._dns_port), targets)

    # ------------------------------------------------------------------ faults

    def supports(self, fault: Fault) -> str | None:
        names = {r.name for r in self.policy.regions}
        region = getattr(fault, "region", None)
        if region is not None and region not in names:
            return f"the demo stack has no region {region!r} ({', '.join(sorted(names))})"
        if isinstance(fault, NetworkFault) and fault.latency > MAX_LATENCY:
            return f"the TCP fault proxy adds at most {MAX_LATENCY:g} s of latency, not {fault.latency:g} s"
        if isinstance(fault, ProviderFault):
            if not self.with_route53:
                return "a provider fault needs Route 53 on moto: start the demo target with with_route53=True"
            if shutil.which("moto_server") is None:
                return "a provider fault needs moto_server (pip install 'moto[server]')"
        if isinstance(fault, BucketFault) and self.policy.models:
            bucket = next(r for r in self.policy.regions if r.name == fault.region).bucket_url
            if bucket is None or bucket.scheme != "file":
                return f"the demo takes only file:// buckets away; {fault.region}'s is {bucket}"
        return None

    async def inject(self, fault: Fault, ttl: float) -> None:
        refuse_unsupported(self, fault)
        self._broken.append(fault)
        match fault:
            case RegionFault():
                await self._region_fault(fault.region, region_spec(fault, ttl))
            case NetworkFault():
                proxy = self._proxies[fault.region]
                if fault.mode is NetworkMode.LATENCY:
                    proxy.set_fault("latency", latency=fault.latency, ttl=ttl)
                else:
                    proxy.set_fault("partition", mode=fault.partition.value, ttl=ttl)
            case ProviderFault():
                assert self._api_proxy is not None  # supports() saw with_route53
                kind = (
                    ApiFault.THROTTLING
                    if fault.mode is ProviderMode.THROTTLED
                    else ApiFault.SERVICE_UNAVAILABLE
                )
                self._api_proxy.fail(kind, seconds=ttl)
            case BucketFault():
                # A folder has no time-to-live: what mends it is clear(), or stop(), which always runs.
                await asyncio.to_thread(_break_bucket, self._bucket_folder(fault.region))
                status, body = await self._request("POST", "/sync")
                if status != 202:
                    raise TargetError(f"POST /sync answered {status}: {body}")
            case DaemonFault():
                await self._kill_daemon()
                if self._restart is None or self._restart.done():
                    self._restart = asyncio.create_task(self._restart_after(fault.restart_after))

    async def clear(self, fault: Fault) -> None:
        await self._mend(fault)
        with contextlib.suppress(ValueError):
            self._broken.remove(fault)

    async def _mend(self, fault: Fault) -> None:
        match fault:
            case RegionFault():
                await self._region_fault(fault.region, MEND)
            case NetworkFault():
                self._proxies[fault.region].clear()
            case ProviderFault():
                if self._api_proxy is not None:
                    self._api_proxy.clear()
            case BucketFault():
                await asyncio.to_thread(_mend_bucket, self._bucket_folder(fault.region))
            case DaemonFault():
                restart, self._restart = self._restart, None
                if restart is not None:
                    await restart

    async def _region_fault(self, region: str, spec: Mapping[str, object]) -> None:
        await self._plane().region_fault(region, self.region(region).control_url, spec)

    def _bucket_folder(self, region: str) -> Path:
        bucket = next(r for r in self.policy.regions if r.name == region).bucket_url
        if bucket is None or bucket.scheme != "file":
            raise TargetError(f"{region} has no file:// bucket to take away")
        return Path(bucket.prefix)

    async def override(self, step: OverrideStep) -> None:
        await self._plane().override(step)

    # ------------------------------------------------------------------ looking

    async def look(self, at: float) -> Look:
        if self._daemon is None or self._daemon.returncode is not None:
            return Look(at, errors=("the daemon is not running",))
        return await self._plane().look(at)
