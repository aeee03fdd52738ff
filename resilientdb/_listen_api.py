"""``Database.listen`` and ``Database.notify`` (PostgreSQL only); the machinery is in
``_listen.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._copy import require_postgres
from ._listen import Listener
from ._subscription import Subscription, check_channel
from .errors import NotSupported

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["ListenMethods"]


class ListenMethods:
    """``Database``'s LISTEN/NOTIFY methods."""

    __slots__ = ()
    _engine: Engine
    _listener: Listener

    def listen(
        self, *channels: str, max_queued: int = 1000, timeout: float | None = None
    ) -> Subscription:
        """Subscribe to ``channels``: ``async with db.listen("orders") as sub: async for item
        in sub:`` yields :class:`Notification` items, and a
        :class:`~resilientdb.events.NotificationsMissed` marker wherever notifications may
        have been missed (the listening connection was lost and LISTEN issued again; or this
        subscriber fell behind by more than ``max_queued`` and the newest were dropped).

        Every subscriber of this Database shares one dedicated connection, outside the pool
        (one connection beyond ``max_size`` while anyone listens). Entering waits until LISTEN
        is in effect, at most ``timeout`` seconds (default ``gate_timeout``), then raises
        ``DatabaseUnavailable``. PostgreSQL only (``NotSupported`` elsewhere).
        """
        require_postgres(self._engine, "LISTEN/NOTIFY")
        if not callable(getattr(self._engine.backend, "connect_dedicated", None)):
            raise NotSupported(
                f"backend {self._engine.name!r}: its adapter "
                f"({type(self._engine.backend).__name__}) opens no dedicated connection, "
                f"which LISTEN needs"
            )
        if not channels:
            raise ValueError("listen() needs at least one channel name")
        names = [check_channel(c) for c in channels]
        if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 1:
            raise ValueError(f"max_queued must be an int >= 1, not {max_queued!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
        ):
            raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
        return Subscription(self._listener, names, max_queued, timeout)

    async def notify(
        self,
        channel: str,
        payload: str = "",
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
    ) -> None:
        """Send a notification (``pg_notify``) through the gate, like ``execute``.

        Replayed when nothing was sent, or with ``idempotent=True`` (listeners may then
        receive it twice); otherwise a connection lost after sending raises
        ``OutcomeUnknown``. Inside ``db.transaction()`` it is delivered at COMMIT.
        """
        require_postgres(self._engine, "LISTEN/NOTIFY")
        check_channel(channel)
        if not isinstance(payload, str):
            raise TypeError(f"payload is a str, not {type(payload).__name__}")
        run: Any = getattr(self, "_run")  # noqa: B009 (Database's, not declared on the mixin)
        await run("execute", "SELECT pg_notify($1, $2)", (channel, payload), timeout, idempotent)
