"""HTTP plumbing every probe shares (session, error wording, failed result) and the liveness probe."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable

import aiohttp

from controlplane.policy import ProbeSettings, Region
from probes.observation import Observation, ProbeKind

Clock = Callable[[], float]

# What a probe turns into a failed Observation. Anything else is a bug and is left to propagate.
PROBE_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ValueError)
_MAX_ERROR = 160


def connection_limit() -> int:
    """Concurrent probe connections: half the process's file descriptors, the rest kept for the daemon.

    Running out of descriptors would fail every probe at once and look like every region died.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 4096 if soft == resource.RLIM_INFINITY else max(64, soft // 2)


def make_session(limit: int | None = None) -> aiohttp.ClientSession:
    """One session for every probe: pooled keep-alive connections, no cookies, no environment proxies.

    TLS verification stays on in the connector; a probe turns it off per request only when the policy's
    `probes.tls_verify` says so, which keeps a hot reload of that setting effective without a new session.
    Timeouts are the probes' own `asyncio.timeout`, so aiohttp's timers are switched off.
    """
    connector = aiohttp.TCPConnector(limit=connection_limit() if limit is None else limit, ssl=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        raise_for_status=False,
    )


def describe_error(exc: BaseException, timeout: float) -> str:
    """A short reason, free of headers and URLs with credentials, for Observation.error."""
    if isinstance(exc, TimeoutError):
        text = f"timed out after {timeout:g}s"
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = (
            getattr(exc.certificate_error, "verify_message", None) or type(exc.certificate_error).__name__
        )
        text = f"TLS certificate rejected: {reason}"
    elif isinstance(exc, aiohttp.ClientSSLError):
        text = "TLS handshake failed"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        text = f"connect failed: {os.strerror(errno) if errno else type(exc.os_error).__name__}"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        text = "server closed the connection"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        text = "response body cut short"
    elif isinstance(exc, aiohttp.ClientResponseError):
        text = f"bad HTTP response: {exc.message}"
    elif isinstance(exc, OSError) and exc.errno:
        text = os.strerror(exc.errno)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:_MAX_ERROR]


def failed(region: Region, kind: ProbeKind, started: float, now: Clock, error: str) -> Observation:
    return Observation(
        region.name, kind, False, now(), time.perf_counter() - started, error=error[:_MAX_ERROR]
    )


async def probe_liveness(
    session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Clock = time.time
) -> Observation:
    """GET {endpoint}{liveness.path}: ok when the status is the expected one (and the body matches)."""
    liveness = settings.liveness
    started = time.perf_counter()
    try:
        async with (
            asyncio.timeout(settings.timeout),
            # Redirects are not followed: a 302 to a login page is not a healthy server.
            session.get(
                region.endpoint + liveness.path, ssl=settings.tls_verify, allow_redirects=False
            ) as resp,
        ):
            # Read the body even when unused, so the connection goes back to the pool for reuse.
            body = await resp.read()
    except PROBE_ERRORS as exc:
        return failed(region, ProbeKind.LIVENESS, started, now, describe_error(exc, settings.timeout))
    if resp.status != liveness.expect_status:
        return failed(
            region, ProbeKind.LIVENESS, started, now, f"HTTP {resp.status}, expected {liveness.expect_status}"
        )
    if liveness.body_match is not None and liveness.body_match not in body.decode("utf-8", "replace"):
        return failed(region, ProbeKind.LIVENESS, started, now, f"body lacks {liveness.body_match!r}")
    return Observation(region.name, ProbeKind.LIVENESS, True, now(), time.perf_counter() - started)
