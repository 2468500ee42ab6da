"""A real HAProxy for the demo and the tests: its config rendered from a policy, its process run and stopped."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from controlplane.errors import Unavailable
from controlplane.policy import Policy
from controlplane.providers.base import ProviderError
from controlplane.providers.haproxy import RuntimeApi, check_name, parse_address

_OUTPUT_TAIL = 4000  # characters of HAProxy's output quoted in an error
_STATS_SOCKET = re.compile(r"^\s*stats\s+socket\s+(\S+)", re.MULTILINE)


class HaproxyProcessError(Unavailable):
    """HAProxy is missing, refused its config, or did not come up in time (message carries its output)."""


def haproxy_available(binary: str = "haproxy") -> bool:
    return shutil.which(binary) is not None


def _bind_address(kind: str, value: str) -> str:
    # A space or newline would end the config keyword's argument and let the rest be read as config.
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{kind} address {value!r} must be one word, e.g. 127.0.0.1:9000")
    return value


def _server_line(server: str, endpoint: str, tls_verify: bool) -> str:
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    check_name(f"host of endpoint {endpoint!r}", host)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # No `check`: the control plane probes the regions and owns every server's weight and drain state.
    # `disabled` (maintenance) until the first plan: nothing routes traffic to a region on a guess.
    line = f"    server {server} {address} weight 1 disabled"
    if https:
        line += (
            f" ssl verify required ca-file @system-ca sni str({host})" if tls_verify else " ssl verify none"
        )
    return line


def render_config(policy: Policy, frontend: str = "127.0.0.1:9000", stats: str = "127.0.0.1:9999") -> str:
    """An HAProxy config with one frontend and the policy's backend, whose servers are its named regions."""
    settings = policy.providers.haproxy
    if settings is None:
        raise ValueError("policy has no providers.haproxy section to render")
    stats_socket = _bind_address("stats", stats)
    if isinstance(parse_address(stats), str):
        stats_socket += " mode 600"  # a unix socket: only this user may drive the admin-level API
    backend = check_name("providers.haproxy.backend", settings.backend)
    servers = [
        _server_line(
            check_name(f"providers.haproxy.servers.{region}", server),
            policy.region(region).endpoint,
            policy.probes.tls_verify,
        )
        for region, server in sorted(settings.servers.items())
    ]
    return "\n".join(
        [
            "# Rendered by controlplane from the routing policy; edit the policy, not this file.",
            "global",
            # Without it HAProxy binds with SO_REUSEPORT, and a second HAProxy on the same addresses starts
            # fine while the kernel splits connections, runtime API commands included, between the two.
            "    noreuseport",
            f"    stats socket {stats_socket} level admin",
            "    stats timeout 30s",
            "",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 60s",
            # Long: a reasoning model may stay silent for minutes before its first streamed token.
            "    timeout server 300s",
            "",
            "frontend llm",
            f"    bind {_bind_address('frontend', frontend)}",
            f"    default_backend {backend}",
            "",
            f"backend {backend}",
            "    balance roundrobin",
            # A connection refused by a dying region is retried on another server instead of failing.
            "    option redispatch",
            "    retries 2",
            *servers,
            "",
        ]
    )


class HaproxyProcess:
    """`haproxy -f cfg -db` as a child process; ready once its runtime API answers `show info`."""

    def __init__(
        self,
        config: str,
        *,
        binary: str = "haproxy",
        start_timeout: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        # Readiness is asked of the runtime API the config itself declares, so the two cannot disagree.
        stats = _STATS_SOCKET.search(config)
        if stats is None:
            raise ValueError("HAProxy config has no `stats socket` line; readiness is checked through it")
        self._config = config
        # Short per-command bound: readiness is polled, and the start timeout bounds the whole wait.
        self._api = RuntimeApi.at(stats.group(1), timeout=0.5)
        self._binary = binary
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._workdir: Path | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("HAProxy process already started")
        path = shutil.which(self._binary)
        if path is None:
            raise HaproxyProcessError(f"{self._binary!r} is not installed (Debian package: haproxy)")
        self._workdir = Path(tempfile.mkdtemp(prefix="controlplane-haproxy-"))
        config = self._workdir / "haproxy.cfg"
        config.write_text(self._config, encoding="utf-8")
        # Output goes to a file, not a pipe: HAProxy logs every drain, and an unread pipe would fill and
        # block it. The file is quoted when start-up fails.
        try:
            with (self._workdir / "haproxy.log").open("wb") as output:
                self._process = await asyncio.create_subprocess_exec(
                    path,
                    "-f",
                    str(config),
                    "-db",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            async with asyncio.timeout(self._start_timeout):
                await self._until_ready(self._process)
        except (TimeoutError, HaproxyProcessError) as exc:
            reason = str(exc) or f"its runtime API did not answer within {self._start_timeout}s"
            output_text = self._output()
            await self.stop()
            raise HaproxyProcessError(f"haproxy did not start: {reason}\n{output_text}") from None
        except BaseException:  # cancelled, or the binary could not be executed: leave nothing behind
            await self.stop()
            raise

    async def _until_ready(self, process: asyncio.subprocess.Process) -> None:
        while process.returncode is None:
            with contextlib.suppress(ProviderError):
                info = await self._api.send("show info")
                # The pid check makes sure it is this HAProxy answering, not one already on the same address.
                if f"\nPid: {process.pid}\n" in f"\n{info}":
                    return
            await asyncio.sleep(0.02)
        raise HaproxyProcessError(f"it exited with status {process.returncode}")

    def _output(self) -> str:
        if self._workdir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._workdir / "haproxy.log").read_text("utf-8", "replace")[-_OUTPUT_TAIL:]
        return ""

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if HAProxy has not exited within stop_timeout; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                async with asyncio.timeout(self._stop_timeout):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    async def __aenter__(self) -> HaproxyProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the plane dies, even by SIGKILL, so no HAProxy is left
    holding the demo's ports."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
