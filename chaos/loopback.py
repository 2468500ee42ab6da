"""Loopback plumbing shared by tests, benches and drills: free ports, small HTTP servers started and stopped
alike, the demo stack moved to free ports, and a DNS client for it."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
from aiohttp import web

DEMO_POLICY = Path(__file__).resolve().parent.parent / "policies" / "demo.yaml"
SERVICE_NAME = "chat.llm.internal"


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


async def serve_app(app: web.Application, host: str, port: int, **runner: Any) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0: a port the OS picks) until stop_app; the runner and the real port."""
    started = web.AppRunner(app, access_log=None, **runner)
    await started.setup()
    await web.TCPSite(started, host, port).start()
    return started, int(started.addresses[0][1])


async def stop_app(runner: web.AppRunner | None, *, drop_connections: bool = False) -> None:
    """Stop what serve_app started; `drop_connections` cuts open ones at once (endless answers) rather than
    letting them finish within the runner's shutdown timeout."""
    if runner is None:
        return
    server = runner.server
    if drop_connections:
        for handler in server.connections if server is not None else ():
            handler.force_close()
    await runner.cleanup()


def loopback_policy(region_port: int, dns_port: int, haproxy_socket: str, slow_start: float = 1.0) -> str:
    """demo.yaml with every port moved, so a running `controlplane demo` is left alone."""
    text = DEMO_POLICY.read_text(encoding="utf-8")
    replaced = (
        text.replace(":8000", f":{region_port}")
        .replace("port: 5353", f"port: {dns_port}")
        .replace("socket: 127.0.0.1:9999", f"socket: {haproxy_socket}")
        .replace("slow_start: 5", f"slow_start: {slow_start:g}")
    )
    if str(region_port) not in replaced or f"port: {dns_port}" not in replaced:
        raise ValueError(f"{DEMO_POLICY} no longer has the ports this helper moves")
    return replaced


async def resolve(
    port: int, source: str = "127.0.0.1", count: int = 1, name: str = SERVICE_NAME
) -> list[str]:
    """Addresses answered to `count` A queries from `source`; an empty answer (NODATA) counts as ""."""
    answers: list[str] = []
    for _ in range(count):
        query = dns.message.make_query(name, "A")
        response = await dns.asyncquery.udp(query, "127.0.0.1", port=port, source=source, timeout=1.0)
        if response.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"DNS answered {dns.rcode.to_text(response.rcode())} for {name}")
        answers += [item.address for rrset in response.answer for item in rrset] or [""]
    return answers


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_loopback(host: str, what: str) -> None:
    """ValueError unless `host` is a loopback address: the chaos tools break things, only here."""
    if not is_loopback(host):
        raise ValueError(f"{what} must be a loopback address, got {host!r}")
