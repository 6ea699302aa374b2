"""What a worker writes about the runs it holds, batched: step logs, outcomes, lease renewals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import exc as sa_exc

from aias.core.db import Database, SystemPath
from aias.services.execution.domain import FINAL_RUN_STATUSES, RunStatus
from aias.services.execution.repository import Outcome, QueueRepository, StepLogEntry

log = logging.getLogger(__name__)

# A write costs about as much for one run as for dozens: what is queued within this after the
# first item goes in the same transaction.
LINGER_SECONDS = 0.005
_RETRY_FIRST_SECONDS = 0.2
_RETRY_MAX_SECONDS = 5.0


@dataclass
class _Batch:
    logs: list[StepLogEntry] = field(default_factory=list)
    outcomes: list[tuple[Outcome, asyncio.Future[Outcome | None]]] = field(default_factory=list)
    renewals: list[
        tuple[list[tuple[uuid.UUID, int]], asyncio.Future[dict[tuple[uuid.UUID, int], bool]]]
    ] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.logs or self.outcomes or self.renewals)

    def extend(self, later: _Batch) -> None:
        self.logs += later.logs
        self.outcomes += later.outcomes
        self.renewals += later.renewals


class RunLedger:
    """One writer per worker: whatever its runs queued meanwhile goes in one transaction.

    While a batch is being written the next one fills, so under load every transaction carries
    many runs' logs and outcomes (one multi-row statement each). A run's logs are queued before
    its outcome, so they are written with it or before it. All writes go through this one task,
    so its multi-row updates never wait on each other.
    """

    def __init__(self, db: Database, worker: str, lease: timedelta) -> None:
        self._db = db
        self._worker = worker
        self._lease = lease
        self._next = _Batch()
        self._queued = asyncio.Event()
        # Set while nothing is queued or being written.
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever(), name="run-ledger")

    async def close(self, grace: float) -> None:
        """Writes what is queued (giving up after `grace` seconds), then stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), grace)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def log(self, entry: StepLogEntry) -> None:
        """Queues a step log entry; it is written unless the run's lease was lost."""
        self._next.logs.append(entry)
        self._wake()

    def settle(self, outcome: Outcome) -> asyncio.Future[Outcome | None]:
        """Queues how a run ended; the future gives the outcome recorded: this one, or the
        run's failure if the database refused it (see `_write_by_run`), or None when the lease
        was lost and another worker holds the run."""
        done: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._next.outcomes.append((outcome, done))
        self._wake()
        return done

    async def renew(
        self, held: Sequence[tuple[uuid.UUID, int]]
    ) -> dict[tuple[uuid.UUID, int], bool]:
        """Extends the leases of (run, attempt) pairs; returns those still held, each with
        whether cancellation was asked for."""
        done: asyncio.Future[dict[tuple[uuid.UUID, int], bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self._next.renewals.append((list(held), done))
        self._wake()
        return await done

    def _wake(self) -> None:
        self._drained.clear()
        self._queued.set()

    async def _write_forever(self) -> None:
        delay = _RETRY_FIRST_SECONDS
        while True:
            await self._queued.wait()
            await asyncio.sleep(LINGER_SECONDS)
            self._queued.clear()
            batch, self._next = self._next, _Batch()
            try:
                await self._write(batch)
                left = None
            except sa_exc.DataError:
                # A value the database refuses fails the whole statement: each run is written
                # on its own, so one run's bad row cannot hold back every other run's.
                log.exception("a batch of run logs and outcomes was refused; writing it by run")
                left = await self._write_by_run(batch)
            except Exception:
                log.exception("writing run logs and outcomes failed; retrying")
                left = batch
            if left:
                # Nothing of it was committed: it goes first in the next batch. Leases may run
                # out meanwhile; then the writes that would touch a run taken over do nothing.
                left.extend(self._next)
                self._next = left
                self._queued.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_SECONDS)
            else:
                delay = _RETRY_FIRST_SECONDS
            if not self._next:
                self._drained.set()

    async def _write_by_run(self, batch: _Batch) -> _Batch | None:
        """Writes the lease renewals, then each run's logs and outcome, in transactions of their
        own. A run whose writes are refused again loses the logs it could not keep and, if its
        outcome was among them, ends failed. Returns what is left to retry (the database could
        not be reached), if anything."""
        parts: dict[uuid.UUID, _Batch] = {}
        for entry in batch.logs:
            parts.setdefault(entry.run_id, _Batch()).logs.append(entry)
        for outcome, done in batch.outcomes:
            parts.setdefault(outcome.run_id, _Batch()).outcomes.append((outcome, done))
        left = _Batch()
        renewals = [_Batch(renewals=batch.renewals)] if batch.renewals else []
        for part in [*renewals, *parts.values()]:
            try:
                await self._write(part)
            except sa_exc.DataError:
                log.exception("a run's logs or outcome were refused; the run ends failed")
                try:
                    await self._write(_failed_instead(part))
                except Exception:
                    log.exception("recording the run as failed did not work either; retrying")
                    left.extend(part)
            except Exception:
                log.exception("writing run logs and outcomes failed; retrying")
                left.extend(part)
        return left or None

    async def _write(self, batch: _Batch) -> None:
        outcomes = [outcome for outcome, _ in batch.outcomes]
        renew = list({pair for pairs, _ in batch.renewals for pair in pairs})
        async with self._db.system(SystemPath.RUN_QUEUE) as session:
            queue = QueueRepository(session, self._worker)
            kept = await queue.renew(renew, self._lease)
            await queue.add_logs(batch.logs)
            recorded = await queue.finish([o for o in outcomes if o.status in FINAL_RUN_STATUSES])
            recorded |= await queue.requeue(
                [o for o in outcomes if o.status not in FINAL_RUN_STATUSES]
            )
        for outcome, done in batch.outcomes:
            if not done.done():
                done.set_result(outcome if outcome.run_id in recorded else None)
        for pairs, answered in batch.renewals:
            if not answered.done():
                answered.set_result({pair: kept[pair] for pair in pairs if pair in kept})


def _failed_instead(part: _Batch) -> _Batch:
    """A run's part of a batch that the database refused, as the run's failure without its
    logs (with the same futures: the worker learns that the failure is what was recorded)."""
    return _Batch(
        outcomes=[
            (
                Outcome(
                    outcome.run_id,
                    outcome.attempt,
                    RunStatus.FAILED,
                    "internal error: the database refused this run's step log or outcome",
                ),
                done,
            )
            for outcome, done in part.outcomes
        ]
    )
