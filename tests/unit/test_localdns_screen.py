"""What the embedded DNS server refuses from the raw header alone, and how often it logs a failure."""

from __future__ import annotations

import struct

import dns.message
import pytest

from controlplane.providers.localdns import MAX_QUERY_SIZE, _screen, _Throttle

QUERY = dns.message.make_query("chat.llm.internal", "A", use_edns=0).to_wire()  # one question, one OPT


def with_header(flags: int = 0x0100, counts: tuple[int, int, int, int] = (1, 0, 0, 1)) -> bytes:
    return QUERY[:2] + struct.pack("!5H", flags, *counts) + QUERY[12:]


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (QUERY, None),
        (with_header(counts=(1, 0, 0, 0)), None),
        (QUERY.ljust(MAX_QUERY_SIZE, b"\0"), None),  # junk after a query is dnspython's to refuse
        (QUERY[:11], "short"),
        (with_header(flags=0x8100), "response"),
        (with_header(flags=0x8100) + b"\0" * MAX_QUERY_SIZE, "response"),
        (QUERY.ljust(MAX_QUERY_SIZE + 1, b"\0"), "oversize"),
        (with_header(counts=(0, 0, 0, 1)), "sections"),
        (with_header(counts=(2, 0, 0, 1)), "sections"),
        (with_header(counts=(1, 1, 0, 1)), "sections"),
        (with_header(counts=(1, 0, 1, 1)), "sections"),
        (with_header(counts=(1, 0, 0, 2)), "sections"),
    ],
    # Named, since a packet as its id would change with the random query id on every run.
    ids=[
        "query",
        "no-opt",
        "padded-to-the-limit",
        "short",
        "response",
        "oversize-response",
        "oversize",
        "no-question",
        "two-questions",
        "an-answer",
        "an-authority",
        "two-additional",
    ],
)
def test_packets_are_screened_by_size_and_header(packet: bytes, reason: str | None) -> None:
    assert _screen(packet) == reason


def test_a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = _Throttle(60.0, clock=lambda: now[0])
    assert throttle.due() == 0
    assert [throttle.due() for _ in range(5)] == [None] * 5
    now[0] += 59.9
    assert throttle.due() is None
    now[0] += 0.1
    assert throttle.due() == 6  # the six held back since the last line
    assert throttle.due() is None
