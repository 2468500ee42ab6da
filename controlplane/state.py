"""Durable state: the last plan, overrides and what each bucket was last seen to hold (survive restarts) and the append-only audit log, both written
best-effort off the reconcile path: a full, read-only or hung disk raises an alert, never stops routing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from controlplane.overrides import Override, OverrideAction
from controlplane.plan import GroupMode, RoutingPlan
from controlplane.weights.artifacts import Artifact, ArtifactView

log = logging.getLogger(__name__)

MAX_OVERRIDES = 1000  # more than any team keeps by hand; the API refuses the next one
MAX_ARTIFACTS = 100_000  # (region, model) pairs: far beyond any fleet
MAX_STATE_BYTES = 64 * 1024 * 1024  # a state file over this is not ours: refused, kept aside
MAX_AUDIT_LINE = 1024 * 1024  # one decision of 10,000 services fits; beyond, the line says it was cut
AUDIT_ROTATE_BYTES = 64 * 1024 * 1024
AUDIT_KEEP = 5  # audit.jsonl.1 .. .5
MAX_PENDING_LINES = 10_000  # audit lines waiting for a slow disk; older ones are kept, newer dropped
WAIT_FOR_DISK = (
    0.5  # seconds a caller waits for its write while the disk keeps up; never once it falls behind
)

T = TypeVar("T")


# ---------------------------------------------------------------- write health


@dataclass
class WriteHealth:
    """How writes to one file are going: what /status, /metrics and the log report."""

    failures: int = 0
    dropped: int = 0
    last_error: str | None = None
    failing_since: float | None = None
    last_ok: float | None = None

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def ok(self, name: str) -> None:
        if self.failing_since is not None:
            log.warning(
                "%s: writes work again after failing for %.0fs", name, time.time() - self.failing_since
            )
        self.failing_since = None
        self.last_error = None
        self.last_ok = time.time()

    def failed(self, name: str, exc: OSError) -> None:
        self.failures += 1
        error = f"{type(exc).__name__}: {exc.strerror or exc}"
        # Logged when writes start failing or the reason changes, not once per write: a full disk must not
        # also fill the log.
        if self.failing_since is None or error != self.last_error:
            log.error("%s: write failed, routing continues without it: %s", name, error)
        self.failing_since = self.failing_since or time.time()
        self.last_error = error

    def to_json(self) -> dict[str, Any]:
        return {
            "failing": self.failing,
            "failures": self.failures,
            "dropped": self.dropped,
            "last_error": self.last_error,
            "failing_since": self.failing_since,
            "last_ok": self.last_ok,
        }


class _Spooler(Generic[T]):
    """One background task hands queued items to a blocking writer in a worker thread, in order.

    Callers never see a disk error, and wait for their own item only while the disk keeps up: once a write
    is in flight for longer than `wait`, later callers return at once and their items queue (bounded).
    `latest_only` keeps just the newest pending item (a snapshot that replaces the file anyway).
    """

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], None],
        health: WriteHealth,
        *,
        latest_only: bool = False,
        limit: int = MAX_PENDING_LINES,
        wait: float = WAIT_FOR_DISK,
    ) -> None:
        self._name = name
        self._write = write
        self._health = health
        self._latest_only = latest_only
        self._pending: deque[T] = deque()
        self._limit = limit
        self._wait = wait
        self._submitted = 0
        self._written = 0
        self._busy_since: float | None = None
        self._wake: asyncio.Event | None = None
        self._done: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        if self._latest_only:
            self._pending.clear()
        elif len(self._pending) >= self._limit:
            self._health.dropped += 1
            return
        self._pending.append(item)
        self._submitted += 1
        self._ensure_task()
        assert self._wake is not None
        self._wake.set()
        stuck = self._busy_since is not None and time.monotonic() - self._busy_since > self._wait
        if not stuck:
            await self.flush(self._wait, upto=self._submitted)

    async def flush(self, within: float, upto: int | None = None) -> bool:
        """Wait until everything submitted so far (or item number `upto`) is written; False on timeout."""
        target = self._submitted if upto is None else upto
        if self._written >= target or self._done is None:
            return True
        done = self._done
        try:
            async with asyncio.timeout(within), done:
                await done.wait_for(lambda: self._written >= target)
        except TimeoutError:
            return False
        return True

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._done = asyncio.Condition()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"write {self._name}")

    async def _run(self) -> None:
        assert self._wake is not None and self._done is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = list(self._pending)
                self._pending.clear()
                taken = self._submitted  # everything before is in this batch, written, or superseded
                self._busy_since = time.monotonic()
                try:
                    # A cancelled caller cannot stop the thread: wait it out, so two writes never overlap.
                    job = asyncio.ensure_future(asyncio.to_thread(self._write, batch))
                    try:
                        await asyncio.shield(job)
                    except asyncio.CancelledError:
                        with contextlib.suppress(Exception):
                            await job
                        raise
                    self._health.ok(self._name)
                except OSError as exc:
                    self._health.failed(self._name, exc)
                finally:
                    self._busy_since = None
                # Written or given up on: either way the callers waiting for these items may go on.
                self._written = taken
                async with self._done:
                    self._done.notify_all()

    async def close(self, within: float = 2.0) -> None:
        await self.flush(within)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


# ---------------------------------------------------------------- state.json


@dataclass(frozen=True, slots=True)
class PersistedState:
    plan: RoutingPlan | None
    overrides: tuple[Override, ...]
    problems: tuple[str, ...] = ()  # what was dropped on load, and why
    # What the buckets held at the last survey: a restart while a bucket API is down keeps routing to the
    # weights that had landed, as the running daemon would, instead of waiting for a survey that cannot answer.
    artifacts: ArtifactView = field(default_factory=ArtifactView)


Finite = Annotated[float, Field(allow_inf_nan=False)]
Text = Annotated[str, Field(max_length=500)]
Label = Annotated[str, Field(min_length=1, max_length=253)]


class _Stored(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _StoredOverride(_Stored):
    region: Label
    action: OverrideAction
    until: Finite
    service: Label | None = None
    weight: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    reason: Text = ""
    created_at: Finite = 0.0
    author: Text = ""

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, value: object) -> object:
        return OverrideAction(value) if isinstance(value, str) else value


class _StoredWeight(_Stored):
    region: Label
    weight: int
    reason: Text = ""


class _StoredGroup(_Stored):
    service: Label
    group: Label
    mode: GroupMode
    weights: list[_StoredWeight] = Field(max_length=10_000)
    since: Finite | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: object) -> object:
        return GroupMode(value) if isinstance(value, str) else value


class _StoredArtifact(_Stored):
    region: Label
    model: Label
    version: Label
    verified: bool = False
    blocked: Text | None = None
    surveyed_at: Finite | None = None
    synced_at: Finite | None = None
    error: Text | None = None
    bytes_copied: Annotated[int, Field(ge=0)] = 0
    current: Label | None = None


def _clamped(weights: Sequence[_StoredWeight]) -> list[dict[str, Any]]:
    """Weights from the past are percentages: each held to 0..100, then brought back to a sum of 100
    (or all 0), so the engine never damps from an absurd start."""
    from controlplane.engine import largest_remainder  # the engine's rounding, not a second one

    held = {w.region: float(min(100, max(0, w.weight))) for w in weights}
    total = sum(held.values())
    fixed = largest_remainder({r: 100 * v / total for r, v in held.items()}) if total else held
    return [{"region": w.region, "weight": int(fixed[w.region]), "reason": w.reason} for w in weights]


def _problem(where: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"{where}{'.' + loc if loc else ''}: {first['msg']}"


def parse_state(data: object) -> PersistedState:
    """Keep what validates, field by field: one bad override or group costs only itself."""
    if not isinstance(data, dict):
        return PersistedState(None, (), ("state: not a JSON object",))
    problems: list[str] = []
    overrides: list[Override] = []
    raw_overrides = data.get("overrides") or []
    if not isinstance(raw_overrides, list):
        problems.append("overrides: not a list")
        raw_overrides = []
    for i, raw in enumerate(raw_overrides[:MAX_OVERRIDES]):
        try:
            stored = _StoredOverride.model_validate(raw)
        except (ValidationError, ValueError) as exc:
            problems.append(_problem(f"overrides.{i}", exc) if isinstance(exc, ValidationError) else str(exc))
            continue
        overrides.append(Override(**stored.model_dump()))
    if len(raw_overrides) > MAX_OVERRIDES:
        problems.append(f"overrides: {len(raw_overrides) - MAX_OVERRIDES} beyond {MAX_OVERRIDES} dropped")
    plan = None
    raw_plan = data.get("plan")
    if isinstance(raw_plan, dict):
        generated_at = raw_plan.get("generated_at")
        raw_groups = raw_plan.get("groups")
        if not isinstance(generated_at, int | float) or not math.isfinite(generated_at):
            problems.append("plan.generated_at: not a finite number; plan dropped")
        elif not isinstance(raw_groups, list):
            problems.append("plan.groups: not a list; plan dropped")
        else:
            groups: list[dict[str, Any]] = []
            for i, raw in enumerate(raw_groups):
                try:
                    stored_group = _StoredGroup.model_validate(raw)
                except ValidationError as exc:
                    problems.append(_problem(f"plan.groups.{i}", exc))
                    continue
                if any(not 0 <= w.weight <= 100 for w in stored_group.weights):
                    problems.append(f"plan.groups.{i}: weights outside 0..100 clamped")
                group = stored_group.model_dump(exclude_none=True)
                group["weights"] = _clamped(stored_group.weights)
                groups.append(group)
            plan = RoutingPlan.from_json({"generated_at": float(generated_at), "groups": groups})
    elif raw_plan is not None:
        problems.append("plan: not an object; dropped")
    artifacts = _artifacts(data.get("artifacts"), problems)
    return PersistedState(plan, tuple(overrides), tuple(problems), artifacts)


def _artifacts(raw: object, problems: list[str]) -> ArtifactView:
    if raw is None:
        return ArtifactView()
    if not isinstance(raw, list):
        problems.append("artifacts: not a list")
        return ArtifactView()
    entries: dict[tuple[str, str], Artifact] = {}
    for i, item in enumerate(raw[:MAX_ARTIFACTS]):
        try:
            stored = _StoredArtifact.model_validate(item)
        except ValidationError as exc:
            problems.append(_problem(f"artifacts.{i}", exc))
            continue
        entries[(stored.region, stored.model)] = Artifact(**stored.model_dump())
    if len(raw) > MAX_ARTIFACTS:
        problems.append(f"artifacts: {len(raw) - MAX_ARTIFACTS} beyond {MAX_ARTIFACTS} dropped")
    return ArtifactView(entries)


class StateStore:
    """state.json, replaced atomically (write, fsync, rename) so a crash leaves the old or the new file.

    A file that does not fully validate is copied aside (state.json.bad-TIMESTAMP) before anything
    overwrites it, and what did validate is kept.
    """

    def __init__(self, directory: Path, *, wait: float = WAIT_FOR_DISK) -> None:
        self.path = directory / "state.json"
        self.health = WriteHealth()
        self._spool = _Spooler[str]("state.json", self._write, self.health, latest_only=True, wait=wait)

    def load(self) -> PersistedState:
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return PersistedState(None, ())
        except OSError as exc:
            log.error("cannot read state file %s, starting without it: %s", self.path, exc)
            return PersistedState(None, (), (f"state: unreadable: {exc}",))
        try:
            if len(raw) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            state = parse_state(json.loads(raw))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            state = PersistedState(None, (), (f"state: not valid JSON: {str(exc)[:200]}",))
        if state.problems:
            kept = self._keep_aside()
            for problem in state.problems:
                log.error("state file %s: %s", self.path, problem)
            log.error("state file %s did not fully validate; a copy is kept at %s", self.path, kept)
        return state

    def _keep_aside(self) -> Path | None:
        aside = self.path.with_name(f"{self.path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.link(self.path, aside)  # the next save renames a new file over state.json: this copy stays
        except OSError:
            return None
        return aside

    def _write(self, payloads: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                fh.write(payloads[-1])
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    async def save(
        self, plan: RoutingPlan | None, overrides: tuple[Override, ...], artifacts: ArtifactView
    ) -> None:
        """Best-effort and in call order: the newest snapshot is the one that lands."""
        payload = json.dumps(
            {
                "plan": plan.to_json() if plan else None,
                "overrides": [o.to_json() for o in overrides],
                "artifacts": [dataclasses.asdict(a) for a in artifacts.entries.values()],
            },
            sort_keys=True,
        )
        await self._spool.submit(payload)

    async def close(self, within: float = 2.0) -> None:
        await self._spool.close(within)


# ---------------------------------------------------------------- audit.jsonl


class AuditLog:
    """One JSON object per line: what changed, why, and what the probes saw.

    Each line is one write() to a file opened O_APPEND; a write that fails part-way is cut back off, so a
    line is whole or absent. The file is rotated by size (audit.jsonl.1 ... .N).
    """

    def __init__(
        self,
        path: Path,
        *,
        rotate_bytes: int = AUDIT_ROTATE_BYTES,
        keep: int = AUDIT_KEEP,
        wait: float = WAIT_FOR_DISK,
        mirror: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path = path
        self.health = WriteHealth()
        self._mirror = mirror  # also handed every entry (a coordinated leader keeps the latest in etcd)
        self._rotate_bytes = rotate_bytes
        self._keep = keep
        self._spool = _Spooler[dict[str, Any]]("audit.jsonl", self._append, self.health, wait=wait)

    def _rotate(self) -> None:
        for n in range(self._keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def _append(self, entries: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for line in map(self.encode, entries):
            with contextlib.suppress(FileNotFoundError):
                if self.path.stat().st_size + len(line) > self._rotate_bytes:
                    self._rotate()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                start = os.fstat(fd).st_size
                if start and os.pread(fd, 1, start - 1) != b"\n":
                    line = b"\n" + line  # a line torn by a crash before us stays alone on its line
                try:
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)

    @staticmethod
    def encode(entry: dict[str, Any]) -> bytes:
        line = json.dumps(entry, sort_keys=True, default=str)
        if len(line) >= MAX_AUDIT_LINE:
            line = json.dumps({"ts": entry["ts"], "event": entry["event"], "cut": True, "bytes": len(line)})
        return line.encode() + b"\n"

    async def write(self, event: str, **fields: Any) -> None:
        """Best-effort: waits for the line while the disk keeps up, never raises, never blocks routing.

        The fields must not be changed afterwards: they are encoded in the writer's thread, so that a
        decision over thousands of services is not serialised on the event loop.
        """
        entry = {"ts": round(time.time(), 3), "event": event, **fields}
        if self._mirror is not None:
            self._mirror(entry)
        await self._spool.submit(entry)

    async def close(self, within: float = 2.0) -> None:
        await self._spool.close(within)
