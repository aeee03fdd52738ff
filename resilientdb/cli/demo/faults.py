"""The demo's faults: real ones, applied to both runs (resilientdb and the raw driver) at once.

SQLite, in a temporary directory:

- every open connection closed underneath its user (as code elsewhere in the process, or a
  dying worker thread, would);
- another OS process holding the write lock (``BEGIN IMMEDIATE``) for a while;
- the database file moved away and back (a backup tool, a volume remount).

A network database, through a :class:`~resilientdb.testing.FaultProxy` per run:

- every connection reset (TCP RST);
- an outage: connections reset and new ones refused for a while (a restart);
- a partition: the proxy holds every byte for a while, then delivers them (a blackhole).

Each fault records when it began and when it was lifted, in seconds since the run began.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from ...testing import FaultProxy

__all__ = [
    "CloseUnderneath",
    "Fault",
    "FaultRecord",
    "HoldWriteLock",
    "MoveFileAway",
    "NetworkOutage",
    "NetworkPartition",
    "NetworkReset",
    "SQLiteTarget",
]

Clock = Callable[[], float]

# Runs in another OS process: takes SQLite's write lock, says so, holds it, lets go.
_LOCK_HOLDER = """
import sqlite3, sys, time
uri, seconds = sys.argv[1], float(sys.argv[2])
conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(seconds)
conn.execute("ROLLBACK")
conn.close()
"""


@dataclass(frozen=True)
class FaultRecord:
    """One injected fault: ``start`` and ``end`` (lifted) in seconds since the run began."""

    name: str
    start: float
    end: float
    detail: str


class Fault(Protocol):
    name: str

    async def inject(self, clock: Clock) -> FaultRecord: ...


@dataclass
class SQLiteTarget:
    """One run's database file, and how to find the connections open on it."""

    label: str
    path: str
    connections: Callable[[], Sequence[Any]]  # aiosqlite connections opened so far


def _is_open(conn: Any) -> bool:
    # aiosqlite exposes no public "closed" flag; these two are what its own checks read.
    return getattr(conn, "_connection", None) is not None and getattr(conn, "_running", False)


def _counts(labels: Sequence[str], counts: Sequence[int], what: str) -> str:
    return ", ".join(f"{label}: {n} {what}" for label, n in zip(labels, counts, strict=True))


@dataclass
class CloseUnderneath:
    targets: Sequence[SQLiteTarget]
    name: str = "every open connection closed underneath"

    async def inject(self, clock: Clock) -> FaultRecord:
        start = clock()
        counts = []
        for target in self.targets:
            conns = [c for c in target.connections() if _is_open(c)]
            counts.append(len(conns))
            closing = asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing, timeout=5)
        detail = _counts([t.label for t in self.targets], counts, "closed")
        return FaultRecord(self.name, start, clock(), detail)


@dataclass
class HoldWriteLock:
    targets: Sequence[SQLiteTarget]
    seconds: float
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"write lock held by another process for {self.seconds:g}s"

    async def inject(self, clock: Clock) -> FaultRecord:
        procs: list[asyncio.subprocess.Process] = []
        try:
            for target in self.targets:
                uri = f"file:{quote(target.path)}?mode=rw"  # never creates a file
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-c",
                        _LOCK_HOLDER,
                        uri,
                        str(self.seconds),
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                )
            # Both locks are taken before the fault counts as begun.
            async with asyncio.timeout(30):
                for proc in procs:
                    assert proc.stdout is not None
                    line = await proc.stdout.readline()
                    if line.strip() != b"locked":
                        raise RuntimeError("the lock-holding process could not take the lock")
            start = clock()
            async with asyncio.timeout(self.seconds + 30):
                for proc in procs:
                    await proc.wait()
            end = clock()
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        pids = ", ".join(str(p.pid) for p in procs)
        return FaultRecord(self.name, start, end, f"pids {pids}")


@dataclass
class MoveFileAway:
    targets: Sequence[SQLiteTarget]
    seconds: float
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"database file moved away for {self.seconds:g}s"

    async def inject(self, clock: Clock) -> FaultRecord:
        moved: list[tuple[str, str]] = []
        try:
            for target in self.targets:
                away = target.path + ".moved-away"
                os.rename(target.path, away)
                moved.append((away, target.path))
            start = clock()
            await asyncio.sleep(self.seconds)
        finally:
            for away, path in moved:
                os.replace(away, path)
        return FaultRecord(self.name, start, clock(), "renamed and renamed back")


@dataclass
class NetworkReset:
    proxies: Sequence[FaultProxy]
    labels: Sequence[str]
    name: str = "every connection reset (TCP RST)"

    async def inject(self, clock: Clock) -> FaultRecord:
        start = clock()
        counts = [p.reset() for p in self.proxies]
        return FaultRecord(self.name, start, clock(), _counts(self.labels, counts, "reset"))


@dataclass
class NetworkOutage:
    proxies: Sequence[FaultProxy]
    labels: Sequence[str]
    seconds: float
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"server down (reset, then refusing) for {self.seconds:g}s"

    async def inject(self, clock: Clock) -> FaultRecord:
        start = clock()
        try:
            for proxy in self.proxies:
                proxy.reset()
                proxy.refuse()
            await asyncio.sleep(self.seconds)
        finally:
            for proxy in self.proxies:
                proxy.pass_through()
        refused = [p.stats.refused for p in self.proxies]
        detail = _counts(self.labels, refused, "refused so far")
        return FaultRecord(self.name, start, clock(), detail)


@dataclass
class NetworkPartition:
    proxies: Sequence[FaultProxy]
    labels: Sequence[str]
    seconds: float
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"network partition (blackhole) for {self.seconds:g}s"

    async def inject(self, clock: Clock) -> FaultRecord:
        start = clock()
        try:
            for proxy in self.proxies:
                proxy.blackhole()
            await asyncio.sleep(self.seconds)
        finally:
            for proxy in self.proxies:
                proxy.pass_through()
        return FaultRecord(self.name, start, clock(), "held bytes delivered on healing")
