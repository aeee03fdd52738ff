"""Test helpers for users of resilientdb: fault injection for their own test suites."""

from resilientdb.testing.proxy import FaultProxy, ProxyMode

__all__ = ["FaultProxy", "ProxyMode"]
