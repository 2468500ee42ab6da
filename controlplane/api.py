"""Admin HTTP API: health, readiness, status, Prometheus metrics, and token-guarded overrides and syncs."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from controlplane.coord.replica import Role
from controlplane.drillresult import DrillResult
from controlplane.errors import ControlPlaneError
from controlplane.overrides import Override, OverrideAction
from controlplane.plan import GroupMode
from controlplane.policy import Model, Region
from controlplane.providers.localdns import LocalDnsProvider
from controlplane.statuspage import install as install_status_page
from probes.health import HealthView, RegionHealth

if TYPE_CHECKING:
    from controlplane.daemon import Daemon

MAX_OVERRIDE_SECONDS = 7 * 24 * 3600
HEADER_TIMEOUT = 10.0  # seconds a client has to send a request's line and headers (slow-loris guard)
KEEPALIVE_TIMEOUT = 15.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^@/]*@", re.IGNORECASE)
DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
REGISTRY_KEY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
STATE_VALUE = {"healthy": 1.0, "unknown": 0.5, "unhealthy": 0.0}


def _health_json(health: RegionHealth) -> dict[str, Any]:
    data = asdict(health)
    del data["region"]
    return {**data, "state": health.state.value, "reasons": list(health.reasons)}


def redact(url: str | None) -> str | None:
    """A URL without its user and password: /status is read by anyone who can reach the API."""
    return None if url is None else _USERINFO.sub(r"\1***@", url)


def alerts(daemon: Daemon) -> list[dict[str, Any]]:
    """What an operator should look at now, each with what it means for routing."""
    found: list[dict[str, Any]] = []
    for name, health in (("state.json", daemon.store.health), ("audit.jsonl", daemon.audit.health)):
        if health.failing:
            found.append(
                {
                    "alert": "disk_writes_failing",
                    "file": name,
                    "since": health.failing_since,
                    "error": health.last_error,
                    "impact": "routing continues; changes are not recorded until writes work again",
                }
            )
    if daemon.state_problems:
        found.append(
            {
                "alert": "state_repaired",
                "problems": list(daemon.state_problems[:20]),
                "impact": "parts of state.json did not validate and were dropped; a copy is kept beside it",
            }
        )
    for name, task in daemon.tasks.items():
        if task.crash_looping:
            found.append(
                {
                    "alert": "task_crash_looping",
                    "task": name,
                    "crashes": task.streak,
                    "error": task.last_error,
                }
            )
    monitor = daemon.loop_monitor
    if monitor.max_lag > monitor.state.threshold:
        found.append(
            {
                "alert": "event_loop_stalled",
                "max_lag": round(monitor.max_lag, 3),
                "stalls": monitor.stalls,
                "impact": "probe failures during a stall are ignored and plan changes wait for fresh probes",
            }
        )
    for name, stats in daemon.reconciler.stats.items():
        if stats.consecutive_errors:
            found.append({"alert": "provider_failing", "provider": name, "error": stats.last_error})
    return found


def _model_json(daemon: Daemon, region: Region, model: Model, now: float) -> dict[str, Any]:
    found = daemon.artifacts.get(region.name, model.name)
    why = daemon.artifacts.lacks(region, model)
    seen = found.surveyed_at if found is not None else None
    return {
        "wanted": model.version,
        "current": found.current if found is not None else None,  # None: not known to name `wanted`
        "verified": why is None,
        "why_not": why,
        "surveyed_at": seen,
        "age": None if seen is None else round(now - seen, 3),
        "last_sync": found.synced_at if found is not None else None,
        "last_error": found.error if found is not None else None,
        "bytes_copied": found.bytes_copied if found is not None else 0,
    }


def _models_of(daemon: Daemon) -> dict[str, list[Model]]:
    """Per region, the models it serves."""
    policy = daemon.policy
    out: dict[str, list[Model]] = {}
    for model in policy.models:
        for region in policy.model_regions(model):
            out.setdefault(region.name, []).append(model)
    return out


def status(daemon: Daemon) -> dict[str, Any]:
    view = daemon.health()
    cost = daemon.live_cost(view)
    now = time.time()
    models = _models_of(daemon)
    services: dict[str, dict[str, Any]] = {}
    for g in daemon.plan or ():
        services.setdefault(g.service, {})[g.group] = {
            "mode": g.mode.value,
            "weights": {w.region: {"weight": w.weight, "reason": w.reason} for w in g.weights},
        }
    return {
        "ready": daemon.ready,
        "dry_run": daemon.config.dry_run,
        "started_at": daemon.started_at,
        "policy": str(daemon.config.policy_path),
        "last_change": daemon.last_change,
        "regions": {
            r.name: {
                **_health_json(view.get(r.name)),
                "jurisdiction": r.jurisdiction,
                "endpoint": redact(r.endpoint),
                "models": {m.name: _model_json(daemon, r, m, now) for m in models.get(r.name, ())},
            }
            for r in daemon.policy.regions
        },
        "sync": {
            "interval": daemon.policy.sync.interval,
            "last": daemon.last_sync,
            "surveyed": daemon.weights_surveyed.is_set(),
        },
        "services": services,
        "cost": cost.to_json() if cost else None,
        "alerts": alerts(daemon),
        "overrides": [o.to_json() for o in daemon.overrides if o.until > time.time()],
        "providers": {
            name: {
                "applies": s.applies,
                "changes": s.changes,
                "errors": s.errors,
                "consecutive_errors": s.consecutive_errors,
                "last_error": s.last_error,
            }
            for name, s in daemon.reconciler.stats.items()
        },
        "last_drill": daemon.last_drill.model_dump(mode="json") if daemon.last_drill else None,
        **({"coordination": daemon.coordinator.status()} if daemon.coordinator else {}),
    }


class PlaneCollector(Collector):
    """Reads the daemon's state at scrape time, so nothing is counted twice or kept in globals."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        view = d.health()
        health = GaugeMetricFamily(
            "controlplane_region_health", "1 healthy, 0.5 unknown, 0 unhealthy", labels=["region"]
        )
        score = GaugeMetricFamily(
            "controlplane_region_score", "Health score 0..1 (latency and load headroom)", labels=["region"]
        )
        for r in d.policy.regions:
            h = view.get(r.name)
            health.add_metric([r.name], STATE_VALUE[h.state.value])
            score.add_metric([r.name], h.score)
        weight = GaugeMetricFamily(
            "controlplane_weight_percent", "Planned traffic share", labels=["service", "group", "region"]
        )
        mode = GaugeMetricFamily(
            "controlplane_group_mode",
            "1 for the client group's current mode",
            labels=["service", "group", "mode"],
        )
        for g in d.plan or ():
            for w in g.weights:
                weight.add_metric([g.service, g.group, w.region], w.weight)
            for each in GroupMode:
                mode.add_metric([g.service, g.group, each.value], float(g.mode is each))
        obs = CounterMetricFamily(
            "controlplane_probe_results", "Probe results", labels=["region", "kind", "ok"]
        )
        for (region, kind, ok), n in sorted(d.counters.observations.items()):
            obs.add_metric([region, kind, str(ok).lower()], n)
        errors = CounterMetricFamily(
            "controlplane_provider_errors", "Failed reconciles per provider", labels=["provider"]
        )
        applies = CounterMetricFamily(
            "controlplane_provider_applies", "Applied change sets", labels=["provider"]
        )
        for name, s in d.reconciler.stats.items():
            errors.add_metric([name], s.errors)
            applies.add_metric([name], s.applies)
        yield from (health, score, weight, mode, obs, errors, applies)
        yield CounterMetricFamily(
            "controlplane_plan_changes", "Plans that changed a weight", value=d.counters.plan_changes
        )
        yield CounterMetricFamily("controlplane_reconciles", "Reconcile steps", value=d.counters.reconciles)
        yield CounterMetricFamily(
            "controlplane_policy_reloads", "Policy edits loaded", value=d.counters.reloads_ok
        )
        yield CounterMetricFamily(
            "controlplane_policy_reloads_rejected",
            "Invalid policy edits refused",
            value=d.counters.reloads_rejected,
        )
        yield CounterMetricFamily(
            "controlplane_residency_blocks",
            "Plans refused by the residency gate",
            value=d.counters.residency_blocks,
        )
        yield GaugeMetricFamily(
            "controlplane_ready", "1 once the first probe round completed", value=float(d.ready)
        )
        failures = CounterMetricFamily(
            "controlplane_disk_write_failures",
            "Failed writes of state or audit (routing goes on)",
            labels=["file"],
        )
        failing = GaugeMetricFamily(
            "controlplane_disk_writes_failing", "1 while writes fail", labels=["file"]
        )
        for name, writes in (("state", d.store.health), ("audit", d.audit.health)):
            failures.add_metric([name], writes.failures)
            failing.add_metric([name], float(writes.failing))
        restarts = CounterMetricFamily(
            "controlplane_task_restarts", "Supervised task crashes", labels=["task"]
        )
        for name, task in d.tasks.items():
            restarts.add_metric([name], task.crashes)
        yield from (failures, failing, restarts)
        dropped = CounterMetricFamily(
            "controlplane_dns_dropped", "DNS queries refused before parsing", labels=["reason"]
        )
        connections = GaugeMetricFamily("controlplane_dns_tcp_connections", "Open TCP DNS connections")
        answers = CounterMetricFamily(
            "controlplane_dns_answers",
            "DNS queries the embedded server answered, by name, client group and rcode",
            labels=["name", "group", "rcode"],
        )
        worker_restarts = CounterMetricFamily(
            "controlplane_dns_worker_restarts", "Embedded DNS worker processes restarted after they died"
        )
        for provider in d.providers:
            if isinstance(provider, LocalDnsProvider):
                for reason, n in sorted(provider.dropped.items()):
                    dropped.add_metric([reason], n)
                for (name, group, rcode), n in sorted(provider.stats.items()):
                    answers.add_metric([name, group, rcode], n)
                connections.add_metric([], provider.connections)
                worker_restarts.add_metric([], provider.restarts)
        yield from (dropped, connections, answers, worker_restarts)
        yield from _weight_metrics(d)
        yield from _cost_metrics(d, view)
        yield from _coordination_metrics(d)
        monitor = d.loop_monitor
        yield GaugeMetricFamily(
            "controlplane_loop_lag_seconds", "How late the event loop ran", value=monitor.lag
        )
        yield GaugeMetricFamily(
            "controlplane_loop_max_lag_seconds", "Largest loop lag of the last minutes", value=monitor.max_lag
        )
        yield CounterMetricFamily("controlplane_loop_stalls", "Event loop stalls", value=monitor.stalls)
        yield CounterMetricFamily(
            "controlplane_probe_inconclusive",
            "Probe results dropped: the plane could not look (loop stalled, out of descriptors)",
            value=d.scheduler.stats.inconclusive,
        )
        yield CounterMetricFamily(
            "controlplane_probes_shed",
            "Probes not started: the scheduler was too far behind to start them in time",
            value=d.scheduler.stats.shed,
        )


