"""The provider Protocol, its capabilities, the two kinds of provider error, and the fence of a replica's
writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from controlplane.changes import ChangeSet, Record
from controlplane.errors import ControlPlaneError
from controlplane.plan import RoutingPlan
from controlplane.policy import Policy


class ProviderError(ControlPlaneError):
    """Base of every provider failure."""

    exit_code = 2
    http_status = 502


class TransientProviderError(ProviderError):
    """Worth retrying: timeouts, throttling, a peer restarting."""


class PermanentProviderError(ProviderError):
    """Retrying will not help: bad request, missing permission, foreign record in the way."""


class Fenced(PermanentProviderError):
    """This replica may not write: it does not lead, its leadership lapsed, or the provider holds a newer
    epoch."""


# The epoch to write under now; raises Fenced when this replica may not write. An external provider's
# `fence` attribute holds one when replicas coordinate (None: the plane runs alone and writes unfenced).
Fence = Callable[[], int]


@dataclass(frozen=True, slots=True)
class Capabilities:
    client_groups: bool  # can answer differently per client group
    weights: bool  # can split traffic by weight (else: one active target)
    max_weight: int  # largest weight the backend accepts
    # Its state lives in this process (an embedded server): no other process can read or change it, so
    # `controlplane plan` and `apply` leave it to the daemon.
    in_process: bool = False


@dataclass(frozen=True, slots=True)
class Tuning:
    """How the reconciler drives one provider: a cloud API is slow, rate-limited and billed per call; an
    in-process server is none of those."""

    timeout: float = 5.0  # one reconcile of this provider, retries included
    min_interval: float = 0.0  # seconds between two applies at least (the API's write rate limit)
    # The provider's real state is read at least this often; in between, what was last written is trusted
    # (0: read before every diff). A failed apply always forces a read.
    resync: float = 0.0
    # `controlplane apply` refuses, unless forced, a change set deleting more than this share of the owned
    # records (a policy edit gone wrong, not a failover: failovers change weights, they delete nothing).
    max_delete_share: float = 0.34


LOCAL = Tuning()


@runtime_checkable
class Provider(Protocol):
    """Renders plans to records and applies change sets. Dry-run lives in the reconciler, never here."""

    name: str
    capabilities: Capabilities
    tuning: Tuning

    def render(self, plan: RoutingPlan) -> list[Record]:
        """The records this provider should hold for `plan` (pure)."""
        ...

    async def current(self) -> list[Record]:
        """The records this provider owns right now (foreign ones are never returned)."""
        ...

    async def apply(self, changes: ChangeSet) -> None:
        """Make `changes` true; raise TransientProviderError or PermanentProviderError."""
        ...

    async def close(self) -> None: ...


class ManagedProvider(Provider, Protocol):
    """A provider the daemon can start, reconfigure and stop."""

    async def start(self) -> None: ...

    def update_policy(self, policy: Policy) -> None:
        """Adopt `policy` in place, or raise ProviderError if that needs a new instance (a new port, say)."""
        ...
