"""The memory watchdog: act before the kernel's OOM killer does.

Every ``memory_interval`` seconds the watchdog reads the process's resident memory and the
limit that actually applies to it: the cgroup's (a container's ``memory.max`` in cgroup v2,
``memory.limit_in_bytes`` in v1) when one is set, else the machine's total memory. Past
``memory_threshold`` (default 0.85) it runs ``gc.collect()``, closes idle pooled connections
down to ``min_size`` on adapters that can (each one holds buffers and prepared statements),
and emits ``events.MemoryPressure`` with the figures.

The event comes when the ratio crosses the threshold and then at most once per
``REPEAT_EVENT`` seconds while it stays above, so a service that lives near its limit does
not flood the pager; the actions run on every sample above the threshold. The event's
``backend`` is ``"*"``: memory belongs to the process, not to one backend.

One watchdog per supervisor, a named task started with it and stopped at close. A sample that
fails (an unreadable cgroup file, a reader that raises) is logged and the watchdog carries on.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import psutil

from ._monitor import Monitor
from ._states import State
from ._tasks import Spawn, finish, spawn_unowned
from .events import EventBus, MemoryPressure

__all__ = ["MemoryWatchdog", "cgroup_memory_limit", "read_memory"]

logger = logging.getLogger("resilientdb")

MemoryReader = Callable[[], tuple[int, int]]
REPEAT_EVENT = 60.0
# cgroup v1 reports "no limit" as the largest page-aligned 63-bit number (0x7FFFFFFFFFFFF000);
# anything this large is no limit in practice.
_UNLIMITED = 1 << 60
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _read_limit_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED else None


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """``(v2 path, v1 memory path)`` of this process, from ``/proc/self/cgroup``."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _candidates(base: Path, own: str | None) -> list[Path]:
    """``base`` joined with ``own`` and each of its parents, down to ``base`` itself.

    Inside a container with its own cgroup namespace, ``own`` is ``/`` and only ``base``
    counts; on a host, the limit may sit on any ancestor, and the lowest one wins.
    """
    dirs = [base]
    if own and own != "/":
        rel = Path(own.lstrip("/"))
        dirs += [base / p for p in [rel, *rel.parents] if str(p) != "."]
    return dirs


def cgroup_memory_limit(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> int | None:
    """The cgroup memory limit in bytes that applies to this process, or ``None`` for none.

    cgroup v2: ``memory.max`` ("max" means none). v1: ``memory/memory.limit_in_bytes`` (a
    huge number means none). Missing files mean none.
    """
    v2, v1 = _own_cgroups(proc_cgroup)
    files = [d / "memory.max" for d in _candidates(root, v2)]
    files += [d / "memory.limit_in_bytes" for d in _candidates(root / "memory", v1)]
    limits = [v for v in map(_read_limit_file, files) if v is not None]
    return min(limits) if limits else None


def read_memory() -> tuple[int, int]:
    """``(resident bytes of this process, limit bytes)``: the default reader.

    The limit is the cgroup's when it is set and below the machine's memory, else the
    machine's total memory.
    """
    rss = psutil.Process(os.getpid()).memory_info().rss
    total = psutil.virtual_memory().total
    limit = cgroup_memory_limit()
    return rss, total if limit is None else min(limit, total)


class MemoryWatchdog:
    """Samples memory, and past ``threshold`` collects garbage, trims pools, emits an event.

    ``monitors`` are the backends whose idle connections may be trimmed; ``collect``
    replaces ``gc.collect`` (tests). ``check()`` takes one sample and acts on it.
    """

    def __init__(
        self,
        monitors: Iterable[Monitor],
        bus: EventBus,
        *,
        threshold: float = 0.85,
        interval: float = 10.0,
        actions: Collection[str] = frozenset({"gc", "trim"}),
        reader: MemoryReader | None = None,
        collect: Callable[[], object] | None = None,
    ) -> None:
        self.monitors = list(monitors)
        self.bus = bus
        self.threshold = threshold
        self.interval = interval
        self.actions = frozenset(actions)
        self.reader: MemoryReader = reader or read_memory
        self.collect = collect
        self.collections = 0
        self.samples = 0
        self.pressured = 0  # samples above the threshold
        self.last: tuple[int, int] | None = None
        self._above = False
        self._last_event = -float("inf")
        self._task: asyncio.Task[None] | None = None

    def start(self, spawn: Spawn = spawn_unowned) -> None:
        """Start the sampling task (needs a running loop; the supervisor passes its ``spawn``)."""
        if self._task is None:
            self._task = spawn(self._run(), "resilientdb-memory-watchdog")

    async def aclose(self) -> None:
        """Stop the sampling task; idempotent."""
        task, self._task = self._task, None
        await finish(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A broken reader or adapter must not end the watchdog (nor the supervisor).
                logger.exception("resilientdb memory watchdog sample failed; continuing")

    async def check(self) -> MemoryPressure | None:
        """Take one sample; above the threshold act, and return the event when one was emitted."""
        rss, limit = self.reader()
        self.samples += 1
        self.last = (rss, limit)
        if limit <= 0:
            return None
        ratio = rss / limit
        if ratio <= self.threshold:
            self._above = False
            return None
        self.pressured += 1
        if "gc" in self.actions:
            (self.collect or gc.collect)()
            self.collections += 1
        trimmed = await self._trim() if "trim" in self.actions else 0
        now = time.monotonic()
        if self._above and now - self._last_event < REPEAT_EVENT:
            return None
        self._above = True
        self._last_event = now
        event = MemoryPressure(
            backend="*",
            rss=rss,
            limit=limit,
            ratio=ratio,
            threshold=self.threshold,
            trimmed=trimmed,
        )
        self.bus.emit(event)
        return event

    async def _trim(self) -> int:
        """Close idle connections beyond ``min_size`` on every adapter that supports it."""
        total = 0
        for monitor in self.monitors:
            trim = getattr(monitor.backend, "trim_idle", None)
            if trim is None or monitor.state is not State.CONNECTED:
                continue
            try:
                result = trim()
                if inspect.isawaitable(result):
                    result = await result
                total += int(result or 0)
            except Exception:
                logger.exception("trimming idle connections of %r failed", monitor.name)
        return total
