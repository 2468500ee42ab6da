"""HAProxy provider: server weights and drain state of one backend, driven through the runtime API."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from controlplane.changes import Action, ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import HaproxyProvider as HaproxySettings
from controlplane.policy import Policy
from controlplane.providers.base import (
    LOCAL,
    Capabilities,
    Fence,
    PermanentProviderError,
    TransientProviderError,
    Tuning,
)

log = logging.getLogger(__name__)
SERVER = "server"  # the record type of a backend server

MAX_WEIGHT = 256  # HAProxy's own bound for `set server ... weight`

# Characters HAProxy accepts in proxy and server names. Checking them also keeps a name from smuggling a
# second command into the CLI line (`;` and newlines separate commands there).
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.:-]+$")

# srv_admin_state bits, as HAProxy itself tests them (include/haproxy/server-t.h, enum srv_admin):
# MAINT = FMAINT|IMAINT|RMAINT, DRAIN = FDRAIN|IDRAIN. Either means the server takes no new traffic.
_ADMIN_MAINT = 0x23
_ADMIN_DRAIN = 0x18

# Replies that mean the command was refused. Matched at the start of the reply, case-insensitively. HAProxy
# 2.6 answers an unknown backend with "No such backend." to `set` but "Can't find backend." to `show`.
_REFUSALS = re.compile(
    r"^(no such |unknown command|permission denied|can't find |require |invalid |trailing garbage"
    r"|absolute weight |relative weight |backend is using a static lb|'set server <srv> state' expects)",
    re.IGNORECASE,
)

Address = str | tuple[str, int]  # a unix socket path, or (host, port)


def parse_address(address: str) -> Address:
    """`/run/haproxy.sock`, `unix@path`, `host:port`, `[v6]:port`, `ipv4@host:port` -> path or (host, port)."""
    if address.startswith("unix@"):
        return address.removeprefix("unix@")
    bare = address.removeprefix("ipv4@").removeprefix("ipv6@")
    if "/" in bare or ":" not in bare:
        return bare
    host, _, port = bare.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"HAProxy runtime API address {address!r} is neither a socket path nor host:port")
    return host, int(port)


def check_name(kind: str, value: str) -> str:
    """`value` if HAProxy would accept it as a proxy or server name; ValueError otherwise."""
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} is not a valid HAProxy name (letters, digits, '_', '.', ':', '-')"
        )
    return value


def check_weight(weight: object, where: str) -> int:
    """A weight HAProxy accepts, checked here so a bad plan never reaches HAProxy."""
    # bool is an int subclass; True as a weight is a bug upstream, not 1.
    if type(weight) is not int or not 0 <= weight <= MAX_WEIGHT:
        raise PermanentProviderError(f"{where}: weight {weight!r} is not an integer in 0..{MAX_WEIGHT}")
    return weight


def check_reply(command: str, reply: str) -> str:
    """The reply's text if HAProxy accepted `command`; PermanentProviderError if it refused it.

    Successful `set` commands answer with nothing; anything else that is not a known refusal is taken as
    informational (HAProxy prints such notes for some commands) and returned for the caller to log.
    """
    text = reply.strip()
    if _REFUSALS.match(text):
        raise PermanentProviderError(f"haproxy refused {command!r}: {text.splitlines()[0]}")
    return text


@dataclass(frozen=True, slots=True)
class ServerState:
    """One row of `show servers state`, reduced to what routing needs."""

    backend: str
    name: str
    address: str
    op_state: int
    admin_state: int
    weight: int  # srv_uweight: the weight set by config or `set server ... weight`
    initial_weight: int

    @property
    def effective_weight(self) -> int:
        """The weight new connections see: a drained or maintained server takes none, whatever its weight."""
        return 0 if self.admin_state & (_ADMIN_MAINT | _ADMIN_DRAIN) else self.weight


_STATE_COLUMNS = (
    "be_name",
    "srv_name",
    "srv_addr",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_iweight",
)


def parse_servers_state(reply: str) -> list[ServerState]:
    """Parse a `show servers state` reply (format version 1); columns are found by the header's names."""
    text = check_reply("show servers state", reply)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        first = lines[0] if lines else "<empty>"
        raise PermanentProviderError(f"show servers state: expected format version 1, got {first!r}")
    if len(lines) < 2 or not lines[1].startswith("#"):
        raise PermanentProviderError("show servers state: the column header line is missing")
    header = lines[1].lstrip("#").split()
    missing = [c for c in _STATE_COLUMNS if c not in header]
    if missing:
        raise PermanentProviderError(f"show servers state: header lacks columns {missing}")
    be_name, srv_name, srv_addr, op, admin, uweight, iweight = (header.index(c) for c in _STATE_COLUMNS)
    states: list[ServerState] = []
    for row in lines[2:]:
        fields = row.split()
        try:
            states.append(
                ServerState(
                    backend=fields[be_name],
                    name=fields[srv_name],
                    address=fields[srv_addr],
                    op_state=int(fields[op]),
                    admin_state=int(fields[admin]),
                    weight=int(fields[uweight]),
                    initial_weight=int(fields[iweight]),
                )
            )
        except (IndexError, ValueError) as exc:
            raise PermanentProviderError(f"show servers state: cannot parse row {row!r}: {exc}") from None
    return states


