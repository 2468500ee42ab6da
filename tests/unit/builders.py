"""Moved to tests/builders.py; kept so tests that still import it from here keep working."""

from tests.builders import REGIONS, all_healthy, policy, view

__all__ = ["REGIONS", "all_healthy", "policy", "view"]
