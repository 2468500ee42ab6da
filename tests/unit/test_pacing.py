"""Pacing: calls to one API endpoint are spaced, across every provider instance of the process."""

from __future__ import annotations

import asyncio
import itertools
import time

from controlplane.providers.pacing import pacer


async def test_concurrent_callers_queue_at_the_interval() -> None:
    shared = pacer("test-api", "http://127.0.0.1:1", 0.05)
    started = time.monotonic()
    stamps: list[float] = []

    async def call() -> None:
        await shared.wait()
        stamps.append(time.monotonic() - started)

    await asyncio.gather(*(call() for _ in range(5)))
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.04  # generous: the point is that nobody went early


def test_instances_of_one_endpoint_share_a_pacer_and_other_endpoints_do_not() -> None:
    one = pacer("test-api", "http://127.0.0.1:2", 0.2)
    assert pacer("test-api", "http://127.0.0.1:2", 0.2) is one
    assert pacer("test-api", "http://127.0.0.1:3", 0.2) is not one
    assert pacer("other-api", "http://127.0.0.1:2", 0.2) is not one
