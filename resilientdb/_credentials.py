"""The ``password=`` option: a string, or a function (sync or async) asked again on every
connect and probe, so that a rotated password is picked up without a restart.

What it returns is registered with ``_redact`` (scrubbed from every message resilientdb
prints, logs or raises) and never stored. The password may be given once only: in the DSN,
in ``connect_kwargs``, or as ``password=``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._redact import describe, register_secret
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._dsn import DSN
    from .config import Options

__all__ = [
    "PasswordSource",
    "SecretUnavailable",
    "check_password",
    "check_single_password",
    "current_password",
]

PasswordSource = str | Callable[[], str | Awaitable[str]]
"""A password, or ``() -> str`` / ``async () -> str`` returning the current one."""


def check_password(name: str, value: Any) -> Any:
    """The option's own check (``Options``): None, a string, or a callable."""
    if value is None or isinstance(value, str) or callable(value):
        if isinstance(value, str):
            register_secret(value)
        return value
    raise ConfigurationError(
        f"{name} must be a string or a function (sync or async) returning the current "
        f"password, not {type(value).__name__}"
    )


def check_single_password(dsn: DSN, options: Options) -> None:
    """Refuse a password given twice (the adapters' ``check_options``)."""
    if options.password is None:
        return
    if dsn.password is not None or "password" in dsn.options:
        raise ConfigurationError(
            "the password is given twice, in the DSN and as password=; keep one "
            "(password= is re-read on every connect: the one to keep for rotation)"
        )
    if "password" in options.connect_kwargs:
        raise ConfigurationError(
            "the password is given twice, in connect_kwargs and as password=; keep one"
        )


class SecretUnavailable(ConnectionError):
    """The ``password=`` function raised: the secret store did not answer. Retried like a
    refused connection (the store may answer next time); the function's error is the cause."""


async def current_password(source: PasswordSource) -> str:
    """The password now: ``source`` itself, or what it returns (awaited if need be)."""
    try:
        value: Any = source() if callable(source) else source
        if inspect.isawaitable(value):
            value = await value
    except Exception as exc:
        raise SecretUnavailable(f"the password= function raised {describe(exc)}") from exc
    if not isinstance(value, str):
        # A TypeError at connect: classified as a permanent connect failure, named here.
        raise TypeError(f"password= returned {type(value).__name__}, not a string")
    register_secret(value)
    return value
