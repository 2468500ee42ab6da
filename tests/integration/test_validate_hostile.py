"""`controlplane validate` on files written to hurt: a real process that answers, exits 1, and never
prints a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.builders import DEMO

ROOT = Path(__file__).resolve().parents[2]
DEMO_TEXT = DEMO.read_text(encoding="utf-8")
# Generous: each file is refused in well under a second; the old loader never returned on a FIFO.
TIMEOUT = 60


def laughs() -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def test_validate_refuses_hostile_files_promptly_with_positions(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(laughs())
    date = tmp_path / "date.yaml"
    date.write_text(DEMO_TEXT.replace("capacity: 60", "capacity: 2001-02-30", 1))
    huge = tmp_path / "huge.yaml"
    huge.write_text(DEMO_TEXT.replace("zone: llm.internal", "zone: " + "z" * (1 << 20), 1))

    done = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "validate", *map(str, (fifo, zero, bomb, date, huge))],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert all(re.match(r"^[^:]+:\d+:\d+: \S", line) for line in lines), lines
    assert lines[:4] == [
        f"{fifo}:1:1: cannot read policy: it is a FIFO, not a regular file",
        f"{zero}:1:1: cannot read policy: it is a character device, not a regular file",
        f"{bomb}:6:10: invalid YAML: too many alias expansions (more than 100,000 values)",
        f"{date}:20:15: invalid YAML: '2001-02-30' is not a valid !!timestamp: day is out of range for month",
    ]
    assert lines[4].startswith(f"{huge}:46:5: services.0.dns_name: 'chat.llm.internal' is outside")
    assert lines[4].endswith("zzz… (1,048,578 characters)")
    assert len(lines) == 5
