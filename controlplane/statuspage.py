"""The status page of the admin API: its static assets, a 15-minute history of weights and health kept in the
process, and the JSON the page polls (the daemon's /status plus that history and the audit log's tail)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from controlplane.daemon import Daemon

HISTORY_SECONDS = 15 * 60
SAMPLE_EVERY = 1.0  # seconds between two points of the timeline
AUDIT_ENTRIES = 30  # the latest entries of the audit log the page shows
AUDIT_TAIL_BYTES = 512 * 1024  # read at most this much of the log's end: a plan_changed line can be large
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSETS: dict[str, tuple[str, bytes]] = {
    name: (kind, (files("controlplane") / "static" / name).read_bytes())
    for name, kind in (
        ("index.html", "text/html"),
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
    )
}
Status = Callable[["Daemon"], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    health: dict[str, str]  # region -> state
    weights: dict[str, dict[str, int]]  # "service/group" -> region -> weight


class History:
    """What the weights and health were over the last `keep` seconds, looked at once every `every` seconds.

    Only changes are kept (a sample equal to the one before is dropped): a steady plane over thousands of
    groups costs one sample, not 900. Bounded both ways: at most `keep / every` samples, none older than the
    window needs (the latest one before it stays, as the state the window starts in).
    """

    def __init__(self, every: float = SAMPLE_EVERY, keep: float = HISTORY_SECONDS) -> None:
        self.every = every
        self.keep = keep
        self.samples: deque[Sample] = deque(maxlen=int(keep / every))
        self._looked = float("-inf")  # when the last sample was taken, kept or not

    def add(self, sample: Sample) -> None:
        if sample.at - self._looked < self.every:
            return
        self._looked = sample.at
        last = self.samples[-1] if self.samples else None
        if last is not None and (last.health, last.weights) == (sample.health, sample.weights):
            return
        self.samples.append(sample)
        while len(self.samples) > 1 and self.samples[1].at <= sample.at - self.keep:
            self.samples.popleft()

    def to_json(self, now: float) -> dict[str, Any]:
        start = now - self.keep
        samples = list(self.samples)
        # The latest sample at or before the window's start is the state it starts in; older ones are out.
        first = max((i for i, s in enumerate(samples) if s.at <= start), default=0)
        return {
            "every": self.every,
            "start": max(start, samples[0].at) if samples else now,
            "samples": [
                {"at": max(s.at, start), "health": s.health, "weights": s.weights} for s in samples[first:]
            ],
        }


def snapshot(daemon: Daemon, at: float) -> Sample:
    """What the last decision saw and made: read from the daemon as it is, at no cost to the event loop (the
    health view it judged off the loop, and the plan), so sampling every second costs nothing that grows."""
    view = daemon.last_view
    return Sample(
        at=round(at, 3),
        health={name: h.state.value for name, h in view.regions.items()} if view else {},
        weights={f"{g.service}/{g.group}": g.as_dict() for g in daemon.plan or ()},
    )


def _changes(entry: dict[str, Any]) -> list[str]:
    """What a plan_changed entry changed, each weight with its reason."""
    before = entry.get("before") or {}
    reasons = {
        (g["service"], g["group"], w["region"]): w.get("reason", "")
        for g in entry.get("groups") or ()
        for w in g.get("weights") or ()
    }
    out: list[str] = []
    for service, groups in (entry.get("after") or {}).items():
        for group, weights in groups.items():
            old = (before.get(service) or {}).get(group) or {}
            for region, weight in weights.items():
                if old.get(region) != weight:
                    why = reasons.get((service, group, region), "")
                    out.append(f"{service}/{group} {region}: {old.get(region, '-')} -> {weight} ({why})")
    return out


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """An audit entry as the page lists it: when, what, and why in a few lines of plain text."""
    event = str(entry.get("event", "?"))
    details: list[str]
    if event == "plan_changed":
        details = _changes(entry)
    elif event.startswith("override_"):
        found = entry.get("override") or {}
        overrides = entry.get("overrides") or ([found] if found else [])
        details = [
            f"{o.get('action')} {o.get('region')}: {o.get('reason') or 'no reason given'}" for o in overrides
        ] or [f"{entry.get('region')}: {entry.get('count')} removed"]
    elif event == "applied":
        details = [
            f"{p.get('provider')}: {p.get('changes')} change(s) "
            + ("applied" if p.get("applied") else f"not applied: {p.get('error')}")
            for p in entry.get("providers") or ()
        ]
    else:
        details = [
            f"{key}: {value if isinstance(value, str) else json.dumps(value, default=str)[:300]}"
            for key, value in entry.items()
            if key not in ("ts", "event")
        ]
    return {"ts": entry.get("ts"), "event": event, "details": details[:20]}


def read_tail(path: Path, entries: int = AUDIT_ENTRIES, cap: int = AUDIT_TAIL_BYTES) -> list[dict[str, Any]]:
    """The latest whole lines of a JSON-lines file, newest first; blocking: run it in a thread."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - cap))
            data = f.read(cap)
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if size > cap:
        lines = lines[1:]  # the first is cut
    found: list[dict[str, Any]] = []
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                found.append(summarize(entry))
        if len(found) == entries:
            break
    return found


def page_data(status: dict[str, Any], history: History, audit: Iterable[dict[str, Any]]) -> dict[str, Any]:
    now = time.time()
    return {**status, "now": now, "history": history.to_json(now), "audit": list(audit)}


HISTORY_KEY: web.AppKey[History] = web.AppKey("statuspage_history", History)


def install(app: web.Application, daemon: Daemon, status: Status) -> None:
    """The page at /, its assets under /ui/, its JSON at /ui/data, and the task that samples the history."""
    history = History()
    app[HISTORY_KEY] = history

    async def sampler(app: web.Application) -> AsyncIterator[None]:
        async def run() -> None:
            while True:
                if daemon.last_view is not None:  # before the first decision there is nothing to draw
                    history.add(snapshot(daemon, time.time()))
                await asyncio.sleep(history.every)

        task = asyncio.create_task(run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def index(request: web.Request) -> web.Response:
        return _asset("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html" or name not in ASSETS:
            raise web.HTTPNotFound()
        return _asset(name)

    async def data(request: web.Request) -> web.Response:
        current = status(daemon)
        audit = await asyncio.to_thread(read_tail, daemon.audit.path)
        # Up to 900 samples of every group's weights: encoded off the event loop (status() built fresh dicts).
        body = await asyncio.to_thread(_encode, page_data(current, history, audit))
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    app.cleanup_ctx.append(sampler)
    app.router.add_get("/", index)
    app.router.add_get("/ui/data", data)
    app.router.add_get("/ui/{name}", asset)


def _encode(data: dict[str, Any]) -> str:
    return json.dumps(data, default=str)


def _asset(name: str) -> web.Response:
    kind, body = ASSETS[name]
    return web.Response(
        body=body,
        content_type=kind,
        charset="utf-8",
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
