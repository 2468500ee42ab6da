"""The demo stack on loopback: simulated regions, HAProxy, the daemon with DNS and admin API, a live view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from chaos.simregion import SimFleet
from controlplane.api import serve
from controlplane.daemon import Daemon, DaemonConfig
from controlplane.haproxy_process import HaproxyProcess, haproxy_available, render_config
from controlplane.logs import LOG_FORMAT, OneLineFormatter
from controlplane.policy import Policy, load_policy
from controlplane.providers.factory import build_providers
from controlplane.telemetry import setup_tracing
from probes.observation import ProbeKind
from probes.scheduler import DEFAULT_PROBES, ProbeFunction

log = logging.getLogger(__name__)
HAPROXY_FRONTEND = "127.0.0.1:9000"
STATE_STYLE = {"healthy": "green", "unhealthy": "bold red", "unknown": "yellow"}


def guide(policy: Policy, state_dir: Path, token: str, with_haproxy: bool) -> str:
    dns = policy.providers.localdns
    service = policy.services[0]
    at = f"@{dns.listen} -p {dns.port}" if dns else ""
    first = policy.regions[0]
    control = f"{urlsplit(first.endpoint).hostname}:8001"
    lines = [
        "Ask the embedded DNS (global client, then an EU client by source address and by EDNS client subnet):",
        f"  dig {at} {service.dns_name} +short",
        f"  dig {at} -b 127.0.1.5 {service.dns_name} +short",
        f"  dig {at} +subnet=127.0.1.0/24 {service.dns_name} +short",
        f"Break a region (modes: ok down hang slow errors wrong_model), e.g. {first.name}:",
        f'  curl -s -XPOST {control}/fault -d \'{{"mode": "down"}}\'',
        f'  curl -s -XPOST {control}/fault -d \'{{"mode": "ok"}}\'',
        "Drain a region for 60 s through the admin API:",
        f"  curl -s -XPOST -H 'Authorization: Bearer {token}' 127.0.0.1:8080/overrides "
        '-d \'{"region": "eu-west", "action": "drain", "duration": 60}\'',
        "  curl -s 127.0.0.1:8080/status",
    ]
    if with_haproxy:
        lines += ["Through HAProxy:", f"  curl -s {HAPROXY_FRONTEND}/v1/models"]
    lines += [
        f"Audit log: {state_dir / 'audit.jsonl'}   daemon log: {state_dir / 'daemon.log'}   Ctrl-C stops."
    ]
    return "\n".join(lines)


def render_view(daemon: Daemon) -> Table:
    view = daemon.health()
    groups = [g for g in daemon.plan or () if g.service == daemon.policy.services[0].name]
    table = Table(
        title=f"regions - {'ready' if daemon.ready else 'waiting for the first probe round'}", expand=True
    )
    for column in ("region", "jurisdiction", "state", "score", "ttft ms", "queue", "kv %"):
        table.add_column(column)
    for g in groups:
        table.add_column(f"{g.group} % ({g.mode.value})", justify="right")
    for region in daemon.policy.regions:
        h = view.get(region.name)
        table.add_row(
            region.name,
            region.jurisdiction,
            Text(h.state.value, style=STATE_STYLE[h.state.value]),
            f"{h.score:.2f}",
            f"{h.ttft_s * 1000:.0f}" if h.ttft_s is not None else "-",
            f"{h.queue_depth:.0f}" if h.queue_depth is not None else "-",
            f"{h.kv_cache_usage * 100:.0f}" if h.kv_cache_usage is not None else "-",
            *(str(g.weight(region.name)) if region.name in g.as_dict() else "-" for g in groups),
        )
    troubled = [
        f"{r.name}: {'; '.join(view.get(r.name).reasons)}"
        for r in daemon.policy.regions
        if view.get(r.name).reasons
    ]
    table.caption = "\n".join(troubled) or None
    return table


async def _live_view(daemon: Daemon, text: str) -> None:
    with Live(refresh_per_second=4, screen=False, transient=False) as live:
        while True:
            live.update(Group(render_view(daemon), Panel(text, title="try this")))
            await asyncio.sleep(0.25)


async def _plain_view(daemon: Daemon, text: str) -> None:
    print(text, flush=True)
    last: object = None
    while True:
        current = [(g.group, g.mode.value, g.as_dict()) for g in daemon.plan or ()]
        if current != last:
            last = current
            for group, mode, weights in current:
                print(f"[{group}] {mode}: {weights}", flush=True)
        await asyncio.sleep(0.25)


@dataclass
class DemoStack:
    daemon: Daemon
    fleet: SimFleet
    haproxy: HaproxyProcess | None
    token: str


@asynccontextmanager
async def demo_stack(
    policy_path: Path,
    state_dir: Path,
    *,
    haproxy: bool = True,
    haproxy_frontend: str = HAPROXY_FRONTEND,
    api_port: int = 8080,
    token: str | None = None,
    extra: Sequence[tuple[str, Callable[[], Awaitable[None]]]] = (),
    handle_signals: bool = True,
    probes: Mapping[ProbeKind, ProbeFunction] = DEFAULT_PROBES,
) -> AsyncIterator[DemoStack]:
    """Simulated regions, HAProxy (when asked for and installed) and the daemon with its admin API, running
    until the block exits. The e2e tests and benchmarks drive the same stack the demo shows."""
    policy = await asyncio.to_thread(load_policy, policy_path)
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(16)
    hap_settings = policy.providers.haproxy
    use_haproxy = haproxy and hap_settings is not None and haproxy_available()
    config = DaemonConfig(policy_path=policy_path, state_dir=state_dir, api_port=api_port, token=token)
    async with contextlib.AsyncExitStack() as stack:
        fleet = await stack.enter_async_context(SimFleet.for_policy(policy))
        proc = None
        if use_haproxy and hap_settings is not None:
            proc = HaproxyProcess(render_config(policy, frontend=haproxy_frontend, stats=hap_settings.socket))
            await proc.start()
            stack.push_async_callback(proc.stop)
        disabled = () if use_haproxy else ("haproxy",)
        daemon = Daemon(config, policy, partial(build_providers, disabled=disabled), probes)
        api: Callable[[], Awaitable[None]] = partial(serve, daemon, config.api_host, config.api_port)
        tasks = [("api", api), *extra]
        runner = asyncio.create_task(daemon.run(tasks, handle_signals=handle_signals))
        try:
            yield DemoStack(daemon, fleet, proc, token)
        finally:
            daemon.request_stop()
            await runner


def prepare_demo(policy_path: Path, state_dir: Path, haproxy: bool) -> tuple[Policy, str]:
    """Blocking set-up before the loop starts: log file, tracing, token file."""
    state_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(state_dir / "daemon.log")
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    setup_tracing()
    policy = load_policy(policy_path)
    if haproxy and policy.providers.haproxy is not None and not haproxy_available():
        print("haproxy is not installed: running without it (apt-get install haproxy)", file=sys.stderr)
    token = os.environ.get("CONTROLPLANE_TOKEN") or secrets.token_urlsafe(16)
    token_file = state_dir / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    return policy, token


async def run_demo(policy_path: Path, state_dir: Path, *, view: bool = True, haproxy: bool = True) -> int:
    policy, token = await asyncio.to_thread(prepare_demo, policy_path, state_dir, haproxy)
    async with demo_stack(policy_path, state_dir, haproxy=haproxy, token=token) as stack:
        text = guide(policy, state_dir, token, stack.haproxy is not None)
        shown = _live_view if view and sys.stdout.isatty() else _plain_view
        viewer = asyncio.create_task(shown(stack.daemon, text))
        stop = asyncio.create_task(stack.daemon.stopped())
        await asyncio.wait([viewer, stop], return_when=asyncio.FIRST_COMPLETED)
        viewer.cancel()
    return 0
