"""Supervisors whose adapters a test can reach, through the public ``backend_factory``, and
the events they emit (``Recorder``).

``supervised(dsn, **options)`` is ``Supervisor(dsn, **options)`` that remembers the adapters it
built; ``adapter(sup)`` (or ``adapter(sup, "cache")``) returns one of them.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from resilientdb import BackendConfig, Supervisor, events
from resilientdb.testing import Adapters

_BUILT: weakref.WeakKeyDictionary[Supervisor, Adapters] = weakref.WeakKeyDictionary()


def supervised(dsn: str | BackendConfig | dict[str, Any], **options: Any) -> Supervisor:
    adapters = Adapters()
    sup = Supervisor(dsn, backend_factory=adapters, **options)
    _BUILT[sup] = adapters
    return sup


def adapter(sup: Supervisor, name: str = "default") -> Any:
    return _BUILT[sup][name]


class Recorder:
    """Every event a supervisor emits, in order (delivered by its event task)."""

    def __init__(self, sup: Supervisor) -> None:
        self.events: list[events.Event] = []
        sup.on(events.Event, self.events.append)

    def of(self, *kinds: type[events.Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kinds)]

    def states(self) -> list[str]:
        return [e.new.value for e in self.of(events.StateChanged)]

    async def settle(self) -> None:
        """Let the event bus deliver what is queued (it runs on a background task)."""
        await asyncio.sleep(0.2)
