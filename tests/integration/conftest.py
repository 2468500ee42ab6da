"""Fixtures shared by the integration tests: one simulated region on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chaos.simregion import SimRegion

SIM_HOST = "127.0.0.21"


@pytest.fixture
async def sim() -> AsyncIterator[SimRegion]:
    async with SimRegion("sim", SIM_HOST, port=0, control_port=0, ttft=0.02, token_interval=0.005) as region:
        yield region
