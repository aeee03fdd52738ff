"""The memory watchdog: a fake reader across the threshold, a real read, cgroup parsing."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

import resilientdb.testing.fake  # noqa: F401  (registers fake://)
from harness.polling import until
from harness.servers import PostgresServer
from resilientdb import Backoff, ConfigurationError, Options, Supervisor, events
from resilientdb._monitor import Monitor
from resilientdb.config import parse_dsn
from resilientdb.events import EventBus
from resilientdb.memory import MemoryWatchdog, cgroup_memory_limit, read_memory
from resilientdb.testing.fake import FakeBackend
from tests.handles import adapter, supervised

FAST = Backoff(initial=0.005, maximum=0.02, jitter=0.0)
WATCHDOG = "resilientdb-memory-watchdog"


class Reader:
    """Returns the queued samples, then repeats the last one."""

    def __init__(self, *samples: tuple[int, int]) -> None:
        self.samples = deque(samples)
        self.last = samples[-1]
        self.calls = 0

    def __call__(self) -> tuple[int, int]:
        self.calls += 1
        if self.samples:
            self.last = self.samples.popleft()
        return self.last


@asynccontextmanager
async def monitored() -> AsyncIterator[tuple[Monitor, EventBus, FakeBackend]]:
    """A fake backend under its own monitor (the watchdog's unit of work), started."""
    options = Options.build(backoff=FAST, memory_watchdog=False)
    backend = FakeBackend(parse_dsn("fake://db"), options)
    bus = EventBus()
    monitor = Monitor("default", backend, options, bus)
    monitor.start()
    await monitor.wait_first_attempt(1.0)
    try:
        yield monitor, bus, backend
    finally:
        await monitor.aclose()


def task_names() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks()}


async def test_crossing_the_threshold_collects_trims_and_emits() -> None:
    collected: list[int] = []
    reader = Reader((50, 100), (90, 100), (95, 100), (10, 100), (86, 100))
    async with monitored() as (monitor, bus, backend):
        dog = MemoryWatchdog(
            [monitor],
            bus,
            threshold=0.85,
            reader=reader,
            collect=lambda: collected.append(1),
        )
        assert await dog.check() is None  # 50 %: nothing
        assert (collected, backend.trims) == ([], 0)

        backend.trimmable = 3
        event = await dog.check()  # 90 %: crossing
        assert isinstance(event, events.MemoryPressure)
        assert (event.rss, event.limit, event.threshold, event.trimmed) == (90, 100, 0.85, 3)
        assert event.ratio == pytest.approx(0.9) and event.backend == "*"
        assert "90%" in event.message() and "trimmed 3" in event.message()
        assert (len(collected), backend.trims) == (1, 1)

        # Still above: the actions run again, the event is not repeated within a minute.
        assert await dog.check() is None
        assert (len(collected), backend.trims) == (2, 2)

        assert await dog.check() is None  # back below: re-armed
        again = await dog.check()  # 86 %: a new crossing, a new event
        assert again is not None and again.trimmed == 0
        assert (dog.samples, dog.pressured) == (5, 3)


async def test_actions_are_configurable_and_trimming_needs_a_connected_backend() -> None:
    options = Options.build(backoff=FAST, memory_watchdog=False)
    backend = FakeBackend(parse_dsn("fake://db"), options)
    monitor, bus = Monitor("default", backend, options, EventBus()), EventBus()
    collected: list[int] = []
    dog = MemoryWatchdog(
        [monitor],
        bus,
        actions=frozenset(),
        reader=Reader((99, 100)),
        collect=lambda: collected.append(1),
    )
    event = await dog.check()  # not started: the backend is closed, nothing to trim anyway
    assert event is not None and (collected, backend.trims) == ([], 0)
    dog = MemoryWatchdog([monitor], bus, actions={"trim"}, reader=Reader((99, 100)))
    await dog.check()
    assert backend.trims == 0  # only a connected backend is trimmed


