"""A read replayed inside the backend's read-only transaction (``BEGIN READ ONLY``, the
query, the ending) stays within the call's deadline as a whole: each statement gets what is
left of it, not a fresh bound of its own."""

from __future__ import annotations

import asyncio

import pytest

import resilientdb.testing.fake  # noqa: F401  (registers fake://)
from resilientdb import Backoff, ResilientDBError
from resilientdb.backends.base import BackendFacts
from resilientdb.backends.registry import register
from resilientdb.testing.fake import FakeBackend, FakeConnectionLost
from tests.handles import adapter, supervised


class GuardedFake(FakeBackend):
    """Replays of reads run in a read-only transaction, as on PostgreSQL and MariaDB."""

    facts = BackendFacts("postgresql", atomic_batch=True, readonly_guard=("BEGIN", "COMMIT"))


register("fakeguarded", GuardedFake)


async def test_a_guarded_replay_ends_within_the_deadline() -> None:
    sup = supervised("fakeguarded://db", backoff=Backoff(initial=0.005, maximum=0.02))
    backend = adapter(sup)
    assert isinstance(backend, GuardedFake)
    async with sup:
        backend.fail_next(FakeConnectionLost("reply lost"), sent=True)
        backend.delay = 0.4  # every statement of the replay is slow
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ResilientDBError) as caught:
            await sup.db.fetchval("SELECT 1", timeout=0.6)
        elapsed = loop.time() - started
        assert "deadline" in str(caught.value)
        assert ("execute", "BEGIN") in backend.executed  # the replay really was guarded
        assert elapsed < 0.75, f"the call took {elapsed:.2f}s with timeout=0.6"
