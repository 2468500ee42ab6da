"""A fake of the AWS Global Accelerator API on loopback, for tests (moto has none).

It speaks the service's own wire protocol (JSON 1.1: `POST /`, `X-Amz-Target:
GlobalAccelerator_V20180706.<Operation>`, SigV4 scoped to us-west-2, errors as `{"__type": ..., "message":
...}`), so the production boto3 client reaches it unchanged through `endpoint_url`. Requests are checked
against botocore's service model (types, required and unknown members, and the maxima botocore's own
validator leaves to the server: weight over 255, dial over 100, more than 10 endpoints). Test set-up
(accelerator, listener, endpoint groups, endpoint health) is done in Python, not over the wire.

What a traffic dial means for a client group (Global Accelerator Developer Guide: traffic dials, endpoint
weights, failover for unhealthy endpoints):
- Proximity first: a new connection goes to the healthy endpoint group (Region) nearest the client's edge
  location. A listener serves whoever reaches its anycast IPs; it knows no client groups or jurisdictions.
- A dial (0-100 %, default 100) is the share of the traffic proximity already sends a group that the group
  keeps; the rest spills to the next-nearest groups. So it is not a DNS weight, not a share of all traffic.
  Endpoint weights (0-255, default 128) split a group's share among its endpoints; 0 sends one nothing new.
- Dials and weights apply to new connections only; open ones (a long completion stream) stay where they are.
- Failover ignores dials: a group with no healthy endpoint of weight > 0 hands over to the three nearest
  groups, dial 0 included, and if none has one GA fails open to a random endpoint of the nearest group.
  Dial 0 drains a dead region but is no residency fence: a listener may carry only a client group whose
  allowed jurisdictions cover every region with an endpoint group on it.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self

import botocore.session
from aiohttp import web
from botocore.model import ListShape, Shape, StringShape, StructureShape
from botocore.validate import ParamValidator

from chaos.loopback import serve_app, stop_app

TARGET_PREFIX = "GlobalAccelerator_V20180706."
CONTENT_TYPE = "application/x-amz-json-1.1"
# Global Accelerator's API lives in us-west-2 only; a client signing for another region is misconfigured.
SIGNING_REGION = "us-west-2"
ACCOUNT_ID = "123456789012"
DEFAULT_WEIGHT = 128
DEFAULT_PAGE_SIZE = 10
# The largest real request (10 endpoints, every health-check field) is under 4 KiB.
MAX_BODY = 64 * 1024
# Calls remembered; older ones are forgotten so a long daemon test cannot grow the log without bound.
CALL_LOG_LIMIT = 100_000
HEALTH_STATES = ("INITIAL", "HEALTHY", "UNHEALTHY")

_MODEL = botocore.session.Session().get_service_model("globalaccelerator")
_NAME = r"[A-Za-z0-9-]+"
_LISTENER_ARN = re.compile(rf"arn:aws:globalaccelerator::\d{{12}}:accelerator/{_NAME}/listener/{_NAME}")
_GROUP_ARN = re.compile(rf"{_LISTENER_ARN.pattern}/endpoint-group/{_NAME}")
_LOAD_BALANCER = re.compile(
    r"arn:aws:elasticloadbalancing:(?P<region>[a-z0-9-]+):\d{12}:loadbalancer/(?P<kind>app|net)/"
    r"[A-Za-z0-9-]{1,32}/[0-9a-f]{16}"
)
_ALLOCATION_OR_INSTANCE = re.compile(r"(eipalloc|i)-[0-9a-f]{8}([0-9a-f]{9})?")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request")


class ServiceError(Exception):
    """An error the service answers with: a modeled exception's name, or a generic AWS one."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    weight: int = DEFAULT_WEIGHT
    # None: the service's default, on for Application Load Balancers only.
    client_ip_preservation: bool | None = None
    health: str = "HEALTHY"


@dataclass(frozen=True)
class EndpointGroup:
    arn: str
    listener_arn: str
    region: str
    endpoints: tuple[Endpoint, ...]
    traffic_dial: float = 100.0
    health_check_port: int = 443
    health_check_protocol: str = "TCP"
    health_check_path: str | None = None
    health_check_interval: int = 30
    threshold_count: int = 3
    port_overrides: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Listener:
    arn: str
    ports: tuple[int, ...]
    protocol: str
    client_affinity: str = "NONE"


@dataclass(frozen=True)
class Call:
    """One request that reached the service (failed ones included), as the test's client sent it."""

    operation: str
    params: Mapping[str, Any]


