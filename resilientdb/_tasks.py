"""The supervisor's background tasks, owned by one task group.

A ``Supervisor`` is started and closed in two separate awaits (``start()`` and ``aclose()``,
often from a web framework's lifespan hooks), while ``asyncio.TaskGroup`` is scoped to one
``async with`` block. Rather than entering a task group by hand across those two awaits, one
root task holds an ``asyncio.TaskGroup`` open for the supervisor's whole life, and every
background task (each backend's reconnect loop, the event delivery, the memory watchdog,
connections given back after a timeout) is a child of it. ``aclose`` ends the root, and the
group guarantees that no child outlives it.

Two deliberate differences from a bare ``TaskGroup``: a child that raises is logged, never
allowed to cancel its siblings (one backend's bug must not stop the supervision of the
others), and children still running when the group closes get a grace period before they are
cancelled (a connection being given back should finish).

anyio is not used: the project runs only on asyncio (the drivers it supervises are asyncio
libraries), and asyncio's own TaskGroup gives the structure needed without a dependency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["Spawn", "TaskGroup", "finish", "spawn_unowned"]

T = TypeVar("T")
logger = logging.getLogger("resilientdb")


class TaskGroup:
    """Owns background tasks from ``start()`` to ``aclose()``; no task outlives it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._group: asyncio.TaskGroup | None = None
        self._root: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._children: set[asyncio.Task[Any]] = set()
        self._grace = 5.0

    @property
    def running(self) -> int:
        """How many children are running now (tests use it to prove nothing leaked)."""
        return len(self._children)

    async def start(self) -> None:
        """Open the group; returns once ``spawn`` may be called."""
        if self._root is not None:
            return
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        self._stop = asyncio.Event()
        self._root = asyncio.create_task(self._hold(opened), name=f"resilientdb-{self.name}")
        await opened

    async def _hold(self, opened: asyncio.Future[None]) -> None:
        assert self._stop is not None
        async with asyncio.TaskGroup() as group:
            self._group = group
            opened.set_result(None)
            await self._stop.wait()
            self._group = None
            # The owners have closed their parts; whatever is left gets a grace period.
            if self._children:
                await asyncio.wait(set(self._children), timeout=self._grace)
            for child in self._children:
                child.cancel()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T | None]:
        """Run ``coro`` as a child of the group. Its exceptions are logged, not propagated."""
        group = self._group
        if group is not None:
            task = group.create_task(self._guarded(coro, name), name=name)
        else:
            # Only a caller finishing after the supervisor closed (giving back a connection
            # to a closed pool) gets here: the work still runs, unowned, and ends promptly.
            task = asyncio.ensure_future(self._guarded(coro, name))
        self._children.add(task)
        task.add_done_callback(self._children.discard)
        return task

    async def _guarded(self, coro: Coroutine[Any, Any, T], name: str) -> T | None:
        try:
            return await coro
        except Exception:
            logger.exception("resilientdb background task %s failed", name)
            return None

    async def aclose(self, grace: float = 5.0) -> None:
        """Close the group: children get ``grace`` seconds, then are cancelled."""
        root, self._root = self._root, None
        if root is None or self._stop is None:
            return
        self._grace = grace
        self._stop.set()
        # Shielded: a caller cancelled while closing must not leave the children behind; the
        # root finishes on its own within the grace period.
        await asyncio.shield(root)


Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


def spawn_unowned(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """The ``spawn`` of a part used on its own, outside a supervisor (tests, the CLI)."""
    return asyncio.create_task(coro, name=name)


async def finish(task: asyncio.Task[Any] | None, grace: float = 0.0) -> None:
    """End ``task``, the one way every part stops its own: ``grace`` seconds to end by itself
    (shielded, so that the closer being cancelled does not cut a drain short), then cancelled
    and waited for. Never raises what the task raised."""
    if task is None:
        return
    if grace > 0 and not task.done():
        await asyncio.wait({task}, timeout=grace)
    # Cancelled again until it ends: code below us (a driver) may swallow one cancellation or
    # turn it into an error, and a loop that carries on after errors would then never end.
    # asyncio.wait neither raises the task's error nor cancels the task when the closer is
    # itself cancelled (that CancelledError is the closer's own, and propagates).
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    error = None if task.cancelled() else task.exception()
    if error is not None:
        logger.error("resilientdb background task %s failed", task.get_name(), exc_info=error)
