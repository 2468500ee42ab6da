"""Text from outside cannot forge log lines or drive a terminal; times in `status` read as times."""

from __future__ import annotations

import logging
import sys

from controlplane.cli import _when
from controlplane.logs import LOG_FORMAT, OneLineFormatter


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad\nINFO forged: line")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("controlplane", logging.INFO, __file__, 1, message, args, info)


def test_line_breaks_and_escape_sequences_in_a_message_are_escaped() -> None:
    text = OneLineFormatter(LOG_FORMAT).format(
        record("override added: %s", "upgrade\r\n2026-01-01 INFO controlplane: forged \x1b[2J")
    )
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "upgrade\\r\\n2026-01-01 INFO controlplane: forged \\x1b[2J" in text


def test_a_traceback_keeps_its_lines_each_indented() -> None:
    text = OneLineFormatter(LOG_FORMAT).format(record("crashed", exc=True))
    first, *rest = text.split("\n")
    assert first.endswith("controlplane: crashed")
    assert rest and all(line.startswith("  ") for line in rest)
    assert any("ValueError: bad" in line for line in rest)


def test_times_read_as_local_time_and_age() -> None:
    assert _when(None, 1000.0) == "never"
    assert _when(1000.0 - 90, 1000.0).endswith("(1.5m ago)")
    assert _when(1000.0 + 7200, 1000.0).endswith("(2.0h from now)")
    assert _when(995.0, 1000.0).endswith("(5s ago)")
