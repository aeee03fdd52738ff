"""Credential rotation: ``password=`` (a string, or a function asked on every connect), the
``auth_grace`` during which refused credentials are an outage rather than a failure, and
``expire_connections()``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import asyncpg
import pytest

from harness.servers import MariaDBServer, PostgresServer
from resilientdb import BackendConfig, ConfigurationError, DatabaseUnavailable, State, Supervisor
from resilientdb.config import Options
from tests.handles import Recorder

ROLE = "rotating"


@pytest.fixture
def rotating(pg: PostgresServer) -> Iterator[str]:
    """A role with a password (scram) that may write to one table; the DSN without it."""
    pg.admin_query(f"DROP ROLE IF EXISTS {ROLE}")
    pg.admin_query(f"CREATE ROLE {ROLE} LOGIN PASSWORD 'pw-one-0001'")
    pg.admin_query("CREATE TABLE IF NOT EXISTS rot_items (id int PRIMARY KEY)", database="app")
    pg.admin_query("TRUNCATE rot_items", database="app")
    pg.admin_query(f"GRANT ALL ON rot_items TO {ROLE}", database="app")
    yield f"postgresql://{ROLE}@{pg.host}:{pg.port}/app"
    pg.admin_query(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename='{ROLE}'")
    pg.admin_query(f"REVOKE ALL ON rot_items FROM {ROLE}", database="app")
    pg.admin_query(f"DROP ROLE IF EXISTS {ROLE}")


def rotate(pg: PostgresServer, password: str) -> int:
    """ALTER ROLE, then cut the role's sessions: the pool must open new connections."""
    pg.admin_query(f"ALTER ROLE {ROLE} PASSWORD '{password}'")
    return int(
        pg.admin_query(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE usename = '{ROLE}'"
        )
    )


