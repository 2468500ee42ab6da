"""Cloud API emulators (moto_server, fake-gcs-server) run as child processes on free loopback ports, for
tests, benches and drills: started, waited for, their log kept in a file, and stopped."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from chaos.loopback import free_port

START_TIMEOUT = 30.0  # moto imports every service it emulates at start: seconds on a loaded CI machine


class EmulatorDidNotStart(RuntimeError):
    """The emulator exited or did not answer in time; the message ends with its log."""


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def emulator(
    name: str, command: Callable[[str, int], list[str]], health: str, log_path: Path
) -> Iterator[str]:
    """`command(url, port)` serving on 127.0.0.1 until the block ends; yields its URL once `url + health`
    answers. Its log goes to `log_path`: emulators log every request, and a pipe nobody reads would fill
    and stall them."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command(url, port), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(url + health):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise EmulatorDidNotStart(f"{name} did not come up on {url} (exit {process.poll()}):\n{tail}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def moto_server(binary: str, log_path: Path) -> AbstractContextManager[str]:
    """A moto_server (AWS's APIs over HTTP) from `binary`."""
    return emulator(
        "moto_server", lambda url, port: [binary, "-H", "127.0.0.1", "-p", str(port)], "/moto-api/", log_path
    )


def fake_gcs_server(binary: str, log_path: Path) -> AbstractContextManager[str]:
    """A fake-gcs-server (Cloud Storage's JSON API, generation preconditions enforced), objects in memory.
    -external-url: the resumable-upload locations it hands out must point back at its port."""
    return emulator(
        "fake-gcs-server",
        lambda url, port: [
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
        "/storage/v1/b",
        log_path,
    )


@contextmanager
def moto_on_path() -> Iterator[str]:
    """`moto_server` from PATH with its log in a scratch directory, for benches and drills."""
    binary = shutil.which("moto_server")
    if binary is None:
        raise EmulatorDidNotStart("moto_server not found: pip install 'moto[server]'")
    with tempfile.TemporaryDirectory() as scratch, moto_server(binary, Path(scratch) / "moto.log") as url:
        yield url
