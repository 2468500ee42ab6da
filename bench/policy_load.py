"""Policy loading: time to validate real policies and to refuse hostile ones, with peak memory.

Run from the project root: python -m bench.policy_load. Prints figures; asserts nothing.
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from controlplane.policy import PolicyError, load_policy
from controlplane.yamldoc import MAX_ALIAS_NODES, MAX_DOCUMENT_BYTES, MAX_NODES

ROOT = Path(__file__).resolve().parents[1]
REGIONS = 10_000


def many_regions(count: int) -> str:
    """A valid policy written the way policies/demo.yaml is, with `count` regions in one service."""
    lines = ["version: 1", "regions:"]
    for i in range(count):
        lines += [
            f"  - name: region-{i:05d}",
            f"    endpoint: http://10.{i // 256 % 256}.{i % 256}.1:8000",
            f"    jurisdiction: {'US' if i % 2 else 'EU'}",
            "    capacity: 100",
            f"    priority: {i % 1000}",
        ]
    lines += [
        "client_groups:",
        "  - name: global",
        "    allowed_jurisdictions: [US, EU]",
        "default_client_group: global",
        "services:",
        "  - name: chat",
        "    dns_name: chat.llm.internal",
        "    regions:",
        *(f"      - region-{i:05d}" for i in range(count)),
    ]
    return "\n".join(lines) + "\n"


def laughs() -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def measure(name: str, path: Path, runs: int) -> None:
    def once() -> str:
        try:
            load_policy(path)
        except PolicyError as exc:
            return f"refused: {str(exc.problems[0]).removeprefix(str(path))[:70]}"
        return "valid"

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        outcome = once()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    once()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    size = path.stat().st_size
    print(
        f"{name:<34} {size / 1e6:7.2f} MB  {min(times) * 1000:9.1f} ms  peak {peak / 1e6:6.1f} MB  {outcome}"
    )


def main() -> None:
    print(
        f"caps: {MAX_DOCUMENT_BYTES:,} bytes, {MAX_NODES:,} values, "
        f"{MAX_ALIAS_NODES:,} values built through aliases (best of N runs; peak by tracemalloc)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files: list[tuple[str, Callable[[Path], None], int]] = [
            ("policies/demo.yaml", lambda p: p.write_text((ROOT / "policies" / "demo.yaml").read_text()), 20),
            (f"{REGIONS:,} regions", lambda p: p.write_text(many_regions(REGIONS)), 3),
            ("billion laughs (9 x 9 aliases)", lambda p: p.write_text(laughs()), 5),
            ("one byte over the size cap", lambda p: p.write_text("#" * MAX_DOCUMENT_BYTES + "\n"), 5),
            (
                "values past the node cap",
                lambda p: p.write_text("x: [" + "0, " * (MAX_NODES + 1) + "]\n"),
                1,
            ),
            (
                "a string at the size cap",
                lambda p: p.write_text("x: " + "a" * (MAX_DOCUMENT_BYTES - 4) + "\n"),
                3,
            ),
        ]
        for name, write, runs in files:
            path = Path(tmp) / "policy.yaml"
            write(path)
            measure(name, path, runs)


if __name__ == "__main__":
    main()