class FakeGlobalAccelerator:
    """The fake service: `async with FakeGlobalAccelerator() as ga:` then point boto3 at `ga.endpoint_url`."""

    def __init__(self) -> None:
        self.calls: deque[Call] = deque(maxlen=CALL_LOG_LIMIT)
        self.endpoint_url = ""
        self._ids = itertools.count(1)
        self._accelerators: set[str] = set()
        self._listeners: dict[str, Listener] = {}
        self._groups: dict[str, EndpointGroup] = {}
        self._tokens: dict[str, tuple[str, int]] = {}
        self._faults: deque[ServiceError] = deque()
        self._runner: web.AppRunner | None = None
        self._operations: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "DescribeListener": self._describe_listener,
            "ListEndpointGroups": self._list_endpoint_groups,
            "DescribeEndpointGroup": self._describe_endpoint_group,
            "UpdateEndpointGroup": self._update_endpoint_group,
        }

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/", self._handle)
        self._runner, port = await serve_app(app, "127.0.0.1", 0, shutdown_timeout=1.0)
        self.endpoint_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await stop_app(self._runner)

    # --- test set-up and inspection ---

    def create_accelerator(self) -> str:
        n = next(self._ids)
        arn = f"arn:aws:globalaccelerator::{ACCOUNT_ID}:accelerator/{n:08x}-0000-4000-8000-{n:012x}"
        self._accelerators.add(arn)
        return arn

    def create_listener(
        self, accelerator_arn: str, ports: Iterable[int] = (443,), protocol: str = "TCP"
    ) -> str:
        if accelerator_arn not in self._accelerators:
            raise ServiceError("AcceleratorNotFoundException", f"no accelerator {accelerator_arn}")
        arn = f"{accelerator_arn}/listener/{next(self._ids):08x}"
        self._listeners[arn] = Listener(arn, tuple(ports), protocol)
        return arn

    def create_endpoint_group(
        self,
        listener_arn: str,
        region: str,
        endpoints: Iterable[str | Endpoint] = (),
        traffic_dial: float = 100.0,
    ) -> str:
        listener = self._listener(listener_arn)
        if not _REGION.fullmatch(region):
            raise ServiceError("InvalidArgumentException", f"{region!r} is not an AWS Region")
        if any(group.region == region for group in self._groups_of(listener.arn)):
            raise ServiceError(
                "EndpointGroupAlreadyExistsException", f"{listener.arn} has a group in {region}"
            )
        listed = [Endpoint(item) if isinstance(item, str) else item for item in endpoints]
        for endpoint in listed:
            _check_endpoint(endpoint.endpoint_id, region)
        arn = f"{listener.arn}/endpoint-group/{next(self._ids):012x}"
        self._groups[arn] = EndpointGroup(
            arn,
            listener.arn,
            region,
            tuple(map(_with_defaults, listed)),
            traffic_dial,
            health_check_port=listener.ports[0],
        )
        return arn

    def endpoint_group(self, arn: str) -> EndpointGroup:
        return self._group(arn)

    def set_health(self, group_arn: str, endpoint_id: str, health: str) -> None:
        """What the service's health checks would report for one endpoint."""
        if health not in HEALTH_STATES:
            raise ValueError(f"health is one of {HEALTH_STATES}")
        group = self._group(group_arn)
        if endpoint_id not in {endpoint.endpoint_id for endpoint in group.endpoints}:
            raise ValueError(f"{endpoint_id} is not in {group_arn}")
        endpoints = tuple(
            replace(endpoint, health=health) if endpoint.endpoint_id == endpoint_id else endpoint
            for endpoint in group.endpoints
        )
        self._groups[group_arn] = replace(group, endpoints=endpoints)

    def fail_next(
        self, count: int, code: str = "ThrottlingException", status: int = 400, message: str = "Rate exceeded"
    ) -> None:
        """The next `count` calls are answered with this error, before anything is validated or changed, as
        a throttled or failing service would. Global Accelerator's model names no throttling error, so the
        default is the generic one AWS JSON services send (and botocore's retry handlers know)."""
        self._faults.extend(ServiceError(code, message, status) for _ in range(count))

    def count(self, operation: str) -> int:
        return sum(call.operation == operation for call in self.calls)

    # --- the wire protocol ---

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            operation, params = await _parse(request)
            self.calls.append(Call(operation, params))
            if self._faults:
                raise self._faults.popleft()
            handler = self._operations.get(operation)
            if handler is None:
                raise ServiceError("UnknownOperationException", f"the fake does not implement {operation}")
            _validate(operation, params)
            body, status = handler(params), 200
        except ServiceError as error:
            body = {"__type": f"com.amazonaws.globalaccelerator#{error.code}", "message": error.message}
            status = error.status
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            headers={"Content-Type": CONTENT_TYPE, "x-amzn-RequestId": secrets.token_hex(16)},
        )

    # --- operations ---

    def _describe_listener(self, params: dict[str, Any]) -> dict[str, Any]:
        listener = self._listener(params["ListenerArn"])
        return {
            "Listener": {
                "ListenerArn": listener.arn,
                "PortRanges": [{"FromPort": port, "ToPort": port} for port in listener.ports],
                "Protocol": listener.protocol,
                "ClientAffinity": listener.client_affinity,
            }
        }

    def _list_endpoint_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        listener = self._listener(params["ListenerArn"])
        start = 0
        if "NextToken" in params:
            issued = self._tokens.get(params["NextToken"])
            if issued is None or issued[0] != listener.arn:
                raise ServiceError("InvalidNextTokenException", "The token is not valid for this listener")
            start = issued[1]
        end = start + params.get("MaxResults", DEFAULT_PAGE_SIZE)
        groups = self._groups_of(listener.arn)
        page: dict[str, Any] = {"EndpointGroups": [_describe(group) for group in groups[start:end]]}
        if end < len(groups):
            token = secrets.token_urlsafe(24)
            self._tokens[token] = (listener.arn, end)
            page["NextToken"] = token
        return page

    def _describe_endpoint_group(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"EndpointGroup": _describe(self._group(params["EndpointGroupArn"]))}

    def _update_endpoint_group(self, params: dict[str, Any]) -> dict[str, Any]:
        group = self._group(params["EndpointGroupArn"])
        changes: dict[str, Any] = {
            field: params[key]
            for key, field in (
                ("TrafficDialPercentage", "traffic_dial"),
                ("HealthCheckPort", "health_check_port"),
                ("HealthCheckProtocol", "health_check_protocol"),
                ("HealthCheckPath", "health_check_path"),
                ("HealthCheckIntervalSeconds", "health_check_interval"),
                ("ThresholdCount", "threshold_count"),
            )
            if key in params
        }
        if "PortOverrides" in params:
            changes["port_overrides"] = tuple(
                (item["ListenerPort"], item["EndpointPort"]) for item in params["PortOverrides"]
            )
        if "EndpointConfigurations" in params:
            changes["endpoints"] = _replace_endpoints(group, params["EndpointConfigurations"])
        updated = self._groups[group.arn] = replace(group, **changes)
        return {"EndpointGroup": _describe(updated)}

    # --- lookups ---

    def _listener(self, arn: str) -> Listener:
        if not _LISTENER_ARN.fullmatch(arn):
            raise ServiceError("InvalidArgumentException", f"{arn!r} is not a listener ARN")
        listener = self._listeners.get(arn)
        if listener is None:
            raise ServiceError("ListenerNotFoundException", f"Listener not found: {arn}")
        return listener

    def _group(self, arn: str) -> EndpointGroup:
        if not _GROUP_ARN.fullmatch(arn):
            raise ServiceError("InvalidArgumentException", f"{arn!r} is not an endpoint group ARN")
        group = self._groups.get(arn)
        if group is None:
            raise ServiceError("EndpointGroupNotFoundException", f"Endpoint group not found: {arn}")
        return group

    def _groups_of(self, listener_arn: str) -> list[EndpointGroup]:
        return [group for group in self._groups.values() if group.listener_arn == listener_arn]