def commands_for(changes: ChangeSet, settings: HaproxySettings) -> list[str]:
    """The runtime API commands that make `changes` true, in a safe order, after checking every record.

    Servers gaining traffic are raised (weight, then ready) before any server is drained, so a plan that
    keeps one server live never passes through a moment with every server drained.
    """
    raises: list[str] = []
    drains: list[str] = []
    for change in changes.changes:
        after = change.after
        if change.action is Action.DELETE or after is None:
            raise PermanentProviderError(
                "haproxy provider never deletes servers; the backend's server list belongs to the HAProxy config"
            )
        where = f"{after.name}/{after.region}"
        owned = settings.servers.get(after.region)
        if after.name != settings.backend or after.group != "*" or owned is None or after.target != owned:
            raise PermanentProviderError(
                f"{where}: record {after.target!r} is not a server this policy owns "
                f"(backend {settings.backend!r}, servers {dict(settings.servers)})"
            )
        server = f"{settings.backend}/{owned}"
        weight = check_weight(after.weight, where)
        if weight > 0:
            raises += [f"set server {server} weight {weight}", f"set server {server} state ready"]
        else:
            # Drain keeps the server's weight and lets open streams finish; it only stops new connections.
            drains.append(f"set server {server} state drain")
    return raises + drains


@dataclass(frozen=True, slots=True)
class RuntimeApi:
    """HAProxy's runtime API at one address, every command bounded by `timeout` seconds.

    One command per connection, not `prompt` mode: the reply ends where HAProxy closes the connection, so
    no prompt or terminator parsing is needed (2.6 is not consistent about the blank line that ends a
    reply), a failure is tied to exactly one command, and nothing is left half-read for the next command.
    A handful of commands per reconcile step makes the extra loopback connects negligible.
    """

    address: Address
    timeout: float = 2.0

    @classmethod
    def at(cls, address: str, timeout: float = 2.0) -> RuntimeApi:
        return cls(parse_address(address), timeout)

    def __str__(self) -> str:
        return self.address if isinstance(self.address, str) else f"{self.address[0]}:{self.address[1]}"

    async def send(self, command: str) -> str:
        """The whole reply to `command`; TransientProviderError when HAProxy cannot be reached in time."""
        if "\n" in command or ";" in command:
            raise ValueError(f"one runtime API command at a time, got {command!r}")
        try:
            async with asyncio.timeout(self.timeout):
                if isinstance(self.address, str):
                    reader, writer = await asyncio.open_unix_connection(self.address)
                else:
                    reader, writer = await asyncio.open_connection(*self.address)
                try:
                    writer.write(command.encode() + b"\n")
                    await writer.drain()
                    data = await reader.read()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except TimeoutError:
            raise TransientProviderError(
                f"haproxy at {self}: no reply to {command!r} within {self.timeout}s"
            ) from None
        except PermissionError as exc:
            raise PermanentProviderError(f"haproxy at {self}: {exc}") from None
        except OSError as exc:  # refused, reset, socket file absent: HAProxy is down or restarting
            raise TransientProviderError(f"haproxy at {self}: {exc.strerror or exc}") from None
        return data.decode("utf-8", "replace")


