"""A password never appears in a repr, an error, a log record or an event."""

from __future__ import annotations

import asyncio
import logging

import pytest

from harness.servers import SECURE_PASSWORD, SECURE_USER, PostgresServer
from resilientdb import DatabaseUnavailable, State, Supervisor, events
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

WRONG = "Wr0ng-Secret-Value"


async def test_no_secret_anywhere(pg: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="resilientdb")
    seen: list[events.Event] = []
    texts: list[str] = []

    async with FaultProxy(pg.host, pg.port) as proxy:
        good = with_host(
            parse_dsn(pg.dsn(user=SECURE_USER, password=SECURE_PASSWORD)), proxy.host, proxy.port
        )
        sup = Supervisor(
            {"good": good, "bad": pg.dsn(user=SECURE_USER, password=WRONG)},
            failed_probe_interval=60,
            on_error=seen.append,
        )
        sup.on(events.Event, seen.append)
        texts += [repr(sup), repr(sup["good"]), repr(sup["bad"])]
        async with sup:
            assert await sup["good"].fetchval("SELECT 1") == 1
            proxy.refuse()  # an outage (not just lost connections): the check's probe fails
            proxy.reset()
            call = asyncio.create_task(sup["good"].fetchval("SELECT 1"))
            for _ in range(200):
                if sup["good"].state is not State.CONNECTED:
                    break
                await asyncio.sleep(0.01)
            proxy.pass_through()
            assert await call == 1
            with pytest.raises(DatabaseUnavailable) as info:
                await sup["bad"].fetchval("SELECT 1")
            texts += [str(info.value), repr(info.value), str(info.value.__cause__)]
            texts.append(repr(sup.stats()))
            await asyncio.sleep(0.05)
    assert any(isinstance(e, events.ReconnectFailed) for e in seen)
    assert any(isinstance(e, events.Reconnected) for e in seen)
    texts += [repr(e) for e in seen] + [e.message() for e in seen]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert SECURE_PASSWORD not in text, text
        assert WRONG not in text, text
    assert caplog.records and seen  # the search covered real output