def _coordination_metrics(d: Daemon) -> Iterator[Metric]:
    """Who leads, under which epoch, and how the replicas' votes fall: what an alert on a split or frozen plane
    needs. Nothing when the daemon runs alone."""
    c = d.coordinator
    if c is None:
        return
    status = c.status()
    role = GaugeMetricFamily(
        "controlplane_replica_role", "1 for this replica's current role", labels=["role"]
    )
    for each in Role:
        role.add_metric([each.value], 1.0 if status["role"] == each.value else 0.0)
    yield role
    yield GaugeMetricFamily(
        "controlplane_leader_epoch",
        "The epoch of the leader this replica knows of (0: none)",
        value=status["epoch"] or 0,
    )
    yield GaugeMetricFamily(
        "controlplane_etcd_up",
        "1 while this replica's etcd calls succeed",
        value=0.0 if status["etcd"] else 1.0,
    )
    yield CounterMetricFamily(
        "controlplane_fenced_writes",
        "Writes refused because this replica did not lead (any more)",
        value=c.fenced_writes,
    )
    quorum = c.quorum
    if quorum is None:
        return
    yield GaugeMetricFamily(
        "controlplane_quorum_live_replicas", "Replicas whose vote is fresh", value=len(quorum.live)
    )
    yield GaugeMetricFamily("controlplane_quorum_needed", "Votes that make a majority", value=quorum.needed)
    votes = GaugeMetricFamily(
        "controlplane_region_votes",
        "Live replicas seeing the region in each state",
        labels=["region", "state"],
    )
    for name, counted in sorted(quorum.regions.items()):
        for state, who in (
            ("unhealthy", counted.down),
            ("healthy", counted.up),
            ("unknown", counted.unknown),
        ):
            votes.add_metric([name, state], len(who))
    yield votes


