"""Real etcd processes on free loopback ports: one member or a cluster, data dirs under a directory of the
caller's, and a member can be killed, stopped (SIGSTOP), continued or restarted. The tests' fixtures
(tests/fakes/etcd.py), the benches and `controlplane demo --replicas N` start etcd through this."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from chaos.loopback import free_port

START_TIMEOUT = 20.0
# Loopback answers in microseconds: a short election keeps a member's loss to well under a second.
HEARTBEAT_MS = 50
ELECTION_MS = 500


class EtcdDidNotStart(RuntimeError):
    """A member exited or its cluster did not report healthy in time; the message ends with its log."""


def healthy(url: str) -> bool:
    """GET /health says true: the member is up and its cluster has a leader."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1.0) as reply:
            return bool(json.loads(reply.read(4096)).get("health") == "true")
    except (urllib.error.URLError, OSError, ValueError):
        return False


class EtcdMember:
    """One etcd process, left in the test run's process group: a run stopped by `timeout` or Ctrl-C, which
    signal the whole group, takes its members with it instead of leaving them running."""

    def __init__(self, binary: str, name: str, data_dir: Path) -> None:
        self.binary = binary
        self.name = name
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.log_path = data_dir.parent / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, initial_cluster: str) -> None:
        command = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            "--initial-cluster-state=new",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, as a crash; the data dir stays for restart()."""
        if self.process is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        """SIGSTOP: the process holds its sockets open and answers nothing, as a hung host."""
        self._signal(signal.SIGSTOP)

    def cont(self) -> None:
        self._signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


class EtcdCluster:
    """`size` members started together (each waits for the others to form a quorum)."""

    def __init__(self, binary: str, root: Path, size: int) -> None:
        self.members = tuple(EtcdMember(binary, f"m{index}", root / f"m{index}") for index in range(size))
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [member.url for member in self.members]

    def start(self) -> None:
        for member in self.members:
            member.start(self.initial_cluster)
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for member in self.members:
            while not healthy(member.url):
                if not member.running or time.monotonic() > deadline:
                    raise EtcdDidNotStart(
                        f"etcd {member.name} at {member.url} not healthy:\n{member.log_tail()}"
                    )
                time.sleep(0.05)

    def leader(self) -> EtcdMember:
        """The member raft elected, as the members report it (/v3/maintenance/status)."""
        ids: dict[str, EtcdMember] = {}
        leaders: set[str] = set()
        for member in self.members:
            request = urllib.request.Request(f"{member.url}/v3/maintenance/status", data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=2.0) as reply:
                status = json.loads(reply.read(65536))
            ids[status["header"]["member_id"]] = member
            leaders.add(status["leader"])
        (leader,) = leaders
        return ids[leader]

    def compact(self, revision: int) -> None:
        """Drop history before `revision` (the plane itself never compacts: tests of a watch that is too late)."""
        body = json.dumps({"revision": str(revision), "physical": True}).encode()
        request = urllib.request.Request(f"{self.members[0].url}/v3/kv/compaction", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5.0) as reply:
            reply.read(65536)

    def restart(self, member: EtcdMember) -> None:
        """Start a killed member again on its data dir and ports; returns once the cluster is healthy."""
        member.kill()
        member.start(self.initial_cluster)
        self.wait_healthy()

    def close(self) -> None:
        for member in self.members:
            member.kill()


@contextmanager
def etcd_cluster(binary: str, root: Path, size: int) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(binary, root, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