def _settings(policy: Policy, timeout: float) -> tuple[HaproxySettings, RuntimeApi]:
    """The policy's HAProxy settings, checked whole so a bad policy never half-replaces a good one."""
    settings = policy.providers.haproxy
    if settings is None:
        raise PermanentProviderError("policy has no providers.haproxy section")
    try:
        api = RuntimeApi.at(settings.socket, timeout)
        check_name("providers.haproxy.backend", settings.backend)
        for region, server in settings.servers.items():
            check_name(f"providers.haproxy.servers.{region}", server)
    except ValueError as exc:
        raise PermanentProviderError(str(exc)) from None
    servers = list(settings.servers.values())
    if len(set(servers)) != len(servers):
        raise PermanentProviderError(
            f"providers.haproxy.servers maps two regions to one server: {settings.servers}"
        )
    return settings, api


class HaproxyProvider:
    """Splits one backend's traffic across regions by server weight; a region at 0 is drained."""

    name: str = "haproxy"
    capabilities: Capabilities = Capabilities(client_groups=False, weights=True, max_weight=MAX_WEIGHT)
    tuning: Tuning = LOCAL  # the runtime API is local and cheap; HAProxy may restart, so always read

    def __init__(self, policy: Policy, *, timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._settings, self._api = _settings(policy, self._timeout)
        # Serialises applies so two change sets never interleave their raise/drain sequences.
        self._lock = asyncio.Lock()
        # Set by the daemon when replicas coordinate: HAProxy has no conditional write, so the epoch is
        # checked before each command instead.
        self.fence: Fence | None = None

    def update_policy(self, policy: Policy) -> None:
        """Adopt a new policy; raises PermanentProviderError and keeps the old one if it is unusable."""
        # Checked before either attribute changes; with no await in between, no coroutine sees a mix.
        self._settings, self._api = _settings(policy, self._timeout)

    def render(self, plan: RoutingPlan) -> list[Record]:
        settings = self._settings
        group = plan.group(settings.service, settings.client_group)
        if group is None:
            # An absent group is a broken plan, not a decision; failing closed is spelled as all-zero weights.
            raise PermanentProviderError(
                f"plan has no weights for service {settings.service!r}, client group {settings.client_group!r}"
            )
        return [
            Record(
                name=settings.backend,
                group="*",
                region=region,
                target=server,
                weight=check_weight(group.weight(region), f"plan {settings.service}/{region}"),
                ttl=0,
                rtype=SERVER,
            )
            for region, server in sorted(settings.servers.items())
        ]

    async def current(self) -> list[Record]:
        settings, api = self._settings, self._api
        reply = await api.send(f"show servers state {settings.backend}")
        states = {s.name: s for s in parse_servers_state(reply) if s.backend == settings.backend}
        missing = sorted(server for server in settings.servers.values() if server not in states)
        if missing:
            raise PermanentProviderError(
                f"haproxy backend {settings.backend!r} has no server(s) {missing} named in providers.haproxy.servers"
            )
        return [
            Record(settings.backend, "*", region, server, states[server].effective_weight, 0, SERVER)
            for region, server in sorted(settings.servers.items())
        ]

    async def apply(self, changes: ChangeSet) -> None:
        if changes.provider != self.name:
            raise PermanentProviderError(
                f"change set for provider {changes.provider!r} sent to {self.name!r}"
            )
        settings, api = self._settings, self._api
        # Every record is checked before the first command goes out: a bad change set changes nothing.
        commands = commands_for(changes, settings)
        async with self._lock:
            for command in commands:
                if self.fence is not None:
                    self.fence()
                if note := check_reply(command, await api.send(command)):
                    log.warning("haproxy replied %r to %r; taken as informational", note, command)

    async def start(self) -> None:
        """Nothing to open: every command has its own connection."""

    async def close(self) -> None:
        """Nothing to release: every command has its own connection."""
