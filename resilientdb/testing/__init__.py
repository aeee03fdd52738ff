"""Test helpers for users of resilientdb: fault injection for their own test suites, a
throwaway PostgreSQL, and a handle on the adapters a supervisor drives. The pytest fixtures
are in ``resilientdb.testing.pytest_plugin`` (docs/testing.md)."""

from resilientdb.testing.adapters import Adapters
from resilientdb.testing.outage import Outage
from resilientdb.testing.postgres import PostgresError, TemporaryPostgres
from resilientdb.testing.proxy import FaultProxy, ProxyMode

__all__ = ["Adapters", "FaultProxy", "Outage", "PostgresError", "ProxyMode", "TemporaryPostgres"]
