"""controlplane.weights.progress: the end-of-sync summary counted from the reports, and the bars."""

from __future__ import annotations

import io

from rich.console import Console

from controlplane.weights.manifest import FileEntry
from controlplane.weights.planner import DestinationPlan, Repair
from controlplane.weights.progress import Bars, Tally, summary, tally
from controlplane.weights.sync import DestinationResult, SyncReport

MiB = 1024 * 1024


def entry(path: str) -> FileEntry:
    return FileEntry(path=path, size=1, sha256="0" * 64)


def reports() -> list[SyncReport]:
    eu = DestinationPlan(
        "eu-west",
        "EU",
        "s3://eu/models",
        copy=(entry("a"), entry("b")),
        skip=(entry("d"),),
        repair=(Repair(entry("c"), "md5 differs"),),
    )
    us = DestinationPlan("us-east", "US", "s3://us/models", blocked="model llama may be stored only in EU")
    unreadable = DestinationPlan("ap-south", "IN", "s3://ap/models")
    llama = SyncReport(
        "llama",
        "v1",
        dry_run=False,
        destinations=(
            DestinationResult(eu, ("b: sha256 differs",), bytes_copied=3 * MiB, failed_files=("b",)),
            DestinationResult(us),
            DestinationResult(unreadable, ("s3://ap/models: access denied",)),
        ),
    )
    broken = SyncReport("mistral", "v2", dry_run=False, error="source unreadable")
    planned = DestinationPlan("eu-west", "EU", "s3://eu/models", copy=(entry("x"),), skip=(entry("y"),))
    dry = SyncReport("phi", "v3", dry_run=True, destinations=(DestinationResult(planned),))
    return [llama, broken, dry]


def test_the_tally_counts_what_happened_not_what_was_planned() -> None:
    assert tally(reports()) == Tally(
        bytes_copied=3 * MiB,
        copied=1,  # a; b failed; a dry run copies nothing
        skipped=2,  # d, and y in the dry run (found in place either way)
        repaired=1,
        failed=1,
        blocked=1,
        unreachable=2,  # the source of mistral, the bucket of ap-south
    )


def test_the_summary_says_bytes_files_time_and_rate() -> None:
    assert summary(reports(), elapsed=2.0) == (
        "3.0 MiB copied in 2.0 s (1.5 MiB/s); files: 1 copied, 2 skipped, 1 repaired, 1 failed; "
        "1 blocked, 2 other failures"
    )
    assert summary([], elapsed=0.0).startswith("0 B copied in 0.0 s (-)")


def test_bars_show_each_destination_files_and_bytes_kept_or_moved() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    with Bars(console, capture_stdout=False) as bars:
        bar = bars.destination("llama", "eu-west", files=3, total=300)
        bar.moved(100)
        bar.finished(200, 100, ok=True)  # half of it was there from an interrupted run
        bar.finished(50, 0, ok=False)
    drawn = console.file.getvalue()  # type: ignore[attr-defined]
    assert "llama -> eu-west  1/3 files, 1 failed" in drawn
    assert "200/300 bytes" in drawn
