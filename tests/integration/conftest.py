"""Fixtures shared by the integration tests: simulated regions on loopback (ports the OS picks) and HTTP
client sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from chaos.simregion import SimFleet, SimRegion
from probes.http import make_session
from tests.fakes.gcs import gcs_fixture, gcs_server_fixture  # noqa: F401 - fixtures
from tests.fakes.moto import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_fixture,
    moto_server_fixture,
    on_moto_fixture,
)
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


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client, as a user or an operator's tool would be; a request that hangs fails the test after
    5 s instead of aiohttp's default 5 minutes."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
async def probe_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The probes' own session (probes.http.make_session): no decompression, identity asked for, no
    timers of aiohttp's, as the scheduler hands the probes."""
    session = make_session()
    try:
        yield session
    finally:
        await session.close()