def _cost_metrics(d: Daemon, view: HealthView) -> Iterator[Metric]:
    tokens = GaugeMetricFamily(
        "controlplane_region_output_tokens_per_second",
        "Output tokens per second the region's server counted between its last two scrapes",
        labels=["region"],
    )
    for r in d.policy.regions:
        if (rate := view.get(r.name).tokens_out_per_s) is not None:
            tokens.add_metric([r.name], rate)
    yield tokens
    cost = d.live_cost(view)
    if cost is None:
        return
    per_region = GaugeMetricFamily(
        "controlplane_region_cost_per_hour",
        f"Estimated {cost.currency} per hour: the observed output tokens/s spread as the current weights "
        "spread traffic, priced with the region's fleet (reserved instances always counted)",
        labels=["region"],
    )
    for row in cost.regions:
        per_region.add_metric([row.region], row.per_hour)
    yield per_region
    yield GaugeMetricFamily(
        "controlplane_cost_per_hour",
        f"Estimated {cost.currency} per hour over every region with a fleet",
        value=cost.per_hour,
    )


def _weight_metrics(d: Daemon) -> Iterator[Metric]:
    labels = ["region", "model"]
    verified = GaugeMetricFamily(
        "controlplane_model_verified",
        "1 when the region's bucket holds the policy's version of the model, verified",
        labels=labels,
    )
    age = GaugeMetricFamily(
        "controlplane_model_sync_age_seconds",
        "Seconds since the region's bucket was last read",
        labels=labels,
    )
    failing = GaugeMetricFamily(
        "controlplane_model_sync_failing", "1 when the last sync attempt had an error", labels=labels
    )
    copied = CounterMetricFamily(
        "controlplane_model_bytes_copied", "Bytes this daemon moved into the region's bucket", labels=labels
    )
    now = time.time()
    for region, models in _models_of(d).items():
        for model in models:
            key = [region, model.name]
            verified.add_metric(key, float(d.artifacts.lacks(d.policy.region(region), model) is None))
            found = d.artifacts.get(region, model.name)
            if found is None:
                continue
            if found.surveyed_at is not None:
                age.add_metric(key, now - found.surveyed_at)
            failing.add_metric(key, float(found.error is not None))
            copied.add_metric(key, found.bytes_copied)
    yield from (verified, age, failing, copied)
    yield CounterMetricFamily("controlplane_syncs", "Weight surveys and syncs run", value=d.counters.syncs)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ControlPlaneError as exc:
        return _error(exc.http_status, str(exc))


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method in ("GET", "HEAD"):
        return await handler(request)  # type: ignore[no-any-return]
    token = request.app[DAEMON_KEY].config.token
    if not token:
        return _error(403, "changes are disabled: the daemon has no admin token (set CONTROLPLANE_TOKEN)")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return _error(401, "missing or wrong bearer token")
    return await handler(request)  # type: ignore[no-any-return]


