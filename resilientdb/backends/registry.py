"""Which adapter serves which DSN scheme: one spec per scheme, and ``register()`` for more.

A spec says everything the library needs about a driver before any connection: the package
that must be importable and the pip extra that installs it, the DSN query options the driver
understands and the checks on their values (run while the DSN is parsed), the checks on
``connect_kwargs`` (run once the driver is known to be there), and the factory that builds
the adapter. It is the only module that imports adapters, lazily: ``import resilientdb``
imports no driver.

Users' own adapters and ``resilientdb.testing.fake`` come in through ``register()``::

    register("mydb", MyBackend, driver="mydriver", extra="mydb", options={"sslmode"})
    Supervisor("mydb://host/db")  # MyBackend(dsn, options), checked like the built-in ones
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .mysql import settings as _mysql
from .postgres import settings as _postgres
from .sqlite import settings as _sqlite

if TYPE_CHECKING:
    from .._dsn import DSN
    from ..config import Options
    from .base import Backend

__all__ = ["BackendSpec", "Factory", "create", "register", "schemes", "spec_for"]

Factory = Callable[["DSN", "Options"], "Backend"]
"""``factory(dsn, options) -> Backend``: an adapter class, or any callable building one."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """What the library knows about one kind of backend before it connects."""

    name: str
    """The backend's name (``DSN.backend``, the health report's ``driver``)."""
    factory: Factory
    driver: str | None = None
    """The package that must be importable, or None (nothing to check)."""
    extra: str | None = None
    """The pip extra that installs ``driver`` (``pip install 'resilientdb[extra]'``)."""
    options: frozenset[str] = frozenset()
    """The DSN query options it understands; any other is refused while parsing."""
    path: bool = False
    """The DSN names a file (``scheme:///path``), not a host."""
    check_dsn: Callable[[DSN, str], None] | None = None
    """Refuse DSN option values the driver would refuse (``shown``: the redacted DSN)."""
    check_options: Callable[[DSN, Options], None] | None = None
    """Refuse ``connect_kwargs`` the driver would refuse; runs once the driver is present."""

    def check(self, dsn: DSN, options: Options) -> None:
        """The driver's presence (naming the extra to install), then its ``connect_kwargs``."""
        if self.driver is not None and _find_spec(self.driver) is None:
            how = f": pip install 'resilientdb[{self.extra}]'" if self.extra else ""
            raise ConfigurationError(
                f"the {self.name} backend needs the {self.driver!r} package{how}"
            )
        if self.check_options is not None:
            self.check_options(dsn, options)


def _find_spec(name: str) -> object | None:
    # A module set to None in sys.modules is "blocked"; find_spec raises for it.
    if name in sys.modules and sys.modules[name] is None:
        return None
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _lazy(module: str, attr: str, settings: Callable[[DSN, Options], Any] | None) -> Factory:
    """A built-in adapter's factory: ``settings`` validates the DSN and options into what the
    adapter takes (the driver's arguments), then the adapter is imported (a driver is imported
    only when used) and built with them."""

    def factory(dsn: DSN, options: Options) -> Backend:
        adapter: Any = getattr(importlib.import_module(module, __package__), attr)
        if settings is None:
            backend: Backend = adapter(dsn, options)
        else:
            backend = adapter(dsn, options, settings(dsn, options))
        return backend

    return factory


_SCHEMES: dict[str, BackendSpec] = {}


def register(
    schemes: str | Iterable[str],
    factory: Factory,
    *,
    name: str | None = None,
    driver: str | None = None,
    extra: str | None = None,
    options: Iterable[str] = (),
    path: bool = False,
    check_dsn: Callable[[DSN, str], None] | None = None,
    check_options: Callable[[DSN, Options], None] | None = None,
) -> BackendSpec:
    """Serve the DSN scheme(s) with ``factory(dsn, options)``; returns the spec.

    ``name`` defaults to the first scheme. A scheme registered again is replaced (a test may
    register its own adapter under a name it reuses).
    """
    names = [schemes] if isinstance(schemes, str) else list(schemes)
    if not names or not all(isinstance(s, str) and s and s.isascii() for s in names):
        raise ConfigurationError(f"register: schemes must be non-empty names, not {schemes!r}")
    if not callable(factory):
        raise ConfigurationError("register: factory must build the adapter: (dsn, options)")
    spec = BackendSpec(
        name or names[0],
        factory,
        driver=driver,
        extra=extra,
        options=frozenset(options),
        path=path,
        check_dsn=check_dsn,
        check_options=check_options,
    )
    for scheme in names:
        _SCHEMES[scheme.lower()] = spec
    return spec


def schemes() -> list[str]:
    """The schemes served, in the order registered."""
    return list(_SCHEMES)


def spec_for(scheme: str) -> BackendSpec | None:
    """The spec serving ``scheme`` (lower case), or None."""
    return _SCHEMES.get(scheme)


def create(dsn: DSN, options: Options) -> Backend:
    """The adapter for a parsed DSN and its merged, checked options."""
    return _SCHEMES[dsn.scheme].factory(dsn, options)


register(
    ("postgresql", "postgres"),
    _lazy(".postgres.backend", "PostgresBackend", None),
    name="postgres",
    driver="asyncpg",
    extra="postgres",
    options=_postgres.OPTIONS,
    check_dsn=_postgres.check_dsn,
    check_options=_postgres.check_options,
)
register(
    ("mysql", "mariadb"),
    _lazy(".mysql.backend", "MySQLBackend", _mysql.driver_kwargs),
    name="mysql",
    driver="aiomysql",
    extra="mysql",
    options=_mysql.OPTIONS,
    check_dsn=_mysql.check_dsn,
    check_options=_mysql.check_options,
)
register(
    "sqlite",
    _lazy(".sqlite.backend", "SQLiteBackend", _sqlite.settings),
    driver="aiosqlite",
    extra="sqlite",
    options=_sqlite.OPTIONS,
    path=True,
    check_options=_sqlite.check_options,
)
