"""The engine's handling of a write refused for the node's role (``wrong_node``), driven by
the scripted fake backend: replayed after the pool is retired, the caller's own error when
the node still fits, and no connection kept when the caller is cancelled mid-check."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import resilientdb.testing.fake  # noqa: F401  (registers fake://)
from resilientdb import Backoff, OutcomeUnknown, State
from resilientdb.backends.base import BackendFacts
from resilientdb.backends.registry import register
from resilientdb.testing.fake import FakeBackend
from tests.handles import adapter, supervised

FAST = Backoff(initial=0.005, maximum=0.02, jitter=0.0)


class ReadOnlyRefusal(Exception):
    """What a server answers a write under read-only (25006, 1290)."""


class MySQLishFake(FakeBackend):
    """A batch commits row by row, as on MySQL."""

    facts = BackendFacts("mysql", atomic_batch=False, readonly_guard=None)


register("fakemysql", MySQLishFake)


def make(verdict: Any, scheme: str = "fake") -> tuple[Any, FakeBackend]:
    sup = supervised(f"{scheme}://db", backoff=FAST)
    backend = adapter(sup)
    assert isinstance(backend, FakeBackend)
    backend.wrong_node = verdict  # type: ignore[attr-defined]
    return sup, backend


async def test_refused_for_the_role_is_replayed_after_the_pool_is_retired() -> None:
    async def wrong(exc: BaseException, conn: Any, in_transaction: bool) -> bool:
        return isinstance(exc, ReadOnlyRefusal)

    sup, backend = make(wrong)
    async with sup:
        backend.fail_next(ReadOnlyRefusal("read-only"))
        assert await sup.db.execute("INSERT INTO t VALUES (1)") == "OK"  # not idempotent
        assert backend.refreshes >= 1
        assert [q for _, q in backend.executed].count("INSERT INTO t VALUES (1)") == 2
        assert sup.state is State.CONNECTED


async def test_a_text_that_may_have_committed_in_parts_is_outcome_unknown() -> None:
    async def wrong(exc: BaseException, conn: Any, in_transaction: bool) -> bool:
        return True

    sup, backend = make(wrong, "fakemysql")
    async with sup:
        backend.fail_next(ReadOnlyRefusal("read-only"))
        with pytest.raises(OutcomeUnknown):
            await sup.db.executemany("INSERT INTO t VALUES (%s)", [(1,), (2,)])


async def test_the_node_still_fits_the_error_is_the_callers() -> None:
    async def fits(exc: BaseException, conn: Any, in_transaction: bool) -> bool:
        return False

    sup, backend = make(fits)
    async with sup:
        backend.fail_next(ReadOnlyRefusal("read-only"))
        with pytest.raises(ReadOnlyRefusal):
            await sup.db.execute("INSERT INTO t VALUES (1)", idempotent=True)
        assert backend.refreshes == 0


async def test_cancelled_while_asking_the_node_gives_the_connection_back() -> None:
    asking = asyncio.Event()

    async def hangs(exc: BaseException, conn: Any, in_transaction: bool) -> bool:
        asking.set()
        await asyncio.sleep(3600)
        return True

    sup, backend = make(hangs)
    async with sup:
        backend.fail_next(ReadOnlyRefusal("read-only"))
        call = asyncio.create_task(sup.db.execute("INSERT INTO t VALUES (1)"))
        await asyncio.wait_for(asking.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(50):  # the release runs in the background: bounded wait
            if backend.in_use == 0:
                break
            await asyncio.sleep(0.01)
        assert backend.in_use == 0


async def test_the_role_check_keeps_the_call_within_its_deadline() -> None:
    """Asking the node its role after a refused write is part of the call: a node that does
    not answer (a partition just after the refusal) cannot hold the caller past ``timeout``."""

    async def hangs(exc: BaseException, conn: Any, in_transaction: bool) -> bool:
        await asyncio.sleep(30)
        return True

    sup, backend = make(hangs)
    async with sup:
        backend.fail_next(ReadOnlyRefusal("read-only"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadOnlyRefusal):  # not confirmed in time: the server's own answer
            await sup.db.execute("INSERT INTO t VALUES (1)", timeout=0.3)
        assert loop.time() - started < 0.6