def _parse_override(body: Any, daemon: Daemon, now: float) -> Override:
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    allowed = {"region", "action", "duration", "service", "weight", "reason"}
    if unknown := set(body) - allowed:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    regions = {r.name for r in daemon.policy.regions}
    if not isinstance(body.get("region"), str) or body["region"] not in regions:
        raise ValueError(f"region: must be one of {sorted(regions)}, got {body.get('region')!r}")
    try:
        action = OverrideAction(body.get("action", "drain"))
    except ValueError:
        raise ValueError(
            f"action: must be one of {[a.value for a in OverrideAction]}, got {body.get('action')!r}"
        ) from None
    duration = body.get("duration")
    if (
        not isinstance(duration, int | float)
        or isinstance(duration, bool)
        or not 0 < duration <= MAX_OVERRIDE_SECONDS
    ):
        raise ValueError(
            f"duration: seconds, more than 0 and at most {MAX_OVERRIDE_SECONDS}, got {duration!r}"
        )
    service = body.get("service")
    if service is not None and (
        not isinstance(service, str) or service not in {s.name for s in daemon.policy.services}
    ):
        raise ValueError(f"service: unknown service {service!r}")
    weight = body.get("weight")
    if action is OverrideAction.WEIGHT and (
        not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 1_000_000
    ):
        raise ValueError(f"weight: an integer 0..1000000 is required for action=weight, got {weight!r}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ValueError("reason: a string of at most 500 characters")
    if _CONTROL.search(reason):
        # It goes into the text log and the terminal view: no line breaks or escape sequences to forge them.
        raise ValueError("reason: control characters (line breaks, escape sequences) are not allowed")
    return Override(
        region=body["region"],
        action=action,
        until=now + float(duration),
        service=service,
        weight=weight if action is OverrideAction.WEIGHT else None,
        reason=reason,
        created_at=now,
        author="api",
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _readyz(request: web.Request) -> web.Response:
    ready = request.app[DAEMON_KEY].ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(status(request.app[DAEMON_KEY]), dumps=lambda o: json.dumps(o, default=str))


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _list_overrides(request: web.Request) -> web.Response:
    now = time.time()
    return web.json_response([o.to_json() for o in request.app[DAEMON_KEY].overrides if o.until > now])


async def _add_override(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "body must be JSON")
    try:
        override = _parse_override(body, daemon, time.time())
    except ValueError as exc:
        return _error(400, str(exc))
    await daemon.add_override(override)
    # In force either way; the header says whether a restart would still know it.
    persisted = "false" if daemon.store.health.failing else "true"
    return web.json_response(override.to_json(), status=201, headers={"X-Persisted": persisted})


async def _report_drill(request: web.Request) -> web.Response:
    """A drill runner telling the plane it drilled how the drill went (shown on /status and the page)."""
    try:
        result = DrillResult.model_validate_json(await request.read())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        return _error(400, problems)
    await request.app[DAEMON_KEY].record_drill(result)
    return web.json_response(result.model_dump(mode="json"), status=201)


async def _sync(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    daemon.request_sync()
    return web.json_response({"sync": "requested", "last": daemon.last_sync}, status=202)


async def _delete_overrides(request: web.Request) -> web.Response:
    region = request.match_info["region"]
    removed = await request.app[DAEMON_KEY].remove_overrides(region, request.query.get("service"))
    return web.json_response({"removed": removed}, status=200 if removed else 404)


def create_app(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[_errors, _auth], client_max_size=64 * 1024)
    app[DAEMON_KEY] = daemon
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlaneCollector(daemon))
    app[REGISTRY_KEY] = registry
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/overrides", _list_overrides)
    app.router.add_post("/overrides", _add_override)
    app.router.add_delete("/overrides/{region}", _delete_overrides)
    app.router.add_post("/sync", _sync)
    app.router.add_post("/drills", _report_drill)
    install_status_page(app, daemon, status)
    return app


class _HeaderDeadline(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: a connection that has not sent a whole request head
    (line and headers, up to the blank line) within HEADER_TIMEOUT of connecting is closed, so slow
    clients cannot hold the admin API's connections open. Later requests on a kept-alive connection fall
    under aiohttp's keep-alive timeout."""

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._tail = b""
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deadline = asyncio.get_running_loop().call_later(self._timeout, transport.close)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            window = self._tail + data
            if b"\r\n\r\n" in window:
                self._deadline.cancel()
                self._deadline = None
            self._tail = window[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


async def serve(daemon: Daemon, host: str, port: int, *, header_timeout: float = HEADER_TIMEOUT) -> None:
    """Serve until cancelled."""
    runner = web.AppRunner(create_app(daemon), access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT)
    await runner.setup()
    server = runner.server
    assert server is not None
    listener = await asyncio.get_running_loop().create_server(
        lambda: _HeaderDeadline(server(), header_timeout), host, port, reuse_address=True
    )
    try:
        await asyncio.Event().wait()
    finally:
        listener.close()
        await runner.cleanup()
