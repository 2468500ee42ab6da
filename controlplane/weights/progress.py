"""A sync's progress as it happens, and its summary at the end.

The copier reports each destination's bytes and files to a `TransferProgress`, which `sync_model` asks a
`SyncProgress` for as the destination starts: `QUIET` reports nowhere, `Bars` draws rich progress bars
(the CLI's, when stderr is a terminal). `summary` words the end, from the reports alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from controlplane.weights.sync import SyncReport


class TransferProgress(Protocol):
    """One destination's transfers."""

    def moved(self, nbytes: int) -> None:
        """`nbytes` more landed in the destination, moved by this run."""

    def finished(self, size: int, moved: int, *, ok: bool) -> None:
        """A file of `size` bytes is done (`ok`) or failed; `moved` of them were moved by this run, the
        rest were already there from an interrupted run (ok) or never got there (failed)."""


class SyncProgress(Protocol):
    def destination(self, model: str, region: str, files: int, total: int) -> TransferProgress:
        """The progress of `files` transfers of `total` bytes into `region`'s bucket, starting now."""


class _Quiet:
    def moved(self, nbytes: int) -> None:
        pass

    def finished(self, size: int, moved: int, *, ok: bool) -> None:
        pass

    def destination(self, model: str, region: str, files: int, total: int) -> TransferProgress:
        return self


QUIET = _Quiet()


class Bars:
    """A bar per model and region (bytes, files, rate), drawn on `console` while in use (`with Bars(...)`)."""

    def __init__(self, console: Console, *, capture_stdout: bool) -> None:
        """`capture_stdout`: lines printed meanwhile go through `console`, above the bars (for a stdout on
        the same terminal; one piped elsewhere is left alone)."""
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            redirect_stdout=capture_stdout,
            redirect_stderr=False,
        )

    def __enter__(self) -> Bars:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._progress.stop()

    def destination(self, model: str, region: str, files: int, total: int) -> TransferProgress:
        return _Bar(self._progress, f"{model} -> {region}", files, total)


class _Bar:
    def __init__(self, progress: Progress, label: str, files: int, total: int) -> None:
        self._progress = progress
        self._label = label
        self._files = files
        self._done = 0
        self._failed = 0
        self._task: TaskID = progress.add_task(self._description(), total=total)

    def _description(self) -> str:
        failed = f", {self._failed} failed" if self._failed else ""
        return f"{self._label}  {self._done}/{self._files} files{failed}"

    def moved(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def finished(self, size: int, moved: int, *, ok: bool) -> None:
        if ok:
            self._done += 1
            # Bytes an interrupted run left in place count toward the bar, not toward the rate's bytes.
            self._progress.advance(self._task, size - moved)
        else:
            self._failed += 1
        self._progress.update(self._task, description=self._description())


@dataclass(frozen=True, slots=True)
class Tally:
    bytes_copied: int = 0
    copied: int = 0  # files absent from a destination, now there and verified
    skipped: int = 0  # files found in place and verified
    repaired: int = 0  # files found wrong, now rewritten and verified
    failed: int = 0  # files whose copy failed
    blocked: int = 0  # destinations the model may not be stored in
    unreachable: int = 0  # sources or destinations that could not be read or promoted


def tally(reports: Iterable[SyncReport]) -> Tally:
    counts = dict.fromkeys(
        ("bytes_copied", "copied", "skipped", "repaired", "failed", "blocked", "unreachable"), 0
    )
    for report in reports:
        counts["unreachable"] += report.error is not None
        for d in report.destinations:
            plan = d.plan
            if plan.blocked is not None:
                counts["blocked"] += 1
                continue
            failed = set(d.failed_files)
            counts["bytes_copied"] += d.bytes_copied
            counts["skipped"] += len(plan.skip)
            counts["failed"] += len(failed)
            counts["unreachable"] += bool(d.failures) and not failed
            if not report.dry_run:
                counts["copied"] += sum(e.path not in failed for e in plan.copy)
                counts["repaired"] += sum(r.entry.path not in failed for r in plan.repair)
    return Tally(**counts)


def summary(reports: Iterable[SyncReport], elapsed: float) -> str:
    """One line: bytes copied, files copied / skipped / repaired / failed, copies blocked, time and rate."""
    t = tally(reports)
    rate = f"{_bytes(t.bytes_copied / elapsed)}/s" if elapsed > 0 else "-"
    return (
        f"{_bytes(t.bytes_copied)} copied in {elapsed:.1f} s ({rate}); files: {t.copied} copied, "
        f"{t.skipped} skipped, {t.repaired} repaired, {t.failed} failed; {t.blocked} blocked, "
        f"{t.unreachable} other failures"
    )


def _bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n /= 1024
        step += 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"
