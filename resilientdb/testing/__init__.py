"""Test helpers for users of resilientdb: fault injection for their own test suites, and a
handle on the adapters a supervisor drives."""

from resilientdb.testing.adapters import Adapters
from resilientdb.testing.proxy import FaultProxy, ProxyMode

__all__ = ["Adapters", "FaultProxy", "ProxyMode"]
