"""COPY through the gate on a real PostgreSQL (the suite's throwaway server), through a proxy
that resets connections: not sent -> replayed; sent -> OutcomeUnknown, or replayed with
idempotent=True; a copy-out never hands the caller the same bytes twice."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from harness.servers import PostgresServer
from resilientdb import (
    CopyInterrupted,
    DatabaseUnavailable,
    NotSupported,
    OutcomeUnknown,
    Supervisor,
    TransactionLost,
)
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

ROWS = [(i, f"row {i}") for i in range(1, 2001)]


@pytest.fixture
async def proxy(pg: PostgresServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(pg.host, pg.port) as p:
        yield p


@pytest.fixture
async def sup(pg: PostgresServer, proxy: FaultProxy) -> AsyncIterator[Supervisor]:
    dsn = with_host(parse_dsn(pg.dsn()), proxy.host, proxy.port)
    async with Supervisor(dsn, min_size=1, max_size=2, connect_timeout=2.0) as s:
        await s.db.execute("DROP TABLE IF EXISTS copied")
        await s.db.execute("CREATE TABLE copied (id int PRIMARY KEY, name text)")
        yield s


async def count(sup: Supervisor) -> int:
    return int(await sup.db.fetchval("SELECT count(*) FROM copied"))


class ResetOnFirstPass(Sequence[tuple[int, str]]):
    """Rows that reset every proxied connection halfway through their first reading."""

    def __init__(self, rows: list[tuple[int, str]], proxy: FaultProxy) -> None:
        self.rows, self.proxy, self.passes = rows, proxy, 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: Any) -> Any:
        return self.rows[i]

    def __iter__(self) -> Iterator[tuple[int, str]]:
        self.passes += 1
        for k, row in enumerate(self.rows):
            if self.passes == 1 and k == len(self.rows) // 2:
                self.proxy.reset()
            yield row


async def test_copy_round_trip_and_inside_a_transaction(sup: Supervisor, tmp_path: Path) -> None:
    db = sup.db
    assert await db.copy_records_to_table("copied", records=ROWS[:10]) == "COPY 10"
    csv = b"".join(f"{i},csv {i}\n".encode() for i in range(100, 105))
    assert await db.copy_to_table("copied", source=memoryview(csv), format="csv") == "COPY 5"
    assert await db.copy_to_table("copied", source=io.BytesIO(b"200,file\n"), format="csv")
    out = io.BytesIO()
    await db.copy_from_query("SELECT id FROM copied WHERE id < $1 ORDER BY id", 4, output=out)
    assert out.getvalue() == b"1\n2\n3\n"
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    assert await db.copy_from_table("copied", output=sink, columns=["id"]) == "COPY 16"
    path = tmp_path / "out.csv"
    await db.copy_from_table("copied", output=path, format="csv", header=True)
    assert path.read_text().splitlines()[0] == "id,name"
    # Inside a transaction: on its connection, rolled back with it.
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.copy_records_to_table("copied", records=[(300, "tx")])
            await db.copy_records_to_table("copied", records=[(301, "joined")])  # joins tx
            assert await tx.fetchval("SELECT count(*) FROM copied WHERE id >= 300") == 2
            raise RuntimeError("roll back")
    assert await count(sup) == 16
    with pytest.raises(FileNotFoundError):  # bytes are a file name to the driver
        await db.copy_to_table("copied", source=csv, format="csv")
    assert db.state.value == "connected" and await count(sup) == 16
    with pytest.raises(TypeError, match="delimter"):
        await db.copy_to_table("copied", source=b"", delimter=",")


async def test_not_sent_is_replayed(sup: Supervisor, proxy: FaultProxy) -> None:
    """The pooled connection dies while idle and no new one can be opened at first: the COPY
    waits at the gate and goes through once, from a one-shot iterator never read before."""
    proxy.reset_stats()
    proxy.reset()
    proxy.refuse()
    await asyncio.sleep(0.2)  # the client has read the reset: its pooled connection is closed
    task = asyncio.create_task(
        sup.db.copy_records_to_table("copied", records=iter(ROWS), timeout=20)
    )
    await asyncio.sleep(0.5)
    assert not task.done()
    assert proxy.stats.refused >= 1  # it did try, and was refused
    proxy.pass_through()
    assert await task == f"COPY {len(ROWS)}"
    assert await count(sup) == len(ROWS)


async def test_sent_raises_outcome_unknown(sup: Supervisor, proxy: FaultProxy) -> None:
    rows = ResetOnFirstPass(ROWS, proxy)
    with pytest.raises(OutcomeUnknown) as caught:
        await sup.db.copy_records_to_table("copied", records=rows)
    assert proxy.stats.resets >= 1 and rows.passes == 1
    assert isinstance(caught.value.__cause__, asyncpg.ConnectionDoesNotExistError | OSError)
    assert await count(sup) == 0  # this time the server rolled the COPY back


async def test_sent_is_replayed_when_idempotent(sup: Supervisor, proxy: FaultProxy) -> None:
    rows = ResetOnFirstPass(ROWS, proxy)
    assert await sup.db.copy_records_to_table("copied", records=rows, idempotent=True)
    assert proxy.stats.resets >= 1 and rows.passes == 2
    assert await count(sup) == len(ROWS)  # once: the interrupted COPY was rolled back


async def test_idempotent_iterator_cannot_be_replayed(sup: Supervisor, proxy: FaultProxy) -> None:
    async def rows() -> AsyncIterator[tuple[int, str]]:
        for k, row in enumerate(ROWS):
            if k == 100:
                proxy.reset()
                await asyncio.sleep(0.05)
            yield row

    with pytest.raises(OutcomeUnknown, match="cannot be read again"):
        await sup.db.copy_records_to_table("copied", records=rows(), idempotent=True)
    assert proxy.stats.resets >= 1
    assert await count(sup) == 0


async def test_copy_to_table_replays_a_seekable_file(sup: Supervisor, proxy: FaultProxy) -> None:
    class ResettingFile(io.BytesIO):
        reads = 0

        def read(self, n: int | None = -1) -> bytes:
            ResettingFile.reads += 1
            if ResettingFile.reads == 2:
                proxy.reset()
            return super().read(min(n or 65536, 65536))

    data = b"".join(f"{i},n{i}\n".encode() for i in range(1, 30001))
    source = ResettingFile(data)
    result = await sup.db.copy_to_table("copied", source=source, format="csv", idempotent=True)
    assert result == "COPY 30000"
    assert proxy.stats.resets >= 1
    assert await count(sup) == 30000


QUERY = "SELECT g, repeat('x', 50) FROM generate_series(1, 50000) g"


async def test_copy_out_to_a_callable_is_not_replayed_after_bytes(
    sup: Supervisor, proxy: FaultProxy
) -> None:
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)
        if len(chunks) == 1:
            proxy.reset()
            await asyncio.sleep(0.05)

    with pytest.raises(CopyInterrupted) as caught:
        await sup.db.copy_from_query(QUERY, output=sink)
    assert proxy.stats.resets >= 1
    assert caught.value.delivered == sum(map(len, chunks)) > 0
    assert caught.value.__cause__ is not None


async def test_copy_out_to_a_seekable_file_is_rewound(sup: Supervisor, proxy: FaultProxy) -> None:
    expected = io.BytesIO()
    await sup.db.copy_from_query(QUERY, output=expected)

    class ResettingOutput(io.BytesIO):
        writes = 0

        def write(self, data: Any) -> int:
            ResettingOutput.writes += 1
            if ResettingOutput.writes == 2:
                proxy.reset()
            return super().write(data)

    out = ResettingOutput()
    out.write(b"kept>")  # what the caller had written before stays
    ResettingOutput.writes = 0
    await sup.db.copy_from_query(QUERY, output=out)
    assert proxy.stats.resets >= 1
    assert out.getvalue() == b"kept>" + expected.getvalue()


async def test_copy_out_of_a_write_is_not_replayed(sup: Supervisor, proxy: FaultProxy) -> None:
    await sup.db.copy_records_to_table("copied", records=ROWS)
    calls = 0

    async def sink(data: bytes) -> None:
        nonlocal calls
        calls += 1
        proxy.reset()
        await asyncio.sleep(0.05)

    with pytest.raises(OutcomeUnknown, match="may write"):
        await sup.db.copy_from_query(
            "DELETE FROM copied RETURNING id, repeat(name, 200)", output=sink
        )
    assert proxy.stats.resets >= 1 and calls >= 1


async def test_other_backends_refuse_before_sending(tmp_path: Path) -> None:
    async with Supervisor(f"sqlite:///{tmp_path / 'x.db'}") as s:
        db = s.db
        calls = [
            db.copy_records_to_table("t", records=[(1,)]),
            db.copy_to_table("t", source=b""),
            db.copy_from_query("SELECT 1", output=io.BytesIO()),
            db.copy_from_table("t", output=io.BytesIO()),
        ]
        for call in calls:
            with pytest.raises(NotSupported, match=r"is sqlite: copy_.* PostgreSQL only"):
                await call
        with pytest.raises(NotSupported, match="LISTEN/NOTIFY"):
            db.listen("x")
        with pytest.raises(NotSupported):
            await db.notify("x", "y")
        assert s.db.statistics().pool.in_use == 0


async def test_server_errors_pass_unchanged_and_transactions_are_lost(
    sup: Supervisor, proxy: FaultProxy
) -> None:
    await sup.db.copy_records_to_table("copied", records=[(1, "a")])
    with pytest.raises(asyncpg.UniqueViolationError):
        await sup.db.copy_records_to_table("copied", records=iter([(2, "b"), (1, "dup")]))
    assert await count(sup) == 1  # one statement: nothing of it stayed
    rows = ResetOnFirstPass(ROWS[5:], proxy)
    with pytest.raises(TransactionLost):
        async with sup.db.transaction() as tx:
            await tx.execute("INSERT INTO copied VALUES (2, 'in tx')")
            await tx.copy_records_to_table("copied", records=rows)
    assert rows.passes == 1 and proxy.stats.resets >= 1
    assert await count(sup) == 1


async def test_cancelled_copy_leaves_no_connection_in_use(sup: Supervisor) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[tuple[int, str]]:
        for row in ROWS:
            started.set()
            await asyncio.sleep(0.01)
            yield row

    task = asyncio.create_task(sup.db.copy_records_to_table("copied", records=slow()))
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if sup.db.statistics().pool.in_use == 0:
            break
        await asyncio.sleep(0.1)
    assert sup.db.statistics().pool.in_use == 0
    assert await count(sup) == 0


class SlowFirstPass(io.BytesIO):
    """A CSV source whose first reading is slow (0.3 s per 64 kB read): a statement timeout
    cuts the COPY before the end of its data is sent."""

    def __init__(self, data: bytes, seekable: bool = True) -> None:
        super().__init__(data)
        self.reads, self.passes, self._seekable = 0, 1, seekable

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, pos: int, whence: int = 0) -> int:
        self.passes += 1
        return super().seek(pos, whence)

    def read(self, n: int | None = -1) -> bytes:
        self.reads += 1
        if self.passes == 1:
            time.sleep(0.3)  # in the driver's worker thread
        return super().read(min(n or 65536, 65536))


CSV = b"".join(f"{i},n{i}\n".encode() for i in range(1, 30001))


@pytest.fixture
async def short(pg: PostgresServer) -> AsyncIterator[Supervisor]:
    async with Supervisor(pg.dsn(), min_size=1, max_size=2, command_timeout=0.5) as s:
        await s.db.execute("DROP TABLE IF EXISTS copied")
        await s.db.execute("CREATE TABLE copied (id int PRIMARY KEY, name text)")
        yield s


async def test_a_load_cut_before_its_end_applied_nothing_and_is_replayed(
    short: Supervisor,
) -> None:
    """No idempotent=: the statement timeout cut the COPY before the end of its data was
    sent, so nothing was applied; the file is rewound and loaded again, once."""
    source = SlowFirstPass(CSV)
    source.passes = 0  # the first attempt's seek (to where the file was) starts pass 1
    assert await short.db.copy_to_table("copied", source=source, format="csv") == "COPY 30000"
    assert source.passes >= 2  # read again after the first attempt was cut
    assert await count(short) == 30000


async def test_a_load_cut_before_its_end_that_cannot_be_reread(short: Supervisor) -> None:
    source = SlowFirstPass(CSV, seekable=False)
    with pytest.raises(DatabaseUnavailable, match="nothing of it was applied") as caught:
        await short.db.copy_to_table("copied", source=source, format="csv")
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert await count(short) == 0


async def test_a_stale_connection_before_the_copy_is_replayed(
    sup: Supervisor, proxy: FaultProxy
) -> None:
    """The pooled connection was reset a moment ago and the client may not have noticed yet:
    the call fails before the COPY statement is sent (while the driver reads the table's
    columns), the one-shot source untouched, and is replayed on a new connection (or, if the
    client noticed first, simply runs on one)."""
    proxy.reset()
    assert await sup.db.copy_records_to_table("copied", records=iter(ROWS)) == "COPY 2000"
    assert await count(sup) == len(ROWS) and proxy.stats.resets >= 1


def test_what_a_failed_attempt_did_with_its_source() -> None:
    """The facts the replay decision reads: untouched, cut before the end, read to the end."""
    from resilientdb._copy import Source

    listed = Source([(1, "a"), (2, "b")], records=True)
    given = listed.for_attempt()
    assert not listed.may_be_applied()  # never iterated: the COPY was not sent
    it = iter(given)
    next(it)
    assert not listed.may_be_applied()  # a row left: the end of the data was never sent
    list(it)
    assert listed.may_be_applied()
    generated = Source((r for r in [(1, "a")]), records=True)
    iter(generated.for_attempt())
    assert generated.may_be_applied()  # a generator's progress is unknown: assume the worst
    assert generated.why_not is not None
    assert Source(b"/some/path", records=False).may_be_applied() is True  # opened by the driver
