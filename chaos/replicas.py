"""A plane run as N replica processes on loopback, each behind userspace TCP proxies of its own, so that one
replica alone can be cut off from the regions or from etcd while its peers keep their paths.

Each replica `rN` gets its own policy file (the caller's policy with every region endpoint and every etcd
endpoint moved to that replica's proxies, its own embedded DNS port and the `coordination` section), its
own state dir and admin API port, and runs as `controlplane run --replica rN`. The tests, the benches, the
drills and `controlplane demo --replicas N` drive the same stack:

    async with ReplicaStack(policy_data, etcd_endpoints, root, replicas=3, prefix="/test/x") as stack:
        leader = await stack.wait_leader(within=15)
        stack.cut(leader, Link.REGIONS)
        await stack.coordination("r2")   # /status's coordination block, or None when it does not answer
        stack.kill(leader)

The regions, etcd and any external provider (moto) are the caller's: the stack only puts itself between them
and the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import boto3
import yaml

from chaos.demotarget import AWS_ENV, LAUNCH_AS_CHILD, ROOT
from chaos.loopback import free_port
from chaos.tcpproxy import FaultKind, PartitionMode, TcpFaultProxy
from controlplane.coord.etcd import EtcdClient, KeyValue
from controlplane.providers.route53 import Layout

log = logging.getLogger(__name__)

# Three cold daemons importing their providers at once on a two-core runner: seconds each, so be generous.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0  # SIGTERM to exit: the daemon saves its state, resigns and closes its providers
STATUS_TIMEOUT = 2.0


class Link(StrEnum):
    """What a replica can be cut off from: every region, or every etcd member."""

    REGIONS = "regions"
    ETCD = "etcd"


class ReplicaDidNotStart(RuntimeError):
    """A replica exited or its admin API did not answer in time; the message ends with its log."""


def _through(url: str, port: int) -> str:
    """`url` with its host:port replaced by the loopback proxy's."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, parts.query, parts.fragment))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "127.0.0.1", parts.port or default


@dataclass(eq=False)
class Replica:
    name: str
    root: Path
    api_port: int
    dns_port: int
    regions: dict[str, TcpFaultProxy]  # region -> the proxy this replica probes it through
    etcd: list[TcpFaultProxy]  # one per etcd endpoint, in the policy's order
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def policy_path(self) -> Path:
        return self.root / "policy.yaml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    def proxies(self, path: Link) -> list[TcpFaultProxy]:
        return list(self.regions.values()) if path is Link.REGIONS else self.etcd

    def audit(self) -> list[dict[str, Any]]:
        """Every entry of its audit log (blocking: small files, read by tests and benches between steps)."""
        path = self.state_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-size:] if self.log_path.exists() else ""


