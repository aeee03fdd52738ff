"""Construction validates everything that needs no I/O, and secrets never show."""

from __future__ import annotations

import pytest

from resilientdb import BackendConfig, ConfigurationError, Options, Supervisor
from resilientdb.config import parse_dsn, redact

SECRET = "hunter2-Secret"


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        ("", "non-empty"),
        ("localhost:5432", "no scheme"),
        ("oracle://scott@db/orcl", "unknown scheme 'oracle://'"),
        ("postgresql://app@db:notaport/app", "malformed"),
        ("postgresql://app@db:99999/app", "malformed"),
        ("postgresql:///app", "no host"),
        ("postgresql://app@db/app?sslmod=require", "did you mean 'sslmode'"),
        ("mysql://app@db/app?bogus=1", "unknown option 'bogus'"),
        ("sqlite://host/file.db", "SQLite takes no host"),
        ("sqlite:///", "file path"),
    ],
)
def test_bad_dsn_is_rejected_at_construction(dsn: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Supervisor(dsn)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)  # also a ValueError, as documented


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"max_size": -1}, "max_size"),
        ({"max_size": 0}, "max_size"),
        ({"min_size": -2}, "min_size"),
        ({"min_size": 5, "max_size": 2}, "min_size"),
        ({"connect_timeout": -1}, "connect_timeout"),
        ({"gate_timeout": 0}, "gate_timeout"),
        ({"acquire_timeout": float("inf")}, "acquire_timeout"),
        ({"command_timeout": -0.5}, "command_timeout"),
        ({"max_waiters": -1}, "max_waiters"),
        ({"max_replays": 1.5}, "max_replays"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_downtime": -3}, "max_downtime"),
        ({"max_size": True}, "max_size"),
        ({"backoff": 3}, "backoff"),
        ({"max_sise": 3}, "did you mean 'max_size'"),
        ({"connect_kwargs": [1]}, "connect_kwargs"),
    ],
)
def test_bad_options_name_what_to_fix(options: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Supervisor("postgresql://app@db/app", **options)
    assert name in str(info.value)


def test_per_backend_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigurationError, match="max_size"):
        BackendConfig("postgresql://app@db/app", max_size=-5)
    sup = Supervisor(
        {"a": "postgresql://app@db/a", "b": BackendConfig("postgresql://app@db/b", max_size=3)},
        max_size=7,
        gate_timeout=2,
    )
    assert sup["a"].options.max_size == 7
    assert sup["b"].options.max_size == 3
    assert sup["b"].options.gate_timeout == 2  # inherited from the supervisor


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from resilientdb.backends import registry

    monkeypatch.setattr(registry, "_find_spec", lambda name: None)
    with pytest.raises(ConfigurationError) as info:
        Supervisor("postgresql://app@db/app")
    assert "pip install 'resilientdb[postgres]'" in str(info.value)


def test_blocked_driver_module_is_reported_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ConfigurationError, match=r"resilientdb\[postgres\]"):
        Supervisor("postgresql://app@db/app")


def test_bad_backend_mapping() -> None:
    with pytest.raises(ConfigurationError, match="at least one backend"):
        Supervisor({})
    with pytest.raises(ConfigurationError, match="backend 'x'"):
        Supervisor({"x": 42})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="DSN string"):
        Supervisor(42)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="known: 'main'"):
        Supervisor({"main": "postgresql://app@db/app"})["other"]


def test_dsn_parsing() -> None:
    d = parse_dsn(f"postgres://app:{SECRET}@db.local:6543/my%20db?sslmode=require")
    assert (d.backend, d.host, d.port, d.user, d.password, d.database) == (
        "postgres",
        "db.local",
        6543,
        "app",
        SECRET,
        "my db",
    )
    assert d.options == {"sslmode": "require"}
    assert parse_dsn("sqlite:////abs/x.db").path == "/abs/x.db"
    assert parse_dsn("sqlite:///rel.db").path == "rel.db"
    assert parse_dsn("sqlite:///:memory:").path == ":memory:"
    assert parse_dsn("mariadb://root@127.0.0.1/test").backend == "mysql"


def test_redaction_everywhere_in_configuration() -> None:
    dsn = f"postgresql://app:{SECRET}@db/app?sslpassword={SECRET}&sslmode=require"
    assert SECRET not in redact(dsn)
    assert redact(dsn).startswith("postgresql://app:***@db/app")
    sup = Supervisor(dsn)
    for text in (repr(sup), repr(sup.db), repr(parse_dsn(dsn)), str(parse_dsn(dsn))):
        assert SECRET not in text
    assert SECRET not in repr(BackendConfig(dsn))
    with pytest.raises(ConfigurationError) as info:
        Supervisor(f"postgresql://app:{SECRET}@db/app?nope=1")
    assert SECRET not in str(info.value)
    assert redact("not a url at all") == "not a url at all"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact("sqlite:///rel.db?mode=rw") == "sqlite:///rel.db?mode=rw"
    assert redact(f"mysql://u:{SECRET}@h/db?password={SECRET}") == "mysql://u:***@h/db?password=***"


def test_options_defaults_are_sane() -> None:
    o = Options()
    assert o.min_size <= o.max_size
    assert 0.03 <= o.backoff.initial <= 0.1 and o.backoff.maximum <= 2
    assert o.gate_timeout >= 10  # rides out a routine restart