async def _parse(request: web.Request) -> tuple[str, dict[str, Any]]:
    """The operation and parameters of a request, refused as the service refuses a malformed one."""
    scope = _CREDENTIAL_SCOPE.search(request.headers.get("Authorization", ""))
    if scope is None:
        raise ServiceError("MissingAuthenticationTokenException", "Missing Authentication Token", 403)
    if (scope["region"], scope["service"]) != (SIGNING_REGION, "globalaccelerator"):
        raise ServiceError(
            "InvalidSignatureException",
            f"Credential should be scoped to {SIGNING_REGION}/globalaccelerator, not "
            f"{scope['region']}/{scope['service']}",
            403,
        )
    target = request.headers.get("X-Amz-Target", "")
    if not target.startswith(TARGET_PREFIX):
        raise ServiceError("UnknownOperationException", f"unknown target {target!r}")
    if request.content_type != CONTENT_TYPE:
        raise ServiceError("SerializationException", f"Content-Type must be {CONTENT_TYPE}")
    try:
        params = json.loads(await request.read(), parse_constant=_refuse_constant)
    except ValueError as error:
        raise ServiceError("SerializationException", f"body is not JSON: {error}") from None
    if not isinstance(params, dict):
        raise ServiceError("SerializationException", "body is not a JSON object")
    return target.removeprefix(TARGET_PREFIX), params


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _validate(operation: str, params: dict[str, Any]) -> None:
    shape = _MODEL.operation_model(operation).input_shape
    assert shape is not None, f"{operation} has an input shape in the model"
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        raise ServiceError("InvalidArgumentException", report.generate_report())
    problems = _beyond_maxima(shape, params, shape.name)
    if problems:
        raise ServiceError("InvalidArgumentException", "; ".join(problems))


