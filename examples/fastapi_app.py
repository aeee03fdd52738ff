"""A FastAPI service on resilientdb: notes, with health probes.

Run it (SQLite by default, any DSN through DATABASE_URL)::

    pip install 'resilientdb[fastapi,sqlite]'        # or [fastapi,postgres] / [fastapi,mysql]
    uvicorn --app-dir examples fastapi_app:app --port 8000
    DATABASE_URL=postgresql://app@localhost/app uvicorn --app-dir examples fastapi_app:app

    curl -X POST localhost:8000/notes -H 'content-type: application/json' -d '{"text": "hi"}'
    curl localhost:8000/notes
    curl localhost:8000/health/ready      # 200 when the database answers, 503 while it does not

What it shows:

- the supervisor is started and closed by the app's lifespan, with the table created once it
  is up; routes get the Database from a dependency;
- ``/health/live`` (never touches the database) and ``/health/ready`` (503 during an outage)
  for Kubernetes probes;
- reads are replayed after a lost connection without any code here; a write is not, so
  ``POST /notes`` handles ``OutcomeUnknown`` by looking for the note's own client-generated id;
- while the database is down, calls wait at the gate (up to ``gate_timeout``); if it stays
  down they raise ``DatabaseUnavailable``, which this app answers with a 503 and Retry-After.
"""

# No `from __future__ import annotations`: FastAPI reads the annotations at runtime.

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from resilientdb import Database, DatabaseUnavailable, OutcomeUnknown, Query, Supervisor
from resilientdb.integrations.fastapi import database, health_router, lifespan

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///notes.db")

# A bounded wait at the gate: a request should not hang for the default 30 s.
supervisor = Supervisor(DATABASE_URL, gate_timeout=10, command_timeout=10)

# Queries with values are written once with named parameters (Query(sql, name=value)):
# resilientdb converts them to each driver's paramstyle, so the same app runs on all three.
# A plain string would go to the driver untouched, in its own paramstyle ($1, %s or ?).


@asynccontextmanager
async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with lifespan(supervisor)(app):  # starts the supervisor, closes it at shutdown
        await supervisor.db.execute(
            "CREATE TABLE IF NOT EXISTS notes (id varchar(32) PRIMARY KEY, body text NOT NULL)",
            idempotent=True,  # running it twice is harmless
        )
        yield


# Every route that touches the database may answer 503 (DatabaseUnavailable below): part of the
# contract, so it is in the OpenAPI schema, with its Retry-After header.
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "The database is unavailable; nothing was applied: retry after the "
        "Retry-After delay.",
        "headers": {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        },
    }
}

app = FastAPI(title="notes (resilientdb example)", lifespan=app_lifespan)
app.include_router(health_router())  # GET /health/live and /health/ready

DB = Annotated[Database, Depends(database())]


@app.exception_handler(DatabaseUnavailable)
async def unavailable(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
    # Nothing of the call was applied: the client may retry.
    return JSONResponse({"detail": "database unavailable"}, 503, headers={"Retry-After": "2"})


class NoteIn(BaseModel):
    text: str


@app.get("/notes", responses=UNAVAILABLE)
async def list_notes(db: DB) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT id, body FROM notes ORDER BY id")  # replayed if need be
    return [dict(row) for row in rows]


@app.get("/notes/{note_id}", responses=UNAVAILABLE)
async def get_note(note_id: str, db: DB) -> dict[str, Any]:
    row = await db.fetchrow(Query("SELECT id, body FROM notes WHERE id = :id", id=note_id))
    if row is None:
        raise HTTPException(404, "no such note")
    return dict(row)


@app.post("/notes", status_code=201, responses=UNAVAILABLE)
async def create_note(note: NoteIn, db: DB) -> dict[str, Any]:
    note_id = uuid.uuid4().hex  # generated here, so the outcome can be checked
    try:
        await db.execute(
            Query("INSERT INTO notes (id, body) VALUES (:id, :body)", id=note_id, body=note.text)
        )
    except OutcomeUnknown:
        # The connection died after the INSERT may have reached the server. Look for it.
        found = await db.fetchval(Query("SELECT count(*) FROM notes WHERE id = :id", id=note_id))
        if not found:
            raise HTTPException(503, "the note was not saved; please retry") from None
    return {"id": note_id, "body": note.text}


@app.get("/status")
async def status() -> dict[str, Any]:
    """The supervisor's figures (state, pool, reconnects, replays) for a dashboard."""
    return {"state": supervisor.state, "backends": supervisor.stats()}
