"""The root of every error the plane raises on purpose, and how the CLI and the admin API report each kind."""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Anything the plane refuses or cannot do, said in words a person can act on (never a traceback).

    `exit_code` is what the CLI exits with, `http_status` what the admin API answers with.
    """

    exit_code: int = 1
    http_status: int = 500


class InvalidInput(ControlPlaneError):
    """A file or request that cannot be used as it is: the caller must change it."""

    exit_code = 1
    http_status = 400


class Unavailable(ControlPlaneError):
    """Something the plane depends on is not there right now (a port, a peer, a binary); retry later."""

    exit_code = 2
    http_status = 503
