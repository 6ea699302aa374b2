"""Group commit for webhook ingest: the new runs of concurrent deliveries share a transaction.

A commit (its WAL flush) costs about a millisecond whatever it holds, so committing each run on
its own caps ingest near a thousand runs a second per connection; deliveries that arrive within
`window` of each other are written together instead, as one INSERT per tenant and table (rows
passed as one JSON document, so PostgreSQL runs one statement however many rows). Each
caller is answered only after the commit that holds its run, so "202 means committed" holds.
A batch that fails is retried one run per transaction, so one bad row fails only itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import TextClause, text

from aias.core.db import Database, json_rows
from aias.services.execution.models import RunRow, WebhookDeliveryRow

log = logging.getLogger(__name__)

DEFAULT_WINDOW_SECONDS = 0.002
DEFAULT_MAX_BATCH = 256
# Batches written at once: while one commits, the next one forms and starts.
DEFAULT_FLUSHES = 4

# The columns a new run and its delivery record are written with (the times are the server's).
_RUN_COLUMNS = {
    "id": "uuid",
    "tenant_id": "uuid",
    "workflow_id": "uuid",
    "workflow_version": "int",
    "endpoint_id": "uuid",
    "status": "text",
    "attempt": "int",
    "max_attempts": "int",
    "payload": "bytea",
    "content_type": "text",
    "idempotency_key": "text",
    "payload_sha256": "bytea",
    "error": "text",
    "traceparent": "text",
}
_DELIVERY_COLUMNS = {
    "id": "uuid",
    "tenant_id": "uuid",
    "endpoint_id": "uuid",
    "http_status": "int",
    "reason": "text",
    "message": "text",
    "size_bytes": "bigint",
    "run_id": "uuid",
}


def _insert_records(table: str, columns: dict[str, str]) -> TextClause:
    """One INSERT of every row of a batch, passed as one JSON array of objects (`json_rows`).
    Strings stay text, not varchar(n): the INSERT refuses a value that is too long."""
    names = ", ".join(columns)
    values = ", ".join(
        f"decode(r.{name}, 'base64')" if kind == "bytea" else f"r.{name}"
        for name, kind in columns.items()
    )
    record = ", ".join(
        f"{name} {'text' if kind == 'bytea' else kind}" for name, kind in columns.items()
    )
    return text(
        f"INSERT INTO {table} ({names}) SELECT {values} "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({record})"
    )


_INSERT_RUNS = _insert_records(f"execution.{RunRow.__tablename__}", _RUN_COLUMNS)
_INSERT_DELIVERIES = _insert_records(
    f"execution.{WebhookDeliveryRow.__tablename__}", _DELIVERY_COLUMNS
)


def _records(rows: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, str]:
    return {"rows": json_rows({name: row[name] for name in columns} for row in rows)}


@dataclass
class _Pending:
    tenant_id: uuid.UUID
    run: dict[str, Any]
    delivery: dict[str, Any]
    # Called when the run is known not to be written (gives its reserved run back).
    on_failure: Callable[[], None]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RunWriter:
    """Writes runs and their delivery records in batches; `write` returns once committed."""

    def __init__(
        self,
        db: Database,
        window: float = DEFAULT_WINDOW_SECONDS,
        max_batch: int = DEFAULT_MAX_BATCH,
        flushes: int = DEFAULT_FLUSHES,
    ) -> None:
        self._db = db
        self._window = window
        self._max_batch = max_batch
        self._flushes = asyncio.Semaphore(flushes)
        self._queue: list[_Pending] = []
        self._arrived = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._gather_forever(), name="run-writer")

    async def close(self) -> None:
        """Writes what is queued, then stops."""
        while self._queue or self._inflight:
            self._arrived.set()
            await asyncio.sleep(self._window)
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)

    async def write(
        self,
        tenant_id: uuid.UUID,
        run: dict[str, Any],
        delivery: dict[str, Any],
        on_failure: Callable[[], None],
    ) -> None:
        """Queues one run; returns once committed, or raises what its write raised.

        A caller that goes away (its request cancelled) does not take its run back: the run is
        written all the same, and `on_failure` runs only if the write fails. `run` and `delivery`
        hold exactly the columns written (a row short of one would fail its whole batch).
        """
        if run.keys() != _RUN_COLUMNS.keys() or delivery.keys() != _DELIVERY_COLUMNS.keys():
            raise ValueError(
                f"a run needs exactly {sorted(_RUN_COLUMNS)} and its delivery "
                f"{sorted(_DELIVERY_COLUMNS)}; got {sorted(run)} and {sorted(delivery)}"
            )
        pending = _Pending(tenant_id, run, delivery, on_failure)
        # Retrieved here too: a caller that went away must not leave it "never retrieved".
        pending.done.add_done_callback(_retrieve)
        self._queue.append(pending)
        self._arrived.set()
        await asyncio.shield(pending.done)

    async def _gather_forever(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if len(self._queue) < self._max_batch:
                # The first delivery of a batch waits this long for company.
                await asyncio.sleep(self._window)
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                await self._flushes.acquire()
                task = asyncio.create_task(self._flush(batch))
                self._inflight.add(task)
                task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._flushes.release()

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            await self._commit(batch)
        except Exception as error:
            if len(batch) == 1:
                _fail(batch[0], error)
                return
            log.warning("a batch of runs failed; writing them one by one", exc_info=True)
            for pending in batch:
                try:
                    await self._commit([pending])
                except Exception as single:
                    _fail(pending, single)
                else:
                    _succeed(pending)
            return
        for pending in batch:
            _succeed(pending)

    async def _commit(self, batch: list[_Pending]) -> None:
        by_tenant = sorted(batch, key=lambda pending: pending.tenant_id)
        async with self._db.batch() as connection:
            for tenant_id, group in itertools.groupby(by_tenant, key=lambda p: p.tenant_id):
                rows = list(group)
                # Row-level security applies per statement: each tenant's rows under its own.
                await self._db.as_tenant(connection, tenant_id)
                await connection.execute(
                    _INSERT_RUNS, _records([p.run for p in rows], _RUN_COLUMNS)
                )
                await connection.execute(
                    _INSERT_DELIVERIES, _records([p.delivery for p in rows], _DELIVERY_COLUMNS)
                )


def _retrieve(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def _succeed(pending: _Pending) -> None:
    if not pending.done.done():
        pending.done.set_result(None)


def _fail(pending: _Pending, error: BaseException) -> None:
    pending.on_failure()
    if not pending.done.done():
        pending.done.set_exception(error)