async def test_supervisor_runs_the_watchdog_task_and_delivers_the_event(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    real_collect = gc.collect

    def counting_collect(*args: Any) -> int:
        calls.append(1)
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", counting_collect)
    failures = 0

    def flaky_reader() -> tuple[int, int]:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise OSError("cgroup file vanished")  # the watchdog must survive this
        return (900, 1000)

    sup = supervised(
        "fake://db",
        backoff=FAST,
        memory_interval=0.01,
        memory_threshold=0.5,
        memory_reader=flaky_reader,
    )
    backend = adapter(sup)
    assert isinstance(backend, FakeBackend)
    backend.trimmable = 2
    seen: list[events.MemoryPressure] = []
    sup.on(events.MemoryPressure, seen.append)
    with caplog.at_level(logging.WARNING, logger="resilientdb"):
        async with sup:
            assert WATCHDOG in task_names()
            await until(lambda: seen)
            dog = sup.memory_watchdog
            assert dog is not None and dog.samples >= 1
        assert WATCHDOG not in task_names()
    [event] = seen[:1]
    assert (event.rss, event.limit, event.ratio, event.threshold) == (900, 1000, 0.9, 0.5)
    assert event.trimmed == 2 and backend.trims >= 1 and calls
    assert failures == 2
    assert "memory watchdog sample failed" in caplog.text
    assert "memory pressure: 900 of 1000 bytes" in caplog.text


async def test_off_switch() -> None:
    sup = Supervisor("fake://db", backoff=FAST, memory_watchdog=False, memory_interval=0.01)
    async with sup:
        await asyncio.sleep(0.03)
        assert WATCHDOG not in task_names() and sup.memory_watchdog is None


def test_options_are_validated() -> None:
    for bad in (
        {"memory_threshold": 0},
        {"memory_threshold": 1.5},
        {"memory_threshold": True},
        {"memory_interval": 0},
        {"memory_actions": "gc"},
        {"memory_actions": {"gc", "swap"}},
        {"memory_watchdog": "yes"},
        {"memory_reader": 42},
    ):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            Supervisor("fake://db", **bad)
    ok = Supervisor("fake://db", memory_actions=["gc"], memory_threshold=1)
    assert ok.db.options.memory_actions == frozenset({"gc"})


def test_one_real_psutil_read() -> None:
    rss, limit = read_memory()
    assert rss > 1_000_000  # a Python process with pytest loaded is well past 1 MB
    assert rss < limit <= psutil.virtual_memory().total


# --- cgroup files ---------------------------------------------------------------------------


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    write(tmp_path / "proc", "0::/\n")
    write(tmp_path / "cg" / "memory.max", "max\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "proc") is None


def test_cgroup_v2_number(tmp_path: Path) -> None:
    write(tmp_path / "proc", "0::/\n")
    write(tmp_path / "cg" / "memory.max", "536870912\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "proc") == 536_870_912


def test_cgroup_v2_nested_takes_the_lowest_ancestor_limit(tmp_path: Path) -> None:
    write(tmp_path / "proc", "0::/kubepods/pod1/ctr\n")
    write(tmp_path / "cg" / "kubepods" / "pod1" / "ctr" / "memory.max", "max\n")
    write(tmp_path / "cg" / "kubepods" / "pod1" / "memory.max", "1073741824\n")
    write(tmp_path / "cg" / "kubepods" / "memory.max", "4294967296\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "proc") == 1_073_741_824


def test_cgroup_v1_huge_number_means_no_limit(tmp_path: Path) -> None:
    write(tmp_path / "proc", "12:memory:/\n11:cpu,cpuacct:/\n")
    write(tmp_path / "cg" / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "proc") is None


def test_cgroup_v1_number(tmp_path: Path) -> None:
    write(tmp_path / "proc", "12:memory:/docker/abc\n")
    write(tmp_path / "cg" / "memory" / "memory.limit_in_bytes", "268435456\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "proc") == 268_435_456


def test_cgroup_missing_or_garbage_files_mean_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(tmp_path / "none", tmp_path / "none-proc") is None
    write(tmp_path / "cg" / "memory.max", "not a number\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "none-proc") is None


async def test_postgres_trims_idle_connections_down_to_min_size(pg: PostgresServer) -> None:
    sup = supervised(
        pg.dsn(), min_size=1, max_size=4, memory_interval=3600, memory_reader=Reader((99, 100))
    )
    async with sup:
        backend = adapter(sup)
        held = [sup.db.acquire() for _ in range(4)]
        for cm in held:
            await cm.__aenter__()
        await held[0].__aexit__(None, None, None)  # one idle, three in use
        stats = backend.stats()
        assert (stats.size, stats.idle, stats.in_use) == (4, 1, 3)
        assert await backend.trim_idle() == 1  # connections in use are never cut
        for cm in held[1:]:
            await cm.__aexit__(None, None, None)
        assert backend.stats().idle == 3
        dog = sup.memory_watchdog
        assert dog is not None
        event = await dog.check()
        assert event is not None and event.trimmed == 2
        stats = backend.stats()
        assert (stats.size, stats.idle) == (1, 1)  # down to min_size
        # Seen from the server: only the floor connection is left (the one asking).
        count = "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user"
        deadline = time.monotonic() + 10
        while (n := await sup.db.fetchval(count)) != 1:
            assert time.monotonic() < deadline, f"{n} server connections remain"
            await asyncio.sleep(0.05)
