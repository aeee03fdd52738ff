"""A ``backend_factory`` that keeps a handle on the adapters a supervisor builds.

For tests that need to act on a backend from below the supervisor (close its pool, count its
connections, inject a fault into the fake backend) without reaching into private attributes::

    adapters = Adapters()
    sup = Supervisor("fake://db", backend_factory=adapters)
    fake = adapters["default"]      # the FakeBackend the supervisor drives
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..backends import registry
from ..backends.base import Backend
from ..config import DSN, Options

# (backend name, parsed DSN, merged options) -> adapter: what Supervisor's backend_factory takes.
BackendFactory = Callable[[str, DSN, Options], Backend]


def default_backend(name: str, dsn: DSN, options: Options) -> Backend:
    """The adapter the DSN's scheme names (what a Supervisor builds by default)."""
    return registry.create(dsn, options)


__all__ = ["Adapters"]


class Adapters(Mapping[str, Any]):
    """Builds each backend's adapter with ``factory`` (the DSN's own by default) and keeps it
    under the backend's name. Typed ``Any`` so that tests reach the concrete adapter's API."""

    def __init__(self, factory: BackendFactory = default_backend) -> None:
        self._factory = factory
        self._built: dict[str, Backend] = {}

    def __call__(self, name: str, dsn: DSN, options: Options) -> Backend:
        backend = self._factory(name, dsn, options)
        self._built[name] = backend
        return backend

    def __getitem__(self, name: str) -> Any:
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built)

    def __len__(self) -> int:
        return len(self._built)
