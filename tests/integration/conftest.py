"""Fixtures shared by the integration tests: simulated regions on loopback (ports the OS picks)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chaos.simregion import SimFleet, SimRegion
from tests.integration.daemon_helpers import sim_fleet

SIM_HOST = "127.0.0.21"


@pytest.fixture
async def sim() -> AsyncIterator[SimRegion]:
    async with SimRegion("sim", SIM_HOST, port=0, control_port=0, ttft=0.02, token_interval=0.005) as region:
        yield region


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    """The four regions of daemon_helpers.REGIONS (US and EU), healthy until a test breaks one."""
    async with sim_fleet() as fleet:
        yield fleet
