"""A real moto_server (AWS's APIs emulated over HTTP) on a free loopback port, for tests, benches and drills."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chaos.loopback import free_port

START_TIMEOUT = 30.0  # moto imports every service it emulates at start: seconds on a loaded CI machine


class MotoDidNotStart(RuntimeError):
    """moto_server exited or did not answer in time; the message ends with its log."""


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1.0) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def moto_server(binary: str, log_path: Path) -> Iterator[str]:
    """`binary` serving on 127.0.0.1 until the block ends; yields its URL. Its log goes to `log_path`:
    moto logs every request, and a pipe nobody reads would fill and stall it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise MotoDidNotStart(
                    f"moto_server did not come up on {url} (exit {process.poll()}):\n{tail}"
                )
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def moto_on_path() -> Iterator[str]:
    """`moto_server` from PATH with its log in a scratch directory, for benches and drills."""
    binary = shutil.which("moto_server")
    if binary is None:
        raise MotoDidNotStart("moto_server not found: pip install 'moto[server]'")
    with tempfile.TemporaryDirectory() as scratch, moto_server(binary, Path(scratch) / "moto.log") as url:
        yield url
