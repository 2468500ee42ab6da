"""Durable state: the last plan and overrides (survive restarts) and the append-only audit log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.overrides import Override
from controlplane.plan import RoutingPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PersistedState:
    plan: RoutingPlan | None
    overrides: tuple[Override, ...]


class StateStore:
    """state.json, replaced atomically (write, fsync, rename) so a crash leaves the old or the new file."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "state.json"
        self._lock = asyncio.Lock()

    def load(self) -> PersistedState:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            plan = RoutingPlan.from_json(data["plan"]) if data.get("plan") else None
            overrides = tuple(Override.from_json(o) for o in data.get("overrides", []))
            return PersistedState(plan, overrides)
        except FileNotFoundError:
            return PersistedState(None, ())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # A corrupt state file must not keep the daemon down; the audit log still has the history.
            log.error("ignoring unreadable state file %s: %s", self.path, exc)
            return PersistedState(None, ())

    def _write(self, payload: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    async def save(self, plan: RoutingPlan | None, overrides: tuple[Override, ...]) -> None:
        payload = json.dumps(
            {"plan": plan.to_json() if plan else None, "overrides": [o.to_json() for o in overrides]},
            sort_keys=True,
        )
        # One write at a time, in call order: concurrent writers would share the temporary file (one
        # renames it from under the other) and an older payload could land last. A cancelled caller
        # cannot stop its thread, so the lock is held until that write has finished (shutdown saves last).
        async with self._lock:
            write = asyncio.ensure_future(asyncio.to_thread(self._write, payload))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await write
                raise


class AuditLog:
    """One JSON object per line: what changed, why, and what the probes saw."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)

    async def write(self, event: str, **fields: Any) -> None:
        line = (
            json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, sort_keys=True, default=str)
            + "\n"
        )
        async with self._lock:  # keep lines whole and in order
            await asyncio.to_thread(self._append, line)
