"""AWS Global Accelerator provider: the traffic dials of one listener's endpoint groups, one per plan region."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from controlplane.changes import Action, ChangeSet, Record
from controlplane.plan import RoutingPlan
from controlplane.policy import GlobalAcceleratorSettings, Policy
from controlplane.providers.base import (
    Capabilities,
    Fence,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    Tuning,
)
from controlplane.providers.pacing import pacer

if TYPE_CHECKING:
    from mypy_boto3_globalaccelerator import GlobalAcceleratorClient
    from mypy_boto3_globalaccelerator.type_defs import EndpointGroupTypeDef

log = logging.getLogger(__name__)
_T = TypeVar("_T")

ENDPOINT_GROUP = "endpoint-group"  # the record type: the target is an endpoint group, named by its AWS region
MAX_DIAL = 100  # TrafficDialPercentage's bound, in whole percent: the plane never writes a fraction
# Global Accelerator's API is served from us-west-2 only, whatever Regions the endpoints are in.
API_REGION = "us-west-2"
# One call's bound; botocore's own socket timeouts keep an abandoned worker thread from living longer.
CALL_TIMEOUT = 10.0
MAX_MESSAGE = 300  # of an error's text kept in a provider error
PAGE_SIZE = 100  # ListEndpointGroups' largest page
MAX_PAGES = 50  # a listener holds at most a few dozen groups (one per AWS Region): more is a broken API
# Codes a later attempt may get past: rate limits, the service's own failures, another update in flight.
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalServiceErrorException",
        "InternalServiceError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "TransactionInProgressException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


# One listener's groups are updated one call each: keep a failover of many under the API's rate limits.
REQUEST_INTERVAL = 0.2
ROUNDING = 1  # percentage points by which the plan's rounding may split equal shares


def dials(weights: Mapping[str, int]) -> dict[str, int]:
    """The traffic dial per region for plan `weights` (percent of the client group's traffic).

    A dial is the share of the traffic proximity already sends a Region that the Region keeps, so the
    Region the plan weights most keeps all of it (100) and the others keep their weight relative to it,
    rounded half up but never below 1 while the plan gives them anything. A region at 0 gets dial 0.
    Whole-percent weights of equal shares differ by a point (100 over 49 regions is 3s and 2s): a region
    within that point of the top keeps everything too, or rounding alone would turn away a third of its
    traffic and rewrite most dials whenever one region's share moves.
    """
    top = max(weights.values(), default=0)
    if top <= 0:
        return dict.fromkeys(weights, 0)
    return {
        region: 0
        if weight <= 0
        else MAX_DIAL
        if top - weight <= ROUNDING
        else max(1, (2 * MAX_DIAL * weight + top) // (2 * top))
        for region, weight in weights.items()
    }


def dial_weight(percentage: float) -> int:
    """A dial as read back, in whole percent; a fraction someone else set rounds up, so a dial of 0.4
    reads as live (1) and a plan wanting 0 still writes it."""
    whole = int(percentage)
    return whole if whole == percentage else whole + 1


def classify(error: Exception, doing: str) -> ProviderError:
    """The provider error for a failed call: transient when a later attempt may succeed."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        # AWS's message names the denied action and principal (no secret), which an operator needs.
        said = str(error.response.get("Error", {}).get("Message", ""))[:MAX_MESSAGE]
        message = f"{doing}: {code or 'error'} (HTTP {status}): {said}"
        if code in _TRANSIENT_CODES or status >= 500:
            return TransientProviderError(message)
        return PermanentProviderError(message)
    if isinstance(error, BotoConnectionError | HTTPClientError):
        return TransientProviderError(f"{doing}: {type(error).__name__}")
    # Missing credentials, a parameter botocore refuses: retrying changes nothing.
    return PermanentProviderError(f"{doing}: {type(error).__name__}: {error}")


def dial_updates(name: str, settings: GlobalAcceleratorSettings, changes: ChangeSet) -> list[tuple[str, int]]:
    """(AWS region, dial) per change, raised dials first; every change checked before anything is sent."""
    if changes.provider != name:
        raise PermanentProviderError(f"change set for provider {changes.provider!r} sent to {name!r}")
    problems: list[str] = []
    updates: list[tuple[str, int]] = []
    for change in changes.changes:
        record = change.record
        where = f"{record.name} {record.region}"
        if change.action is not Action.UPDATE or change.after is None:
            problems.append(f"{where}: {change.action.name.lower()}; the plane only turns dials")
            continue
        owned = settings.endpoint_groups.get(record.region)
        if (record.name, record.group, record.rtype) != (settings.listener_arn, "*", ENDPOINT_GROUP) or (
            owned is None or record.target != owned
        ):
            problems.append(f"{where}: not an endpoint group this policy owns")
            continue
        dial = change.after.weight
        if type(dial) is not int or not 0 <= dial <= MAX_DIAL:
            problems.append(f"{where}: dial {dial!r} is not an integer in 0..{MAX_DIAL}")
            continue
        updates.append((owned, dial))
    if problems:
        raise PermanentProviderError(f"{name}: change set refused: " + "; ".join(problems))
    # Raised dials go first, so a shift never passes through a moment with every Region dialled down.
    before = {c.record.target: c.before.weight if c.before else 0 for c in changes.changes}
    return sorted(updates, key=lambda update: update[1] <= before[update[0]])


def _settings_in(policy: Policy, name: str) -> GlobalAcceleratorSettings:
    found = next((s for s in policy.providers.global_accelerator_list if s.instance_name == name), None)
    if found is None:
        raise PermanentProviderError(f"{name}: the policy no longer configures this listener")
    return found


class GlobalAcceleratorProvider:
    """Sets TrafficDialPercentage on the endpoint groups of one listener that the settings name, and nothing
    else: no endpoint list, endpoint weight, health check or foreign group is ever sent."""

    capabilities: Capabilities = Capabilities(client_groups=False, weights=True, max_weight=MAX_DIAL)
    # GA's control plane is one global API shared by the account; a dial change takes effect in seconds.
    tuning: Tuning = Tuning(timeout=30.0, min_interval=1.0, resync=60.0)

    def __init__(self, policy: Policy, settings: GlobalAcceleratorSettings) -> None:
        self.name = settings.instance_name
        self._settings = settings
        self._client: GlobalAcceleratorClient | None = None
        # AWS region -> endpoint group ARN, as last read: apply needs ARNs, render knows only regions.
        self._arns: dict[str, str] = {}
        self._foreign: list[str] = []  # AWS regions of groups not ours, as last warned about
        self._pacer = pacer("globalaccelerator", settings.endpoint_url, REQUEST_INTERVAL)
        self._lock = asyncio.Lock()
        # Set by the daemon when replicas coordinate: GA has no conditional write, so the epoch is checked
        # before each call instead.
        self.fence: Fence | None = None

    def update_policy(self, policy: Policy) -> None:
        settings = _settings_in(policy, self.name)
        if (settings.listener_arn, settings.endpoint_url) != (
            self._settings.listener_arn,
            self._settings.endpoint_url,
        ):
            raise PermanentProviderError(
                f"{self.name}: a new listener ARN or endpoint_url needs a new instance"
            )
        self._settings = settings

    def render(self, plan: RoutingPlan) -> list[Record]:
        settings = self._settings
        group = plan.group(settings.service, settings.client_group)
        if group is None:
            raise PermanentProviderError(
                f"{self.name}: plan has no weights for service {settings.service!r}, "
                f"client group {settings.client_group!r}"
            )
        weights = {region: group.weight(region) for region in settings.endpoint_groups}
        bad = sorted(r for r, w in weights.items() if not 0 <= w <= 100)
        if bad:
            raise PermanentProviderError(f"{self.name}: plan weights of {bad} are not percentages")
        dialled = dials(weights)
        return sorted(
            Record(settings.listener_arn, "*", region, aws_region, dialled[region], 0, ENDPOINT_GROUP)
            for region, aws_region in settings.endpoint_groups.items()
        )

    async def start(self) -> None:
        """Build the client (loading botocore's models reads files: off the loop) and check access."""
        if self._client is None:
            self._client = await asyncio.to_thread(self._make_client)
        await self.current()

    def _make_client(self) -> GlobalAcceleratorClient:
        endpoint_url = self._settings.endpoint_url
        # Credentials come from the SDK's chain (environment, profile, role), never from the policy.
        return boto3.session.Session().client(
            "globalaccelerator",
            region_name=API_REGION,
            endpoint_url=str(endpoint_url) if endpoint_url is not None else None,
            config=Config(
                # The reconciler's tenacity alone retries; botocore would retry throttling unasked.
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=CALL_TIMEOUT / 2,
                read_timeout=CALL_TIMEOUT,
            ),
        )

    async def _call(
        self, doing: str, function: Callable[[GlobalAcceleratorClient], _T], *, write: bool = False
    ) -> _T:
        client = self._client
        if client is None:
            raise PermanentProviderError(f"{self.name}: not started")
        await self._pacer.wait()
        if write and self.fence is not None:
            self.fence()  # after the pacer's wait: leadership may lapse while it waits
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return await asyncio.to_thread(function, client)
        except TimeoutError:
            raise TransientProviderError(f"{self.name}: {doing}: no answer within {CALL_TIMEOUT}s") from None
        except (ClientError, BotoCoreError) as error:
            raise classify(error, f"{self.name}: {doing}") from None

    async def _groups(self) -> dict[str, EndpointGroupTypeDef]:
        """Every endpoint group of the listener by AWS region, foreign ones included (the caller filters)."""
        listener_arn = self._settings.listener_arn

        def read(client: GlobalAcceleratorClient) -> list[EndpointGroupTypeDef]:
            groups: list[EndpointGroupTypeDef] = []
            token: dict[str, Any] = {}
            for _ in range(MAX_PAGES):
                page = client.list_endpoint_groups(ListenerArn=listener_arn, MaxResults=PAGE_SIZE, **token)
                groups += page.get("EndpointGroups", [])
                if not page.get("NextToken"):
                    return groups
                token = {"NextToken": page["NextToken"]}
            raise PermanentProviderError(f"more than {MAX_PAGES} pages of endpoint groups")

        groups = await self._call("ListEndpointGroups", read)
        return {group.get("EndpointGroupRegion", ""): group for group in groups}

    async def current(self) -> list[Record]:
        settings = self._settings
        groups = await self._groups()
        missing = sorted(aws for aws in settings.endpoint_groups.values() if aws not in groups)
        if missing:
            raise PermanentProviderError(
                f"{self.name}: listener has no endpoint group in {missing}; the plane never creates one"
            )
        foreign = sorted(set(groups) - set(settings.endpoint_groups.values()))
        if foreign and foreign != self._foreign:
            # Left alone, but GA's failover (which ignores dials) may send the group's clients there.
            log.warning(
                "%s: endpoint groups in %s are not in the policy; left as they are", self.name, foreign
            )
        self._foreign = foreign
        self._arns = {aws: groups[aws]["EndpointGroupArn"] for aws in settings.endpoint_groups.values()}
        return sorted(
            Record(
                settings.listener_arn,
                "*",
                region,
                aws_region,
                dial_weight(groups[aws_region].get("TrafficDialPercentage", 100.0)),
                0,
                ENDPOINT_GROUP,
            )
            for region, aws_region in settings.endpoint_groups.items()
        )

    async def apply(self, changes: ChangeSet) -> None:
        updates = dial_updates(self.name, self._settings, changes)
        async with self._lock:
            if any(aws not in self._arns for aws, _ in updates):
                await self.current()
            for aws_region, dial in updates:
                arn = self._arns[aws_region]

                def update(client: GlobalAcceleratorClient, arn: str = arn, dial: int = dial) -> None:
                    # Only the dial: UpdateEndpointGroup replaces whatever list it is given, and a list read
                    # back lacks AttachmentArn, so sending one could drop endpoints added meanwhile.
                    client.update_endpoint_group(EndpointGroupArn=arn, TrafficDialPercentage=float(dial))

                await self._call(f"UpdateEndpointGroup {aws_region}", update, write=True)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
