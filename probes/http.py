"""HTTP plumbing every probe shares (session, error wording, failed result) and the liveness probe."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import time
from collections.abc import Callable

import aiohttp

from controlplane import __version__
from controlplane.policy import ProbeSettings, Region
from probes.observation import Observation, ProbeKind

Clock = Callable[[], float]

# What a probe turns into a failed Observation. Anything else is a bug and is left to propagate.
PROBE_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ValueError)
_MAX_ERROR = 160
# The plane's own limits, not the region's fault: a probe that fails with one of these saw nothing.
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
# /health is empty or a short status document, and body_match may point liveness at /v1/models, a few KiB
# even with many models. 64 KiB keeps both with room, and bounds what an endless body costs per probe.
LIVENESS_BODY_CAP = 64 * 1024


class RefusedBody(ValueError):
    """A response body the probe would not read (over its cap, or compressed): the message says which."""


def connection_limit() -> int:
    """Concurrent probe connections: half the process's file descriptors, the rest kept for the daemon.

    Running out of descriptors would fail every probe at once and look like every region died.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 4096 if soft == resource.RLIM_INFINITY else max(64, soft // 2)


# Names the probes in the servers' access logs, so operators can tell them from clients (as Route 53's
# checkers do); the same header lets a simulated region count each caller's requests apart.
PROBE_USER_AGENT = f"llm-failover-plane-probe/{__version__}"


def make_session(limit: int | None = None, user_agent: str = PROBE_USER_AGENT) -> aiohttp.ClientSession:
    """One session for every probe: pooled keep-alive connections, no cookies, no environment proxies.

    TLS verification stays on in the connector; a probe turns it off per request only when the policy's
    `probes.tls_verify` says so, which keeps a hot reload of that setting effective without a new session.
    Timeouts are the probes' own `asyncio.timeout`, so aiohttp's timers are switched off.
    Bodies are never decompressed: a few KiB of gzip can inflate to GiBs on the event loop. Asking for
    `identity` keeps honest servers from compressing; the probes refuse (or cap raw) what still is.
    """
    connector = aiohttp.TCPConnector(limit=connection_limit() if limit is None else limit, ssl=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        raise_for_status=False,
        auto_decompress=False,
        headers={"Accept-Encoding": "identity", "User-Agent": user_agent},
    )


def refuse_encoded(resp: aiohttp.ClientResponse) -> None:
    """RefusedBody unless the body comes as sent (no Content-Encoding, or identity)."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise RefusedBody(f"Content-Encoding {encoding[:24]!r} refused, identity was asked for")


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, read chunk by chunk and never more than cap + 1 bytes of it; RefusedBody past `cap`."""
    body = bytearray()
    while chunk := await resp.content.read(cap + 1 - len(body)):
        body += chunk
        if len(body) > cap:
            # The rest is unread, so this connection must not go back to the pool.
            resp.close()
            raise RefusedBody(f"body over {cap} bytes")
    return bytes(body)


def out_of_resources(exc: BaseException) -> bool:
    """Whether the plane itself ran out (descriptors, buffers, memory), also when aiohttp wraps the OSError."""
    seen: BaseException | None = exc
    # aiohttp's ClientConnectorError and ClientOSError are OSErrors carrying the errno; a chain is followed
    # only a few links, so a cyclic one cannot loop.
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in _OUT_OF_RESOURCES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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
    elif isinstance(exc, RefusedBody):
        text = str(exc)
    elif isinstance(exc, aiohttp.ClientResponseError):
        text = f"bad HTTP response: {exc.message}"
    elif isinstance(exc, OSError) and exc.errno:
        text = os.strerror(exc.errno)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:_MAX_ERROR]


def failed(
    region: Region, kind: ProbeKind, started: float, now: Clock, error: str, inconclusive: bool = False
) -> Observation:
    return Observation(
        region.name,
        kind,
        False,
        now(),
        time.perf_counter() - started,
        error=error[:_MAX_ERROR],
        inconclusive=inconclusive,
    )


def errored(
    region: Region, kind: ProbeKind, started: float, now: Clock, exc: BaseException, timeout: float
) -> Observation:
    """The failed Observation for a probe that raised one of PROBE_ERRORS."""
    return failed(region, kind, started, now, describe_error(exc, timeout), out_of_resources(exc))


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
            if liveness.body_match is not None:
                refuse_encoded(resp)  # matching text against compressed bytes would mislead
            # Read the body even when unused, so the connection goes back to the pool for reuse. Without
            # body_match a compressed body is read raw: the status is what counts, and the cap bounds it.
            body = await read_capped(resp, LIVENESS_BODY_CAP)
    except PROBE_ERRORS as exc:
        return errored(region, ProbeKind.LIVENESS, started, now, exc, settings.timeout)
    if resp.status != liveness.expect_status:
        return failed(
            region, ProbeKind.LIVENESS, started, now, f"HTTP {resp.status}, expected {liveness.expect_status}"
        )
    if liveness.body_match is not None and liveness.body_match not in body.decode("utf-8", "replace"):
        return failed(region, ProbeKind.LIVENESS, started, now, f"body lacks {liveness.body_match!r}")
    return Observation(region.name, ProbeKind.LIVENESS, True, now(), time.perf_counter() - started)
