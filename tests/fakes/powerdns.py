"""A real PowerDNS authoritative server for the tests (chaos/pdnsproc.py starts it): sqlite3 backend, LUA
records on, DNS and API on free loopback ports.

The session fixture `powerdns` is shared: each test creates a zone of its own (`zone_for`) and deletes it.
Import it into a test module (`from tests.fakes.powerdns import powerdns_fixture  # noqa: F401`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.pdnsproc import PdnsDidNotStart, PowerDns, powerdns
from tests.conftest import require_binary

__all__ = ["PdnsDidNotStart", "PowerDns", "binary", "powerdns_fixture", "running_powerdns", "zone_for"]

_zones = itertools.count(1)


def binary() -> str:
    """pdns_server's path; skips (fails under CI=true) when Debian's pdns-server is not installed. Without
    pdns-backend-sqlite3 next to it the server does not start, and the test fails saying so."""
    return require_binary("pdns_server", "Debian's pdns-server, with pdns-backend-sqlite3")


def running_powerdns(root: Path, *, lua_records: bool = True) -> Iterator[PowerDns]:
    try:
        with powerdns(binary(), root, lua_records=lua_records) as server:
            yield server
    except PdnsDidNotStart as exc:
        pytest.fail(str(exc))


def zone_for(server: PowerDns) -> str:
    """A fresh zone on `server`, a name no other test uses."""
    zone = f"z{next(_zones)}.llm.test"
    server.create_zone(zone)
    return zone


@pytest.fixture(scope="session", name="powerdns")
def powerdns_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerDns]:
    """One pdns_server for the whole run; tests keep to zones of their own."""
    yield from running_powerdns(tmp_path_factory.mktemp("pdns"))