# --- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "options", "message"),
    [
        ("postgresql://u:pw@h/db", {"password": "x"}, "given twice, in the DSN"),
        ("postgresql://u@h/db?password=pw", {"password": "x"}, "given twice, in the DSN"),
        (
            "postgresql://u@h/db",
            {"password": "x", "connect_kwargs": {"password": "y"}},
            "given twice, in connect_kwargs",
        ),
        ("mysql://u:pw@h/db", {"password": lambda: "x"}, "given twice, in the DSN"),
        ("postgresql://u@h/db", {"password": 1234}, "password must be a string or a function"),
        ("sqlite:///x.db", {"password": "x"}, "SQLite takes no password"),
        ("postgresql://u@h/db", {"auth_grace": -1}, "auth_grace must be"),
    ],
)
def test_password_option_is_checked_at_construction(
    dsn: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Supervisor(dsn, **options)  # type: ignore[arg-type]


def test_password_never_shown() -> None:
    secret = "never-shown-9c1d"
    assert secret not in repr(Options(password=secret))
    assert secret not in repr(BackendConfig("postgresql://u@h/db", password=secret))
    assert Options(auth_grace=0).auth_grace == 0


# --- against a real server -------------------------------------------------------------------


async def test_rotation_with_a_lagging_secret_store_causes_no_errors(
    pg: PostgresServer, rotating: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = {"password": "pw-one-0001"}

    async def secret() -> str:  # an async secret store
        await asyncio.sleep(0)
        return store["password"]

    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    stop = asyncio.Event()
    counter = iter(range(1, 1_000_000))
    sup = Supervisor(rotating, password=secret, auth_grace=5.0, max_size=4)
    recorder = Recorder(sup)

    async def worker() -> None:
        while not stop.is_set():
            try:
                await sup.db.fetchval("SELECT 1", timeout=10)
                await sup.db.execute(
                    "INSERT INTO rot_items VALUES ($1) ON CONFLICT DO NOTHING",
                    next(counter),
                    idempotent=True,
                    timeout=10,
                )
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.01)

    async with sup:
        tasks = [asyncio.create_task(worker()) for _ in range(4)]
        await asyncio.sleep(0.3)
        killed = await asyncio.to_thread(rotate, pg, "pw-two-0002")
        await asyncio.sleep(1.5)  # the secret store lags the ALTER ROLE
        store["password"] = "pw-two-0002"
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
        assert sup.state is State.CONNECTED
        await recorder.settle()
    assert killed >= 1
    assert errors == []
    assert "reconnecting" in recorder.states() and "failed" not in recorder.states()
    causes = " ".join(str(getattr(e, "cause", "")) for e in recorder.events)
    assert "password authentication failed" in causes  # the refusal happened
    shown = causes + " ".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "pw-one-0001" not in shown and "pw-two-0002" not in shown


async def test_wrong_password_at_first_start_fails_fast(rotating: str) -> None:
    sup = Supervisor(rotating, password=lambda: "wrong-password", auth_grace=30.0)
    started = time.monotonic()
    async with sup:
        with pytest.raises(DatabaseUnavailable):
            await sup.db.fetchval("SELECT 1")
        assert sup.state is State.FAILED
    assert time.monotonic() - started < 5  # not the 30 s grace, nor gate_timeout


async def test_refused_past_the_grace_fails_then_heals(pg: PostgresServer, rotating: str) -> None:
    store = {"password": "pw-one-0001"}
    sup = Supervisor(rotating, password=lambda: store["password"], auth_grace=0.5)
    async with sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        await asyncio.to_thread(rotate, pg, "pw-three-003")
        call = asyncio.create_task(sup.db.fetchval("SELECT 1"))  # needs a new connection
        for _ in range(50):  # bounded: 5 s
            await asyncio.sleep(0.1)
            if sup.state is State.FAILED:
                break
        assert sup.state is State.FAILED
        with pytest.raises(DatabaseUnavailable):
            await call
        store["password"] = "pw-three-003"
        await sup.wait_until_connected(timeout=10)  # the slow probes of FAILED heal it
        assert await sup.db.fetchval("SELECT 1") == 1


async def test_expire_connections_reconnects_with_the_new_password(
    pg: PostgresServer, rotating: str
) -> None:
    store = {"password": "pw-one-0001"}
    sup = Supervisor(rotating, password=lambda: store["password"], min_size=2)
    async with sup:
        before = await sup.db.fetchval("SELECT pg_backend_pid()")
        await asyncio.to_thread(pg.admin_query, f"ALTER ROLE {ROLE} PASSWORD 'pw-four-004'")
        store["password"] = "pw-four-004"
        await sup.expire_connections()
        after = await sup.db.fetchval("SELECT pg_backend_pid()")
        assert after != before
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(rotating, password="pw-one-0001")


async def test_mysql_password_function_is_asked_on_every_connect(
    mariadb: MariaDBServer,
) -> None:
    user = "rotating"
    host = f"'{user}'@'127.0.0.1'"
    mariadb.admin_query(f"DROP USER IF EXISTS {host}; CREATE USER {host} IDENTIFIED BY 'my-one-01'")
    asked: list[str] = []
    store = {"password": "my-one-01"}

    def secret() -> str:
        asked.append(store["password"])
        return store["password"]

    try:
        dsn = f"mysql://{user}@127.0.0.1:{mariadb.port}/"
        sup = Supervisor(dsn, password=secret, auth_grace=5.0, min_size=1)
        async with sup:
            assert await sup.db.fetchval("SELECT 1") == 1
            await asyncio.to_thread(
                mariadb.admin_query, f"ALTER USER {host} IDENTIFIED BY 'my-two-02'"
            )
            await asyncio.to_thread(
                mariadb.admin_query,
                "SELECT GROUP_CONCAT(CONCAT('KILL ', id, ';') SEPARATOR ' ') "
                f"FROM information_schema.processlist WHERE user = '{user}'",
            )
            store["password"] = "my-two-02"
            await sup.expire_connections()
            assert await sup.db.fetchval("SELECT CURRENT_USER()") == f"{user}@127.0.0.1"
        assert asked.count("my-two-02") >= 1
    finally:
        mariadb.admin_query(f"DROP USER IF EXISTS {host}")


async def test_secret_store_failure_is_an_outage_not_a_failure(rotating: str) -> None:
    sealed = {"on": False}

    def secret() -> str:
        if sealed["on"]:
            raise RuntimeError("the vault is sealed")
        return "pw-one-0001"

    sup = Supervisor(rotating, password=secret, keepalive_interval=None)
    recorder = Recorder(sup)
    async with sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        sealed["on"] = True
        await sup.expire_connections()  # the next call needs a new connection
        call = asyncio.create_task(sup.db.fetchval("SELECT 2", timeout=10))
        for _ in range(50):  # bounded: 5 s
            await asyncio.sleep(0.1)
            if sup.state is State.RECONNECTING:
                break
        assert sup.state is State.RECONNECTING and not call.done()
        sealed["on"] = False
        assert await call == 2
        await recorder.settle()
    assert "failed" not in recorder.states()
    assert any("the vault is sealed" in str(getattr(e, "cause", "")) for e in recorder.events)
