"""`controlplane demo --replicas N`: etcd, the simulated regions and N replica processes of one plane on
loopback, each behind proxies of its own (chaos/replicas.py), a knob per replica that cuts it off from the
regions or from etcd, and a live view of who leads and what each replica sees."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from chaos.etcdproc import EtcdCluster, EtcdDidNotStart
from chaos.loopback import free_port, serve_app, stop_app
from chaos.replicas import Link, ReplicaStack
from chaos.simregion import SimFleet
from controlplane.demo import STATE_STYLE
from controlplane.logs import LOG_FORMAT, OneLineFormatter
from controlplane.policy import load_policy, parse_policy

log = logging.getLogger(__name__)
PREFIX = "/controlplane/demo"
LEASE_TTL = 3
ROLE_STYLE = {"leader": "bold green", "follower": "cyan", "frozen": "bold red", "starting": "yellow"}
Blocks = Mapping[str, Mapping[str, Any] | None]


def replicas_policy(policy_path: Path) -> dict[str, Any]:
    """The demo policy for replicas: its regions, services and embedded DNS, without HAProxy (one process on
    one socket has no place among replicas that each write their own in-process providers)."""
    data: dict[str, Any] = yaml.safe_load(policy_path.read_text(encoding="utf-8"))
    data.get("providers", {}).pop("haproxy", None)
    if "localdns" not in data.get("providers", {}):
        raise ValueError(
            f"{policy_path}: the replicas demo needs providers.localdns (every replica serves DNS)"
        )
    parse_policy(yaml.safe_dump(data, sort_keys=False), str(policy_path))
    return data


def knob_app(stack: ReplicaStack) -> web.Application:
    """POST /rN/cut/regions, /rN/cut/etcd, /rN/heal/regions, /rN/heal/etcd; GET / lists what is cut."""

    async def turn(request: web.Request) -> web.Response:
        name, action, link = (request.match_info[k] for k in ("replica", "action", "link"))
        if name not in stack.names or link not in tuple(Link):
            raise web.HTTPNotFound(text=f"replicas: {', '.join(stack.names)}; links: regions, etcd\n")
        (stack.cut if action == "cut" else stack.heal)(name, link)
        log.info("knob: %s %s from %s", action, name, link)
        return web.json_response({name: stack.cuts(name)})

    async def cuts(request: web.Request) -> web.Response:
        return web.json_response({name: stack.cuts(name) for name in stack.names})

    app = web.Application()
    app.router.add_post("/{replica}/{action:cut|heal}/{link}", turn)
    app.router.add_get("/", cuts)
    return app


def guide(stack: ReplicaStack, fleet: SimFleet, knob: str, state_dir: Path) -> str:
    first = next(iter(stack.replicas.values()))
    region = next(iter(fleet.regions.values()))
    dns_name = stack.policy["services"][0]["dns_name"]
    lines = [
        "Replicas (admin API, embedded DNS):",
        *(
            f"  {r.name}: {r.api}/status   dig @127.0.0.1 -p {r.dns_port} {dns_name} +short"
            for r in stack.replicas.values()
        ),
        f"Cut a replica off from the regions (or from etcd) and heal it, e.g. {first.name}:",
        f"  curl -s -XPOST {knob}/{first.name}/cut/regions",
        f"  curl -s -XPOST {knob}/{first.name}/heal/regions",
        f"  curl -s -XPOST {knob}/{first.name}/cut/etcd",
        f"  curl -s -XPOST {knob}/{first.name}/heal/etcd",
        f"Break a region for every replica (modes: ok down hang slow errors wrong_model), e.g. {region.name}:",
        f'  curl -s -XPOST {region.control_url}/fault -d \'{{"mode": "down"}}\'',
        f"Kill the leader (another one leads within {LEASE_TTL} s or so): kill -9 <pid>"
        f" (pids: {', '.join(f'{r.name}={r.pid}' for r in stack.replicas.values())})",
        f"Logs: {state_dir}/rN/daemon.log, audit: {state_dir}/rN/state/audit.jsonl.   Ctrl-C stops.",
    ]
    return "\n".join(lines)


def _weights(status: Mapping[str, Any] | None) -> str:
    groups = (status or {}).get("services", {})
    service: Mapping[str, Any] = next(iter(groups.values()), {})
    weights = service.get("global", {}).get("weights", {})
    return " ".join(f"{region}={w['weight']}" for region, w in weights.items()) or "-"


def render(stack: ReplicaStack, regions: list[str], statuses: Blocks) -> Table:
    table = Table(title=f"replicas of one plane, coordinated through etcd (lease {LEASE_TTL} s)", expand=True)
    for column in (
        "replica",
        "role",
        "leader",
        "epoch",
        "cut off from",
        *regions,
        "global weights",
        "why frozen",
    ):
        table.add_column(column)
    for name in stack.names:
        status = statuses.get(name)
        block = (status or {}).get("coordination") or {}
        votes = block.get("votes", {}).get(name, {}).get("states", {})
        role = block.get("role", "no answer")
        table.add_row(
            name,
            Text(role, style=ROLE_STYLE.get(role, "dim")),
            str(block.get("leader") or "-"),
            str(block.get("epoch") or "-"),
            ", ".join(stack.cuts(name)) or "-",
            *(Text(votes.get(r, "-"), style=STATE_STYLE.get(votes.get(r, ""), "dim")) for r in regions),
            _weights(status),
            str(block.get("frozen") or block.get("etcd") or ""),
        )
    return table


def summary(name: str, status: Mapping[str, Any] | None) -> str:
    block = (status or {}).get("coordination") or {}
    why = block.get("frozen") or block.get("etcd")
    return (
        f"{name}: {block.get('role', 'no answer')}, leader {block.get('leader') or '-'},"
        f" epoch {block.get('epoch') or '-'}{f' ({why})' if why else ''}; weights {_weights(status)}"
    )


async def _statuses(stack: ReplicaStack) -> dict[str, Any]:
    found = await asyncio.gather(*(stack.status(name) for name in stack.names))
    return dict(zip(stack.names, found, strict=True))


async def _live_view(stack: ReplicaStack, regions: list[str], text: str) -> None:
    with Live(refresh_per_second=4, screen=False, transient=False) as live:
        while True:
            live.update(Group(render(stack, regions, await _statuses(stack)), Panel(text, title="try this")))
            await asyncio.sleep(0.25)


async def _plain_view(stack: ReplicaStack, text: str) -> None:
    print(text, flush=True)
    last: dict[str, str] = {}
    while True:
        for name, status in (await _statuses(stack)).items():
            line = summary(name, status)
            if last.get(name) != line:
                last[name] = line
                print(line, flush=True)
        await asyncio.sleep(0.25)


@dataclass
class ReplicasDemo:
    stack: ReplicaStack
    fleet: SimFleet
    etcd: EtcdCluster
    knob: str


@asynccontextmanager
async def replicas_demo(
    policy_path: Path, state_dir: Path, replicas: int, etcd_binary: str, token: str
) -> AsyncIterator[ReplicasDemo]:
    """etcd (one member), the policy's simulated regions, the replicas and the knob, until the block exits."""
    data = await asyncio.to_thread(replicas_policy, policy_path)
    policy = await asyncio.to_thread(load_policy, policy_path)
    etcd_root = state_dir / "etcd"
    await asyncio.to_thread(shutil.rmtree, etcd_root, True)  # a fresh cluster: the demo starts from nothing
    cluster = EtcdCluster(etcd_binary, etcd_root, 1)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(asyncio.to_thread, cluster.close)
        await asyncio.to_thread(cluster.start)
        fleet = await stack.enter_async_context(SimFleet.for_policy(policy))
        replica_stack = ReplicaStack(
            data,
            cluster.endpoints,
            state_dir,
            replicas=replicas,
            prefix=PREFIX,
            lease_ttl=LEASE_TTL,
            token=token,
        )
        await stack.enter_async_context(replica_stack)
        runner, port = await serve_app(knob_app(replica_stack), "127.0.0.1", free_port())
        stack.push_async_callback(stop_app, runner)
        yield ReplicasDemo(replica_stack, fleet, cluster, f"http://127.0.0.1:{port}")


def _prepare(state_dir: Path) -> str:
    state_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(state_dir / "demo.log")
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    token = os.environ.get("CONTROLPLANE_TOKEN") or secrets.token_urlsafe(16)
    token_file = state_dir / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    return token


async def run_replicas_demo(policy_path: Path, state_dir: Path, replicas: int, view: bool) -> int:
    binary = shutil.which("etcd")
    if binary is None:
        print(
            "etcd is not installed: the replicas demo needs it (apt-get install etcd-server)", file=sys.stderr
        )
        return 1
    token = await asyncio.to_thread(_prepare, state_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with replicas_demo(policy_path, state_dir, replicas, binary, token) as demo:
            text = guide(demo.stack, demo.fleet, demo.knob, state_dir)
            regions = [r["name"] for r in demo.stack.policy["regions"]]
            shown = (
                _live_view(demo.stack, regions, text)
                if view and sys.stdout.isatty()
                else _plain_view(demo.stack, text)
            )
            viewer = asyncio.create_task(shown)
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([viewer, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if viewer.done():
                viewer.result()  # the view failed: say why rather than run on without one
            viewer.cancel()
    except EtcdDidNotStart as exc:
        print(f"etcd did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("stopped: replicas, regions and etcd are down", flush=True)
    return 0