def _beyond_maxima(shape: Shape, value: Any, path: str) -> list[str]:
    """What botocore's validator leaves to the server: maxima, enums. `value` has passed that validator."""
    problems: list[str] = []
    most = shape.metadata.get("max")
    if shape.type_name in ("integer", "long", "float", "double"):
        if most is not None and value > most:
            problems.append(f"{path}: {value} is more than {most}")
    elif shape.type_name in ("string", "list") and most is not None and len(value) > most:
        problems.append(f"{path}: more than {most} long")
    if isinstance(shape, StringShape) and shape.enum and value not in shape.enum:
        problems.append(f"{path}: {value!r} is not one of {shape.enum}")
    if isinstance(shape, StructureShape):
        for name, member in shape.members.items():
            if name in value:
                problems += _beyond_maxima(member, value[name], f"{path}.{name}")
    elif isinstance(shape, ListShape):
        for index, item in enumerate(value):
            problems += _beyond_maxima(shape.member, item, f"{path}[{index}]")
    return problems


def _check_endpoint(endpoint_id: str, region: str) -> None:
    """An endpoint id must name a load balancer in the group's region, an Elastic IP allocation or an
    instance (which the real service then looks up)."""
    balancer = _LOAD_BALANCER.fullmatch(endpoint_id)
    if balancer is None and not _ALLOCATION_OR_INSTANCE.fullmatch(endpoint_id):
        raise ServiceError("InvalidArgumentException", f"{endpoint_id!r} is not a valid endpoint id")
    if balancer is not None and balancer["region"] != region:
        raise ServiceError(
            "InvalidArgumentException", f"{endpoint_id} is in {balancer['region']}, the group in {region}"
        )


def _with_defaults(endpoint: Endpoint) -> Endpoint:
    if endpoint.client_ip_preservation is not None:
        return endpoint
    balancer = _LOAD_BALANCER.fullmatch(endpoint.endpoint_id)
    return replace(endpoint, client_ip_preservation=balancer is not None and balancer["kind"] == "app")


def _replace_endpoints(group: EndpointGroup, configurations: list[dict[str, Any]]) -> tuple[Endpoint, ...]:
    """The group's new endpoint list: exactly the configurations, unlisted endpoints removed, defaults for
    what a configuration leaves out; health is the health checks' and stays with an endpoint kept."""
    health = {endpoint.endpoint_id: endpoint.health for endpoint in group.endpoints}
    endpoints: list[Endpoint] = []
    for configuration in configurations:
        endpoint_id = configuration.get("EndpointId")
        if endpoint_id is None:
            raise ServiceError("InvalidArgumentException", "EndpointId is required")
        _check_endpoint(endpoint_id, group.region)
        if endpoint_id in {endpoint.endpoint_id for endpoint in endpoints}:
            raise ServiceError("InvalidArgumentException", f"{endpoint_id} is listed twice")
        endpoint = Endpoint(
            endpoint_id,
            configuration.get("Weight", DEFAULT_WEIGHT),
            configuration.get("ClientIPPreservationEnabled"),
            health.get(endpoint_id, "INITIAL"),
        )
        endpoints.append(_with_defaults(endpoint))
    return tuple(endpoints)


def _describe(group: EndpointGroup) -> dict[str, Any]:
    described: dict[str, Any] = {
        "EndpointGroupArn": group.arn,
        "EndpointGroupRegion": group.region,
        "EndpointDescriptions": [
            {
                "EndpointId": endpoint.endpoint_id,
                "Weight": endpoint.weight,
                "HealthState": endpoint.health,
                "ClientIPPreservationEnabled": endpoint.client_ip_preservation,
            }
            for endpoint in group.endpoints
        ],
        "TrafficDialPercentage": float(group.traffic_dial),
        "HealthCheckPort": group.health_check_port,
        "HealthCheckProtocol": group.health_check_protocol,
        "HealthCheckIntervalSeconds": group.health_check_interval,
        "ThresholdCount": group.threshold_count,
        "PortOverrides": [
            {"ListenerPort": listener, "EndpointPort": endpoint}
            for listener, endpoint in group.port_overrides
        ],
    }
    if group.health_check_path is not None:
        described["HealthCheckPath"] = group.health_check_path
    return described