class ReplicaStack:
    """`replicas` replica processes over `policy` (policy data as YAML would load it; it must have
    providers.localdns, whose port each replica replaces with its own), coordinated through the etcd
    cluster at `etcd`. `env` is added to each replica's environment (cloud credentials for an emulator)."""

    def __init__(
        self,
        policy: Mapping[str, Any],
        etcd: Sequence[str],
        root: Path,
        *,
        replicas: int = 3,
        prefix: str,
        lease_ttl: int = 3,
        token: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if "localdns" not in policy.get("providers", {}):
            raise ValueError("the replicas' policy needs providers.localdns: every replica serves DNS")
        self.policy = copy.deepcopy(dict(policy))
        self.etcd_endpoints = list(etcd)
        self.root = root
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.token = token
        self.env = dict(env or {})
        self.replicas = {
            name: Replica(name, root / name, free_port(), free_port(), {}, [])
            for name in (f"r{index}" for index in range(1, replicas + 1))
        }
        self._session: aiohttp.ClientSession | None = None
        self._etcd_client: EtcdClient | None = None

    @property
    def names(self) -> list[str]:
        return list(self.replicas)

    def __getitem__(self, name: str) -> Replica:
        return self.replicas[name]

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Proxies, policy files and processes; returns once every replica's admin API answers."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STATUS_TIMEOUT))
        self._etcd_client = EtcdClient(self.etcd_endpoints, timeout=STATUS_TIMEOUT)
        for replica in self.replicas.values():
            for region in self.policy["regions"]:
                proxy = TcpFaultProxy(*_host_port(region["endpoint"]))
                await proxy.start()
                replica.regions[region["name"]] = proxy
            for endpoint in self.etcd_endpoints:
                proxy = TcpFaultProxy(*_host_port(endpoint))
                await proxy.start()
                replica.etcd.append(proxy)
            await asyncio.to_thread(self._write_policy, replica)
        for name in self.replicas:
            await self.spawn(name)
        for name in self.replicas:
            await self.wait_listening(name)

    async def stop(self) -> None:
        """SIGTERM every replica (SIGKILL after STOP_TIMEOUT), then the proxies. Safe to call twice."""
        await asyncio.gather(*(self._terminate(r) for r in self.replicas.values()))
        for replica in self.replicas.values():
            for proxy in [*replica.regions.values(), *replica.etcd]:
                await proxy.stop()
            replica.regions.clear()
            replica.etcd.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._etcd_client is not None:
            await self._etcd_client.close()
            self._etcd_client = None

    def _write_policy(self, replica: Replica) -> None:
        data = copy.deepcopy(self.policy)
        for region in data["regions"]:
            host, _ = _host_port(region["endpoint"])
            if "address" not in region and _is_ip(host):
                region["address"] = host  # DNS still answers with the region, not with this replica's proxy
            region["endpoint"] = _through(region["endpoint"], replica.regions[region["name"]].port)
        data["providers"]["localdns"] = {
            **data["providers"]["localdns"],
            "listen": "127.0.0.1",
            "port": replica.dns_port,
        }
        data["coordination"] = {
            "etcd": [
                _through(url, proxy.port)
                for url, proxy in zip(self.etcd_endpoints, replica.etcd, strict=True)
            ],
            "lease_ttl": self.lease_ttl,
            "prefix": self.prefix,
        }
        replica.state_dir.mkdir(parents=True, exist_ok=True)
        replica.policy_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    async def spawn(self, name: str) -> None:
        """Start the replica's process (again, after a kill), on the same ports, policy and state dir."""
        replica = self.replicas[name]
        env = {**os.environ, **self.env, "CONTROLPLANE_TOKEN": self.token}
        fd = await asyncio.to_thread(os.open, replica.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # Through demotarget's launcher: a replica dies with the process that started it, even by SIGKILL.
            replica.process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", LAUNCH_AS_CHILD, str(os.getpid()),
                "run", "--policy", str(replica.policy_path), "--replica", name,
                "--state-dir", str(replica.state_dir), "--api-port", str(replica.api_port),
                cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=fd, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        finally:
            os.close(fd)

    async def wait_listening(self, name: str, within: float = START_TIMEOUT) -> None:
        replica = self.replicas[name]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while await self._get(replica, "/healthz") is None:
            if replica.process is None or replica.process.returncode is not None:
                raise ReplicaDidNotStart(f"replica {name} exited:\n{replica.log_tail()}")
            if loop.time() > deadline:
                raise ReplicaDidNotStart(
                    f"replica {name}'s API did not answer in {within:g}s:\n{replica.log_tail()}"
                )
            await asyncio.sleep(0.1)

    async def _terminate(self, replica: Replica) -> None:
        process, replica.process = replica.process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # a paused replica cannot act on SIGTERM
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                log.warning(
                    "replica %s did not stop within %gs of SIGTERM: killed", replica.name, STOP_TIMEOUT
                )
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await process.wait()

    # ------------------------------------------------------------------ faults

    async def kill(self, name: str) -> None:
        """SIGKILL, as a crash: nothing resigns, the lease runs out."""
        replica = self.replicas[name]
        process, replica.process = replica.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        if process is not None:
            await process.wait()

    def pause(self, name: str) -> None:
        """SIGSTOP: the replica holds its sockets and does nothing, as a hung host or a long GC pause."""
        self._signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self._signal(name, signal.SIGCONT)

    def _signal(self, name: str, sig: signal.Signals) -> None:
        process = self.replicas[name].process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    def cut(
        self,
        name: str,
        path: Link | str,
        mode: PartitionMode | str = PartitionMode.BLACKHOLE,
        ttl: float | None = None,
    ) -> None:
        """Partition replica `name` from every region or from every etcd member (its proxies only), until
        healed or for `ttl` seconds."""
        for proxy in self.replicas[name].proxies(Link(path)):
            proxy.set_fault("partition", mode=mode, ttl=ttl)

    def heal(self, name: str, path: Link | str) -> None:
        for proxy in self.replicas[name].proxies(Link(path)):
            proxy.clear()

    def cuts(self, name: str) -> list[Link]:
        """Which paths of the replica are cut now."""
        return [
            p
            for p in Link
            if any(proxy.fault.kind is FaultKind.PARTITION for proxy in self.replicas[name].proxies(p))
        ]

    # ------------------------------------------------------------------ looking

    async def _get(self, replica: Replica, path: str) -> dict[str, Any] | None:
        assert self._session is not None, "start() first"
        try:
            async with asyncio.timeout(STATUS_TIMEOUT), self._session.get(replica.api + path) as response:
                if response.status != 200:
                    return None
                body: dict[str, Any] = await response.json()
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def status(self, name: str) -> dict[str, Any] | None:
        """GET /status of the replica, or None when it does not answer (dead, paused, starting)."""
        return await self._get(self.replicas[name], "/status")

    async def coordination(self, name: str) -> dict[str, Any] | None:
        status = await self.status(name)
        block = status.get("coordination") if status is not None else None
        return block if isinstance(block, dict) else None

    async def coordinations(self) -> dict[str, dict[str, Any] | None]:
        blocks = await asyncio.gather(*(self.coordination(name) for name in self.replicas))
        return dict(zip(self.replicas, blocks, strict=True))

    async def leader(self, among: Sequence[str] | None = None) -> str | None:
        """The one replica (of `among`, default all) whose own /status says it leads; None if none or several."""
        blocks = await self.coordinations()
        leading = [n for n, b in blocks.items() if b is not None and b.get("role") == "leader"]
        leading = [n for n in leading if among is None or n in among]
        return leading[0] if len(leading) == 1 else None

    async def wait_leader(self, within: float, among: Sequence[str] | None = None) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (found := await self.leader(among)) is None:
            if loop.time() > deadline:
                raise TimeoutError(f"no single leader among {among or self.names} within {within:g}s")
            await asyncio.sleep(0.05)
        return found

    async def _etcd_get(self, key: str) -> KeyValue | None:
        assert self._etcd_client is not None, "start() first"
        return await self._etcd_client.get(f"{self.prefix}/{key}".encode())

    async def leader_key(self) -> tuple[str, int] | None:
        """(leader, epoch) as etcd holds `<prefix>/leader`, read directly (no replica in between)."""
        found = await self._etcd_get("leader")
        return None if found is None else (found.value.decode(errors="replace"), found.create_revision)

    async def plan_record(self) -> dict[str, Any] | None:
        """`<prefix>/plan` as etcd holds it: {"epoch", "leader", "plan"}."""
        found = await self._etcd_get("plan")
        if found is None:
            return None
        record: dict[str, Any] = json.loads(found.value)
        return record


@dataclass(frozen=True, slots=True)
class Zone:
    """A Route 53 hosted zone on an emulator at `url`, read directly (no provider or proxy in between)."""

    url: str
    zone_id: str
    owner: str
    # One client for every read: building a boto3 session costs tens of ms of CPU, and the regions the
    # replicas probe often share this process, so a read per poll would slow their answers.
    client: Any = field(repr=False, compare=False)

    @staticmethod
    def _client(url: str) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        return session.client("route53", endpoint_url=url, region_name="us-east-1")

    @classmethod
    async def create(cls, url: str, name: str, owner: str) -> Zone:
        def create() -> Zone:
            client = cls._client(url)
            reply = client.create_hosted_zone(Name=name, CallerReference=f"replicas-{os.urandom(4).hex()}")
            return cls(url, str(reply["HostedZone"]["Id"]), owner, client)

        return await asyncio.to_thread(create)

    def _weights(self) -> dict[str, dict[str, int]]:
        layout = Layout(self.owner, self.zone_id.removeprefix("/hostedzone/"))
        out: dict[str, dict[str, int]] = {}
        pages = self.client.get_paginator("list_resource_record_sets").paginate(HostedZoneId=self.zone_id)
        for page in pages:
            for rrset in page["ResourceRecordSets"]:
                record = layout.parse_member(rrset) if layout.owns(rrset) else None
                if record is not None:
                    out.setdefault(record.group, {})[record.region] = record.weight
        return out

    async def weights(self) -> dict[str, dict[str, int]]:
        """Each client group's weighted set as the zone holds it: group -> region -> Route 53 weight."""
        return await asyncio.to_thread(self._weights)
