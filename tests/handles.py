"""Supervisors whose adapters a test can reach, through the public ``backend_factory``.

``supervised(dsn, **options)`` is ``Supervisor(dsn, **options)`` that remembers the adapters it
built; ``adapter(sup)`` (or ``adapter(sup, "cache")``) returns one of them.
"""

from __future__ import annotations

import weakref
from typing import Any

from resilientdb import BackendConfig, Supervisor
from resilientdb.testing import Adapters

_BUILT: weakref.WeakKeyDictionary[Supervisor, Adapters] = weakref.WeakKeyDictionary()


def supervised(dsn: str | BackendConfig | dict[str, Any], **options: Any) -> Supervisor:
    adapters = Adapters()
    sup = Supervisor(dsn, backend_factory=adapters, **options)
    _BUILT[sup] = adapters
    return sup


def adapter(sup: Supervisor, name: str = "default") -> Any:
    return _BUILT[sup][name]
