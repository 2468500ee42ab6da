"""Shared test plumbing: binaries that integration tests need."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    """Path of a system binary; skip when absent, but fail under CI=true where .ci/run installs it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package provides it; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return path
