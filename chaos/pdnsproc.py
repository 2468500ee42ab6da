"""A real PowerDNS authoritative server (Debian's pdns-server with its sqlite3 backend) on free loopback
ports, configured from a directory of the caller's: the tests' fixture (tests/fakes/powerdns.py) and
bench/powerdns_failover.py start it through this. It can be stopped and started again on the same ports and
database, as a server restarting."""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from chaos.loopback import free_port

START_TIMEOUT = 20.0
# Where Debian's pdns-backend-sqlite3 ships the schema of a fresh database (the doc copy on older releases).
SCHEMAS = (
    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
)


class PdnsDidNotStart(RuntimeError):
    """pdns_server exited or its API did not answer in time; the message ends with its log."""


class PowerDns:
    """One pdns_server process, left in the test run's process group (a run stopped by `timeout` or Ctrl-C
    takes it along). `lua_records` is the server-wide enable-lua-records; a zone may still turn it on."""

    def __init__(self, binary: str, root: Path, *, lua_records: bool = True) -> None:
        self.binary = binary
        self.root = root
        self.dns_port = free_port()
        self.api_port = free_port()
        self.api_key = secrets.token_hex(16)
        self.host = "127.0.0.1"
        self.api_url = f"http://{self.host}:{self.api_port}"
        self.lua_records = lua_records
        self.log_path = root / "pdns.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dns(self) -> tuple[str, int]:
        return self.host, self.dns_port

    def _configure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        database = self.root / "pdns.sqlite3"
        if not database.exists():
            schema = next((path for path in SCHEMAS if path.exists()), None)
            if schema is None:
                raise PdnsDidNotStart(
                    f"no sqlite3 schema at {[str(p) for p in SCHEMAS]}: install pdns-backend-sqlite3"
                )
            with sqlite3.connect(database) as db:
                db.executescript(schema.read_text(encoding="utf-8"))
        settings = {
            "launch": "gsqlite3",
            "gsqlite3-database": str(database),
            "local-address": self.host,
            "local-port": str(self.dns_port),
            "socket-dir": str(self.root),
            "guardian": "no",
            "daemon": "no",
            "disable-syslog": "yes",
            "loglevel": "4",
            "webserver": "yes",
            "webserver-address": self.host,
            "webserver-port": str(self.api_port),
            "webserver-allow-from": "127.0.0.0/8",
            "api": "yes",
            "api-key": self.api_key,
            "enable-lua-records": "yes" if self.lua_records else "no",
            # Client networks are told apart by ECS as well as by source address.
            "edns-subnet-processing": "yes",
            # Nothing else in this server's zone is worth the wait a zone-cache miss costs a new zone.
            "zone-cache-refresh-interval": "0",
            # Metadata set by pdnsutil behind the server's back (ENABLE-LUA-RECORDS) is seen at once.
            "zone-metadata-cache-ttl": "0",
            "security-poll-suffix": "",  # no lookups of PowerDNS's security status: loopback only
        }
        text = "".join(f"{key}={value}\n" for key, value in settings.items())
        (self.root / "pdns.conf").write_text(text, encoding="utf-8")

    def start(self) -> None:
        self._configure()
        command = [self.binary, f"--config-dir={self.root}"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answering():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PdnsDidNotStart(f"pdns_server at {self.api_url} did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGKILL, as a crash; the database stays for start()."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP: its sockets stay open and nothing answers, as a hung host."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def answering(self) -> bool:
        try:
            self.call("GET", "/api/v1/servers/localhost")
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return True

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One API call (blocking: set-up and checks only); the decoded JSON answer, None if empty."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.api_url + path,
            data=data,
            method=method,
            headers={"X-API-Key": self.api_key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5.0) as reply:
            raw = reply.read(1 << 22)
        return json.loads(raw) if raw else None

    def create_zone(self, zone: str, *, metadata: Mapping[str, str] | None = None) -> None:
        """A native zone with its SOA and one NS, plus per-zone metadata (ENABLE-LUA-RECORDS, say)."""
        name = zone.rstrip(".") + "."
        self.call(
            "POST",
            "/api/v1/servers/localhost/zones",
            {
                "name": name,
                "kind": "Native",
                "nameservers": [f"ns1.{name}"],
                "soa_edit_api": "DEFAULT",
                # A short negative TTL: a name failing closed answers again as soon as it fails open.
                "rrsets": [
                    {
                        "name": name,
                        "type": "SOA",
                        "ttl": 5,
                        "records": [{"content": f"ns1.{name} hostmaster.{name} 1 3600 600 86400 5"}],
                    }
                ],
            },
        )
        for kind, value in (metadata or {}).items():
            # The API refuses to set some kinds (ENABLE-LUA-RECORDS among them): pdnsutil sets any.
            pdnsutil = Path(self.binary).with_name("pdnsutil")
            if not pdnsutil.exists():
                pdnsutil = Path("/usr/bin/pdnsutil")
            subprocess.run(
                [str(pdnsutil), f"--config-dir={self.root}", "set-meta", name, kind, value],
                check=True,
                capture_output=True,
                timeout=20,
            )

    def delete_zone(self, zone: str) -> None:
        with suppress(urllib.error.HTTPError):
            self.call("DELETE", f"/api/v1/servers/localhost/zones/{zone.rstrip('.')}.")

    def rrsets(self, zone: str) -> list[dict[str, Any]]:
        answer = self.call("GET", f"/api/v1/servers/localhost/zones/{zone.rstrip('.')}.")
        return list(answer["rrsets"])

    def patch(self, zone: str, rrsets: list[dict[str, Any]]) -> None:
        """Write rrsets as another tool would (foreign records, say)."""
        self.call("PATCH", f"/api/v1/servers/localhost/zones/{zone.rstrip('.')}.", {"rrsets": rrsets})

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@contextmanager
def powerdns(binary: str, root: Path, *, lua_records: bool = True) -> Iterator[PowerDns]:
    server = PowerDns(binary, root, lua_records=lua_records)
    try:
        server.start()
        yield server
    finally:
        server.stop()
