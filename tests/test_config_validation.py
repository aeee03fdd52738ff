"""Options and DSN options that used to be accepted at construction and fail only later.

Per-backend overrides are checked on their own at ``BackendConfig(...)`` and against the
merged options when the Supervisor is built; everything a first connect would refuse is
refused at construction, with a message naming what to fix.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any
from unittest.mock import AsyncMock

import pytest

from resilientdb import BackendConfig, ConfigurationError, Supervisor

PG = "postgresql://app@db/app"
MY = "mysql://app@db/app"


# --- 14: overrides are validated alone, cross-field rules on the merged options ---------------


def test_override_is_checked_against_the_merged_options() -> None:
    sup = Supervisor({"x": BackendConfig(PG, min_size=20)}, max_size=50)
    assert (sup["x"].options.min_size, sup["x"].options.max_size) == (20, 50)


def test_backend_config_alone_checks_each_value_not_the_defaults() -> None:
    BackendConfig(PG, min_size=20)  # max_size comes from the supervisor, later
    BackendConfig(PG, min_size=20, max_size=30)


def test_cross_field_conflict_names_the_backend() -> None:
    with pytest.raises(ConfigurationError) as info:
        Supervisor({"x": BackendConfig(PG, min_size=20)})
    assert str(info.value) == "backend 'x': min_size (20) must not exceed max_size (10)"


def test_supervisor_wide_conflict_resolved_by_every_backend_is_fine() -> None:
    sup = Supervisor({"x": BackendConfig(PG, max_size=50)}, min_size=20)
    assert sup["x"].options.min_size == 20
    with pytest.raises(ConfigurationError, match=r"^backend 'a': min_size \(20\)"):
        Supervisor({"a": PG, "b": BackendConfig(PG, max_size=50)}, min_size=20)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"min_size": -1}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"gate_timeout": "soon"}, "gate_timeout"),
        ({"max_sise": 3}, "did you mean 'max_size'"),
        ({"on_connect": print}, "on_connect"),
    ],
)
def test_backend_config_rejects_a_bad_value_at_once(
    overrides: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        BackendConfig(PG, **overrides)


# --- 16: accepted at construction, failing at the first connect --------------------------------


async def _hook(conn: Any) -> None:
    return None


class _AsyncCallable:
    async def __call__(self, conn: Any) -> None:
        return None

    async def method(self, conn: Any) -> None:
        return None


@pytest.mark.parametrize(
    "hook",
    [
        _hook,
        functools.partial(_hook),
        _AsyncCallable(),
        functools.partial(_AsyncCallable()),
        _AsyncCallable().method,
        AsyncMock(),
    ],
)
def test_async_on_connect_hooks_are_accepted(hook: Any) -> None:
    Supervisor(PG, on_connect=hook)
    BackendConfig(PG, on_connect=hook)


def _sync_hook(conn: Any) -> None:
    return None


class _SyncCallable:
    def __call__(self, conn: Any) -> None:
        return None


@pytest.mark.parametrize(
    "hook", [_sync_hook, _SyncCallable(), functools.partial(_sync_hook), _AsyncCallable]
)
def test_sync_on_connect_is_rejected(hook: Any) -> None:
    with pytest.raises(ConfigurationError, match="on_connect must be async"):
        Supervisor(PG, on_connect=hook)


def test_lambda_returning_a_coroutine_is_told_to_use_async_def() -> None:
    with pytest.raises(ConfigurationError) as info:
        Supervisor(PG, on_connect=lambda conn: _hook(conn))
    assert "on_connect must be async" in str(info.value)
    assert "a lambda cannot be async, even one returning a coroutine; write an async def" in str(
        info.value
    )


def test_on_connect_that_is_not_callable_says_so() -> None:
    with pytest.raises(ConfigurationError, match="'int' object is not callable"):
        Supervisor(PG, on_connect=42)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@db:0/app",
        "mysql://app@db:0/app",
        "postgresql://app@db:65536/app",
        "postgresql://app@db:-1/app",
        "postgresql://app@/app?host=db&port=0",
        "postgresql://app@/app?host=db&port=abc",
        "postgresql://app@/app?host=db&port=70000",
    ],
)
def test_port_outside_1_to_65535_is_rejected(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match=r"port must be .*1\.\.65535"):
        Supervisor(dsn)


@pytest.mark.parametrize(
    "mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
)
def test_every_postgres_sslmode_is_accepted(mode: str) -> None:
    Supervisor(f"{PG}?sslmode={mode}")


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("sslmode=bogus", "sslmode must be one of"),
        ("sslmode=Require", "sslmode must be one of"),
        ("target_session_attrs=bogus", "target_session_attrs must be one of"),
        ("gsslib=bogus", "gsslib must be one of"),
        ("ssl_min_protocol_version=TLSv9", "ssl_min_protocol_version must be one of"),
        ("ssl_max_protocol_version=SSLv3", "ssl_max_protocol_version must be one of"),
        ("sslmode", "name=value"),
        ("sslmode=require&", "name=value"),
    ],
)
def test_postgres_option_values_are_checked(query: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        Supervisor(f"{PG}?{query}")
    with pytest.raises(ConfigurationError, match=fragment):
        BackendConfig(f"{PG}?{query}")


@pytest.mark.parametrize(
    "attrs", ["any", "primary", "standby", "prefer-standby", "read-write", "read-only"]
)
def test_every_target_session_attrs_is_accepted(attrs: str) -> None:
    Supervisor(f"{PG}?target_session_attrs={attrs}")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@db/app?sslmode=require&sslmode=disable",
        "mysql://app@db/app?charset=utf8mb4&charset=latin1",
        "sqlite:///x.db?mode=ro&mode=rwc",
        "postgresql://app@db/app?dbname=other",  # the path names the database already
        "postgresql://app@/app?host=db&database=a&dbname=b",
        "postgresql://app@db/app?host=other",  # asyncpg would ignore ?host= silently
        "postgresql://app@db:5432/app?port=5433",
        "postgresql://app@db/app?user=other",
        "postgresql://app:pw1@db/app?password=pw2",
    ],
)
def test_an_option_given_twice_is_ambiguous(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="given twice"):
        Supervisor(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@db/ap\x00p",
        "postgresql://app@db/ap%00p",
        "postgresql://a%00pp@db/app",
        "postgresql://app:pw%00secret@db/app",
        "postgresql://app@d%00b/app",
        "postgresql://app@db/app?application_name=a%00b",
        "mysql://app@db/app?init_command=SET%20x%3D1%00",
        "sqlite:///x%00.db",
        "sqlite:///x\x00.db",
    ],
)
def test_nul_anywhere_in_the_dsn_is_rejected(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Supervisor(dsn)
    assert "NUL" in str(info.value)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("dsn", ["postgresql://app@db/a\npp", "postgresql://app:p\tw@db/app"])
def test_control_characters_are_rejected(dsn: str) -> None:
    # urlsplit silently drops tabs and newlines: the name or password used would not be the
    # one written.
    with pytest.raises(ConfigurationError, match="control character"):
        Supervisor(dsn)


needs_pymysql = pytest.mark.skipif(
    importlib.util.find_spec("pymysql") is None, reason="PyMySQL not installed"
)


@needs_pymysql
def test_unknown_mysql_charset_is_rejected() -> None:
    Supervisor(f"{MY}?charset=utf8mb4")
    with pytest.raises(ConfigurationError, match="unknown MySQL charset 'bogus'"):
        Supervisor(f"{MY}?charset=bogus")
    with pytest.raises(ConfigurationError, match="unknown MySQL charset 'nope'"):
        Supervisor(MY, connect_kwargs={"charset": "nope"})


@pytest.mark.parametrize(
    ("dsn", "kwargs", "fragment"),
    [
        (PG, {"bogus": 1}, "bogus"),
        (PG, {"timeout": 3}, "timeout"),  # the adapter's own: connect_timeout=
        (PG, {"min_size": 3}, "min_size"),
        ("sqlite:///x.db", {"bogus": 1}, "bogus"),
    ],
)
def test_connect_kwargs_the_driver_would_refuse(
    dsn: str, kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"backend 'default': .*{fragment}"):
        Supervisor(dsn, connect_kwargs=kwargs)


def test_known_connect_kwargs_are_accepted() -> None:
    Supervisor(PG, connect_kwargs={"server_settings": {"jit": "off"}, "statement_cache_size": 0})
    Supervisor("sqlite:///x.db", connect_kwargs={"detect_types": 1, "check_same_thread": False})


def test_tcp_user_timeout_beyond_what_the_kernel_takes_is_rejected() -> None:
    # setsockopt takes milliseconds in a C int: past it, every connect raised TypeError.
    Supervisor(PG, tcp_user_timeout=2_147_483)
    with pytest.raises(ConfigurationError, match="tcp_user_timeout"):
        Supervisor(PG, tcp_user_timeout=2_147_484)
