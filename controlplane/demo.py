"""The demo stack on loopback: simulated regions, HAProxy, the daemon with DNS and admin API, a live view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from chaos.simregion import SimFleet
from controlplane.api import serve
from controlplane.cost.live import RegionLiveCost
from controlplane.daemon import Daemon, DaemonConfig
from controlplane.haproxy_process import HaproxyProcess, haproxy_available, render_config
from controlplane.logs import LOG_FORMAT, OneLineFormatter
from controlplane.policy import Model, Policy, Region, load_policy, parse_policy
from controlplane.providers.factory import build_providers
from controlplane.telemetry import setup_tracing
from probes.observation import ProbeKind
from probes.scheduler import DEFAULT_PROBES, ProbeFunction

log = logging.getLogger(__name__)
HAPROXY_FRONTEND = "127.0.0.1:9000"
STATE_STYLE = {"healthy": "green", "unhealthy": "bold red", "unknown": "yellow"}
DEMO_MODEL = "demo-llm"
DEMO_VERSIONS = ("2026-11-01", "2026-12-01")  # the source holds both; the policy starts on the first
DEMO_SYNC_INTERVAL = 20.0
# A few small files, so a sync lands in well under a second: what matters is seeing routing wait for it.
DEMO_FILES = {"config.json": 256, "tokenizer.json": 4096, "model-00001.safetensors": 65536}


def with_weights(policy_path: Path, state_dir: Path) -> Path:
    """The demo's policy with model weights: file:// buckets under STATE_DIR/buckets, a source holding
    DEMO_MODEL and empty region buckets, so that no region gets traffic until the first sync lands its
    weights. Written to STATE_DIR/policy.yaml (bucket URLs are absolute, so they cannot be in the shipped
    file); that copy is the one the daemon reloads. A policy that declares models already is used as is."""
    text = policy_path.read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    if data.get("models"):
        return policy_path
    buckets = state_dir.resolve() / "buckets"
    for region in data["regions"]:
        folder = buckets / region["name"]
        shutil.rmtree(folder, ignore_errors=True)  # each start shows weights arriving
        region["bucket"] = folder.as_uri()
    for version in DEMO_VERSIONS:
        source = buckets / "source" / DEMO_MODEL / version
        source.mkdir(parents=True, exist_ok=True)
        for name, size in DEMO_FILES.items():
            if not (source / name).exists():
                (source / name).write_bytes(f"{DEMO_MODEL} {version} {name}\n".encode() * (size // 64 + 1))
    data["models"] = [
        {"name": DEMO_MODEL, "source": (buckets / "source").as_uri(), "version": DEMO_VERSIONS[0]}
    ]
    for service in data["services"]:
        service["model"] = DEMO_MODEL
    data["sync"] = {"interval": DEMO_SYNC_INTERVAL, "concurrency": 4}
    out = state_dir / "policy.yaml"
    header = f"# Written by `controlplane demo` from {policy_path}; edit this copy while the demo runs.\n"
    rendered = header + yaml.safe_dump(data, sort_keys=False)
    parse_policy(rendered, str(out))  # refuse here, with positions in the shipped file's terms, not later
    out.write_text(rendered, encoding="utf-8")
    return out


def guide(policy: Policy, state_dir: Path, token: str, with_haproxy: bool) -> str:
    dns = policy.providers.localdns
    service = policy.services[0]
    at = f"@{dns.listen} -p {dns.port}" if dns else ""
    first = policy.regions[0]
    control = f"{urlsplit(first.endpoint).hostname}:8001"
    lines = [
        "Status page (live; paste the token below into it to drain and undrain): http://127.0.0.1:8080/",
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
    for model in policy.models:
        region = policy.model_regions(model)[-1]
        bucket = region.bucket_url
        folder = f"{bucket.prefix}/{model.name}" if bucket is not None and bucket.scheme == "file" else None
        sync = f"  curl -s -XPOST -H 'Authorization: Bearer {token}' 127.0.0.1:8080/sync"
        lines += [
            f"Weights: a region gets traffic only once {model.name} {model.version} is verified in its bucket"
            f" (synced every {policy.sync.interval:g} s). Take {region.name}'s away, sync, watch it drop"
            " to 0 and come back:",
            *([f"  rm -r {folder}"] if folder else []),
            sync,
            f"  curl -s 127.0.0.1:8080/status | python3 -m json.tool | grep -A10 '\"{model.name}\"'",
            f"Or move every region to a new version: edit version: in {state_dir / 'policy.yaml'}"
            f" (the source also holds {', '.join(DEMO_VERSIONS[1:])}).",
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
    service = daemon.policy.services[0]
    model = daemon.policy.model(service.model) if service.model is not None else None
    cost = daemon.live_cost(view)
    priced = {r.region: r for r in cost.regions} if cost is not None else {}
    for column in ("region", "jurisdiction", "state", "score", "ttft ms", "queue", "kv %"):
        table.add_column(column)
    if cost is not None:
        table.add_column(f"{cost.currency}/h", justify="right")
    if model is not None:
        table.add_column(f"{model.name} {model.version}")
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
            *([_cost_cell(priced.get(region.name))] if cost is not None else []),
            *([_weights_cell(daemon, region, model)] if model is not None else []),
            *(str(g.weight(region.name)) if region.name in g.as_dict() else "-" for g in groups),
        )
    troubled = [
        f"{r.name}: {'; '.join(view.get(r.name).reasons)}"
        for r in daemon.policy.regions
        if view.get(r.name).reasons
    ]
    if model is not None:
        troubled += [
            f"{r.name}: {why}" for r in daemon.policy.regions if (why := daemon.artifacts.lacks(r, model))
        ]
    if cost is not None:
        troubled.append(
            f"estimated {cost.per_hour:,.2f} {cost.currency}/h at {cost.tokens_out_per_s:,.0f} output tokens/s"
        )
    table.caption = "\n".join(troubled) or None
    return table


def _cost_cell(region: RegionLiveCost | None) -> str:
    return "-" if region is None else f"{region.per_hour:,.2f} ({region.instances} inst)"


def _weights_cell(daemon: Daemon, region: Region, model: Model) -> Text:
    if daemon.artifacts.lacks(region, model) is None:
        return Text("verified", style="green")
    return Text("missing", style="bold red")


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
    prices: Sequence[Path] = (),
) -> AsyncIterator[DemoStack]:
    """Simulated regions, HAProxy (when asked for and installed) and the daemon with its admin API, running
    until the block exits. The e2e tests and benchmarks drive the same stack the demo shows."""
    policy = await asyncio.to_thread(load_policy, policy_path)
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(16)
    hap_settings = policy.providers.haproxy
    use_haproxy = haproxy and hap_settings is not None and haproxy_available()
    config = DaemonConfig(
        policy_path=policy_path, state_dir=state_dir, api_port=api_port, token=token, prices=tuple(prices)
    )
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


async def run_demo(
    policy_path: Path,
    state_dir: Path,
    *,
    view: bool = True,
    haproxy: bool = True,
    prices: Sequence[Path] = (),
) -> int:
    policy_path = await asyncio.to_thread(with_weights, policy_path, state_dir)
    policy, token = await asyncio.to_thread(prepare_demo, policy_path, state_dir, haproxy)
    async with demo_stack(policy_path, state_dir, haproxy=haproxy, token=token, prices=prices) as stack:
        text = guide(policy, state_dir, token, stack.haproxy is not None)
        shown = _live_view if view and sys.stdout.isatty() else _plain_view
        viewer = asyncio.create_task(shown(stack.daemon, text))
        stop = asyncio.create_task(stack.daemon.stopped())
        await asyncio.wait([viewer, stop], return_when=asyncio.FIRST_COMPLETED)
        viewer.cancel()
    return 0
