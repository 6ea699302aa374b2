"""Queries of the `execution` schema; the caller's transaction decides when to commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, null, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from aias.core.db import json_rows
from aias.core.pagination import PageCursor, newest_first
from aias.core.stored import storable
from aias.services.execution.models import (
    RunRow,
    StepLogRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
    WorkflowRow,
    WorkflowVersionRow,
)


@dataclass(frozen=True)
class WebhookTarget:
    endpoint_id: uuid.UUID
    endpoint_enabled: bool
    workflow_id: uuid.UUID
    workflow_version: int
    workflow_enabled: bool
    # The endpoint or its workflow is deleted.
    deleted: bool
    # Set when the URL holds the secret a rotation replaced: it is accepted until then.
    secret_expire_time: datetime | None
    signing_key: bytes | None


@dataclass(frozen=True)
class StatusCounts:
    """Runs created within the last hour and the last day, by their status now."""

    hour: dict[str, int]
    day: dict[str, int]


@dataclass(frozen=True)
class QueueState:
    """How many runs are queued, since when the longest-waiting due one waits, read when."""

    queued: int
    oldest_due_time: datetime | None
    read_time: datetime


@dataclass(frozen=True)
class TenantQueueState:
    """One tenant's part of the queue: its queued runs, its longest-waiting due one's time."""

    tenant_id: uuid.UUID
    queued: int
    oldest_due_time: datetime | None
    read_time: datetime


@dataclass(frozen=True)
class RunFilter:
    """Which runs a list shows: every field left empty means no condition."""

    workflow_id: uuid.UUID | None = None
    statuses: frozenset[str] = frozenset()
    created_after: datetime | None = None
    created_before: datetime | None = None


class ExecutionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, *rows: object, refresh: bool = True) -> None:
        """Inserts the rows; `refresh` reads back server defaults (a round trip per row)."""
        self._session.add_all(rows)
        await self._session.flush()
        if refresh:
            for row in rows:
                await self._session.refresh(row)

    async def status_counts(self, hour: timedelta, day: timedelta) -> StatusCounts:
        """Both windows in one scan of the day's runs (the tenant's create_time index)."""
        recent = RunRow.create_time > func.now() - hour
        query = (
            select(RunRow.status, func.count(), func.count().filter(recent))
            .where(RunRow.create_time > func.now() - day)
            .group_by(RunRow.status)
        )
        rows = (await self._session.execute(query)).all()
        return StatusCounts(
            hour={status: int(n) for status, _, n in rows if n},
            day={status: int(n) for status, n, _ in rows},
        )

    async def latest_failures(
        self, within: timedelta, limit: int
    ) -> list[tuple[RunRow, StepLogRow | None]]:
        """The newest failed runs created within `within`, each with its last failed step."""
        query = (
            select(RunRow)
            .where(RunRow.status == "failed", RunRow.create_time > func.now() - within)
            .order_by(RunRow.create_time.desc(), RunRow.id.desc())
            .limit(limit)
        )
        runs = list((await self._session.execute(query)).scalars())
        steps: dict[uuid.UUID, StepLogRow] = {}
        if runs:
            failed = (
                select(StepLogRow)
                .where(StepLogRow.run_id.in_([r.id for r in runs]), StepLogRow.status == "failed")
                .order_by(StepLogRow.attempt, StepLogRow.step_index, StepLogRow.id)
            )
            # Ordered oldest first, so each run keeps the step that failed its last attempt.
            steps = {row.run_id: row for row in (await self._session.execute(failed)).scalars()}
        return [(run, steps.get(run.id)) for run in runs]

    async def queue_state(self) -> QueueState:
        now = func.now()
        query = select(
            func.count(),
            func.min(RunRow.available_time).filter(RunRow.available_time <= now),
            now,
        ).where(RunRow.status == "queued")
        queued, oldest, read_time = (await self._session.execute(query)).one()
        return QueueState(int(queued), oldest, read_time)

    async def queue_by_tenant(self) -> list[TenantQueueState]:
        """The queue of each tenant with runs queued (one row per such tenant)."""
        now = func.now()
        query = (
            select(
                RunRow.tenant_id,
                func.count(),
                func.min(RunRow.available_time).filter(RunRow.available_time <= now),
                now,
            )
            .where(RunRow.status == "queued")
            .group_by(RunRow.tenant_id)
        )
        return [
            TenantQueueState(tenant_id, int(queued), oldest, read_time)
            for tenant_id, queued, oldest, read_time in await self._session.execute(query)
        ]

    async def workflow(
        self, workflow_id: uuid.UUID, *, for_update: bool = False
    ) -> WorkflowRow | None:
        """The workflow unless it is deleted; `for_update` locks it until the transaction ends."""
        query = select(WorkflowRow).where(
            WorkflowRow.id == workflow_id, WorkflowRow.delete_time.is_(None)
        )
        if for_update:
            query = query.with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def workflow_version(
        self, workflow_id: uuid.UUID, version: int
    ) -> WorkflowVersionRow | None:
        return await self._session.get(WorkflowVersionRow, (workflow_id, version))

    async def current_versions(
        self, workflows: list[WorkflowRow]
    ) -> dict[uuid.UUID, WorkflowVersionRow]:
        """The current version of each workflow, in one query."""
        if not workflows:
            return {}
        keys = [(w.id, w.current_version) for w in workflows]
        query = select(WorkflowVersionRow).where(
            tuple_(WorkflowVersionRow.workflow_id, WorkflowVersionRow.version).in_(keys)
        )
        return {row.workflow_id: row for row in (await self._session.execute(query)).scalars()}

    async def workflow_versions(
        self, workflow_id: uuid.UUID, before: int | None, limit: int
    ) -> list[WorkflowVersionRow]:
        """A workflow's versions, newest first, below version `before` when given."""
        query = select(WorkflowVersionRow).where(WorkflowVersionRow.workflow_id == workflow_id)
        if before is not None:
            query = query.where(WorkflowVersionRow.version < before)
        query = query.order_by(WorkflowVersionRow.version.desc()).limit(limit)
        return list((await self._session.execute(query)).scalars())

    async def workflows(self, cursor: PageCursor | None, limit: int) -> list[WorkflowRow]:
        live = select(WorkflowRow).where(WorkflowRow.delete_time.is_(None))
        query = newest_first(live, WorkflowRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())

    async def endpoint(
        self, endpoint_id: uuid.UUID, *, for_update: bool = False
    ) -> WebhookEndpointRow | None:
        """The endpoint unless it is deleted; `for_update` locks it until the transaction ends."""
        query = select(WebhookEndpointRow).where(
            WebhookEndpointRow.id == endpoint_id, WebhookEndpointRow.delete_time.is_(None)
        )
        if for_update:
            query = query.with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def endpoints(self, cursor: PageCursor | None, limit: int) -> list[WebhookEndpointRow]:
        live = select(WebhookEndpointRow).where(WebhookEndpointRow.delete_time.is_(None))
        query = newest_first(live, WebhookEndpointRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())

    async def delete_endpoints_of(self, workflow_id: uuid.UUID, when: datetime) -> None:
        """Soft-deletes the endpoints of a workflow that is being deleted."""
        await self._session.execute(
            update(WebhookEndpointRow)
            .where(
                WebhookEndpointRow.workflow_id == workflow_id,
                WebhookEndpointRow.delete_time.is_(None),
            )
            .values(delete_time=when)
        )

    async def webhook_target(self, secret_hash: bytes) -> WebhookTarget | None:
        """The endpoint a secret opens (current or previous) and its workflow, in one query.

        Deleted and expired targets are found too, so a delivery to them can be recorded; the
        caller refuses them.
        """
        endpoint, workflow = WebhookEndpointRow, WorkflowRow
        current = endpoint.secret_hash == secret_hash
        query = (
            select(
                endpoint.id,
                endpoint.enabled,
                workflow.id,
                workflow.current_version,
                workflow.enabled,
                or_(endpoint.delete_time.is_not(None), workflow.delete_time.is_not(None)),
                case((current, null()), else_=endpoint.previous_secret_expire_time),
                endpoint.signing_key,
            )
            .join(workflow, workflow.id == endpoint.workflow_id)
            .where(or_(current, endpoint.previous_secret_hash == secret_hash))
            .order_by(current.desc())
            .limit(1)
        )
        row = (await self._session.execute(query)).one_or_none()
        return WebhookTarget(*row) if row is not None else None

    async def _lock_count(self, tenant_id: uuid.UUID, kind: str) -> None:
        """Serialises one tenant's creations of one kind, so a count check cannot be raced."""
        await self._session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"count:{kind}:{tenant_id}"},
        )

    async def count_workflows(self, tenant_id: uuid.UUID) -> int:
        """How many workflows the tenant has, locked against concurrent creation."""
        await self._lock_count(tenant_id, "workflows")
        query = select(func.count()).where(WorkflowRow.delete_time.is_(None))
        return int((await self._session.execute(query)).scalar_one())

    async def count_endpoints(self, tenant_id: uuid.UUID) -> int:
        """How many webhook endpoints the tenant has, locked against concurrent creation."""
        await self._lock_count(tenant_id, "endpoints")
        query = select(func.count()).where(WebhookEndpointRow.delete_time.is_(None))
        return int((await self._session.execute(query)).scalar_one())

    async def lock_idempotency_key(self, endpoint_id: uuid.UUID, key: str) -> None:
        """Serialises concurrent deliveries with one key until this transaction ends."""
        await self._session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"{endpoint_id}:{key}"},
        )

    async def run_by_idempotency_key(
        self, endpoint_id: uuid.UUID, key: str, window: timedelta
    ) -> RunRow | None:
        query = (
            select(RunRow)
            .where(
                RunRow.endpoint_id == endpoint_id,
                RunRow.idempotency_key == key,
                RunRow.create_time > func.now() - window,
            )
            .order_by(RunRow.create_time)
            .limit(1)
        )
        return (await self._session.execute(query)).scalar_one_or_none()

    async def deliveries(
        self, endpoint_id: uuid.UUID | None, cursor: PageCursor | None, limit: int
    ) -> list[WebhookDeliveryRow]:
        query = select(WebhookDeliveryRow)
        if endpoint_id is not None:
            query = query.where(WebhookDeliveryRow.endpoint_id == endpoint_id)
        query = newest_first(query, WebhookDeliveryRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())

    async def prune_deliveries(self, keep: int, batch: int) -> int:
        """Deletes up to `batch` of the tenant's deliveries older than its `keep` newest."""
        newest_first_order = (WebhookDeliveryRow.create_time.desc(), WebhookDeliveryRow.id.desc())
        oldest_kept = (
            await self._session.execute(
                select(WebhookDeliveryRow.create_time, WebhookDeliveryRow.id)
                .order_by(*newest_first_order)
                .offset(keep - 1)
                .limit(1)
            )
        ).first()
        if oldest_kept is None:
            return 0
        older = (
            select(WebhookDeliveryRow.id)
            .where(
                tuple_(WebhookDeliveryRow.create_time, WebhookDeliveryRow.id)
                < tuple_(oldest_kept.create_time, oldest_kept.id)
            )
            .limit(batch)
        )
        deleted = await self._session.execute(
            delete(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.id.in_(older))
            .returning(WebhookDeliveryRow.id)
        )
        return len(deleted.all())

    async def run(self, run_id: uuid.UUID, *, lock: bool = False) -> RunRow | None:
        """The run; `lock` holds it against changes until the transaction ends."""
        return await self._session.get(RunRow, run_id, with_for_update=lock or None)

    async def cancel(self, run_id: uuid.UUID) -> RunRow:
        """Ends a queued run as cancelled, now."""
        return await self._update_run(run_id, status="cancelled", end_time=func.now())

    async def ask_to_cancel(self, run_id: uuid.UUID) -> RunRow:
        """Flags a running run, so its worker ends it as cancelled at the next step boundary."""
        return await self._update_run(run_id, cancel_requested=True)

    async def _update_run(self, run_id: uuid.UUID, **values: Any) -> RunRow:
        """Sets columns of a run (SQL expressions allowed) and returns the run as written."""
        query = (
            update(RunRow)
            .where(RunRow.id == run_id)
            .values(**values)
            .returning(RunRow)
            .execution_options(populate_existing=True)
        )
        return (await self._session.execute(query)).scalar_one()

    async def runs(self, where: RunFilter, cursor: PageCursor | None, limit: int) -> list[RunRow]:
        query = select(RunRow)
        if where.workflow_id is not None:
            query = query.where(RunRow.workflow_id == where.workflow_id)
        if where.statuses:
            query = query.where(RunRow.status.in_(sorted(where.statuses)))
        if where.created_after is not None:
            query = query.where(RunRow.create_time > where.created_after)
        if where.created_before is not None:
            query = query.where(RunRow.create_time < where.created_before)
        query = newest_first(query, RunRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())

    async def step_logs(self, run_id: uuid.UUID) -> list[StepLogRow]:
        query = (
            select(StepLogRow)
            .where(StepLogRow.run_id == run_id)
            .order_by(StepLogRow.attempt, StepLogRow.step_index, StepLogRow.id)
        )
        return list((await self._session.execute(query)).scalars())

    async def step_logs_after(self, run_id: uuid.UUID, after_id: int) -> list[StepLogRow]:
        """The run's log entries written after entry `after_id` (0: all), in the order written."""
        query = (
            select(StepLogRow)
            .where(StepLogRow.run_id == run_id, StepLogRow.id > after_id)
            .order_by(StepLogRow.id)
        )
        return list((await self._session.execute(query)).scalars())


# -- the run queue ---------------------------------------------------------------------------
# The worker's hot path, in SQL beside the functions that run it: each statement handles a
# whole batch of runs. Every one runs inside `Database.system(SystemPath.RUN_QUEUE)`.

# The queue is two partial indexes over the runs table: `runs_queued` (tenant, available time)
# holds queued runs, `runs_leased` (lease expiry) running ones. A run whose lease expired (its
# worker died or stalled) goes back to the queue (`_RECLAIM`), so a claim only looks at queued
# rows: a tenant's oldest is the first entry of its part of `runs_queued`.

# The tenants with due runs, in id order after :after and then from the start up to :after,
# by a loose index scan over `runs_queued`: one probe per tenant (its oldest queued run, due or
# not), so a tenant with 10,000 queued runs costs what one with a single run does. Each walk
# starts from a seed row (dropped at the end), so every probe is the same parameterised index
# scan whatever the planner's statistics say about the queue; the scan is lazy and stops once
# :limit tenants are found.
_NEXT_QUEUED = """
    SELECT n.tenant_id, n.available_time FROM {walk} t CROSS JOIN LATERAL (
        SELECT r.tenant_id, r.available_time FROM execution.runs r
        WHERE r.status = 'queued' AND r.tenant_id > t.tenant_id {bound}
        ORDER BY r.tenant_id, r.available_time LIMIT 1) n"""
_TENANTS_WITH_WORK = text(f"""
    WITH RECURSIVE
    later(tenant_id, available_time) AS (
        SELECT CAST(:after AS uuid), CAST(NULL AS timestamptz)
        UNION ALL {_NEXT_QUEUED.format(walk="later", bound="")}
    ),
    earlier(tenant_id, available_time) AS (
        -- Below every tenant id: the nil UUID, which no tenant has.
        SELECT CAST('00000000-0000-0000-0000-000000000000' AS uuid), CAST(NULL AS timestamptz)
        UNION ALL {_NEXT_QUEUED.format(walk="earlier", bound="AND r.tenant_id <= :after")}
    )
    (SELECT tenant_id FROM later WHERE available_time <= now())
    UNION ALL
    (SELECT tenant_id FROM earlier WHERE available_time <= now())
    LIMIT :limit""")

# Runs whose lease expired, back to the queue (first in line: their available time is kept).
# The attempt they were on stays counted; the claim that takes them starts the next one. Rows
# another transaction holds are left to a later pass.
_RECLAIM = text("""
    UPDATE execution.runs r
    SET status = 'queued', lease_owner = NULL, lease_expire_time = NULL
    WHERE r.id IN (
        SELECT e.id FROM execution.runs e
        WHERE e.status = 'running' AND e.lease_expire_time < now()
        FOR UPDATE SKIP LOCKED)
    RETURNING r.id""")

# Serialises the claims of each tenant until the transaction ends, so two workers cannot both
# take a tenant's last free slot. Locks are taken in one order (PostgreSQL evaluates volatile
# functions after ORDER BY), so two claims never wait for each other in a cycle.
_LOCK_TENANTS = text("""
    SELECT pg_advisory_xact_lock(hashtextextended('running:' || t::text, 0))
    FROM unnest(CAST(:tenants AS uuid[])) AS t ORDER BY t""")

_LIVE_LEASES = text("""
    SELECT r.tenant_id, count(*) FROM execution.runs r
    WHERE r.tenant_id = ANY(CAST(:tenants AS uuid[]))
      AND r.status = 'running' AND r.lease_expire_time >= now()
    GROUP BY r.tenant_id""")

# Up to `wanted` of each tenant's oldest due runs (an ordered scan of `runs_queued`), locked
# (rows another claim holds are skipped, not waited for) and marked running under the worker's
# lease. The chosen ids are updated through the primary key (`= ANY` of an array): joined
# instead, the planner, which cannot know how few runs a claim takes, may hash-join them with
# a scan of the whole table.
_START = text("""
    UPDATE execution.runs r
    SET status = 'running', attempt = r.attempt + 1, lease_owner = :worker,
        lease_expire_time = now() + :lease, start_time = now(), error = ''
    WHERE r.id = ANY(ARRAY(
        SELECT picked.id
        FROM unnest(CAST(:tenants AS uuid[]), CAST(:wanted AS int[])) AS w(tenant_id, wanted)
        CROSS JOIN LATERAL (
            SELECT q.id FROM execution.runs q
            WHERE q.tenant_id = w.tenant_id AND q.status = 'queued' AND q.available_time <= now()
            ORDER BY q.available_time LIMIT w.wanted
            FOR UPDATE SKIP LOCKED
        ) AS picked))
    RETURNING r.id, r.tenant_id, r.workflow_id, r.workflow_version, r.attempt, r.max_attempts,
        r.payload, r.content_type, r.create_time, r.cancel_requested, r.traceparent""")

# Every statement below touches only runs this worker still holds: same lease owner, same
# attempt, still running. A worker whose lease was taken over changes nothing.
_HELD = "r.lease_owner = :worker AND r.status = 'running'"

_RENEW = text(f"""
    UPDATE execution.runs r SET lease_expire_time = now() + :lease
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS h(id, attempt)
    WHERE r.id = h.id AND r.attempt = h.attempt AND {_HELD}
    RETURNING r.id, r.attempt, r.cancel_requested""")

# The tenant of each entry is its run's: an entry cannot be written under another tenant. Rows
# come as one JSON document (`json_rows`), in the order they are written.
_ADD_LOGS = text(f"""
    INSERT INTO execution.step_logs (tenant_id, run_id, attempt, step_index, step_id, type,
        status, start_time, end_time, duration_ms, message, output_bytes, output_sha256, error)
    SELECT r.tenant_id, l.run_id, l.attempt, l.step_index, l.step_id, l.type, l.status,
        l.start_time, l.end_time, l.duration_ms, l.message, l.output_bytes, l.output_sha256,
        l.error
    FROM ROWS FROM (jsonb_to_recordset(CAST(:rows AS jsonb)) AS (run_id uuid, attempt int,
        step_index int, step_id text, type text, status text, start_time timestamptz,
        end_time timestamptz, duration_ms bigint, message text, output_bytes bigint,
        output_sha256 text, error text)) WITH ORDINALITY AS l(run_id, attempt, step_index,
        step_id, type, status, start_time, end_time, duration_ms, message, output_bytes,
        output_sha256, error, position)
    JOIN execution.runs r ON r.id = l.run_id AND r.attempt = l.attempt AND {_HELD}
    ORDER BY l.position""")

_FINISH = text(f"""
    UPDATE execution.runs r
    SET status = f.status, error = f.error, end_time = now(),
        lease_owner = NULL, lease_expire_time = NULL
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS f(id uuid, attempt int, status text,
        error text)
    WHERE r.id = f.id AND r.attempt = f.attempt AND {_HELD}
    RETURNING r.id""")

# Back to the queue: after a retryable failure (the attempt counts) or on shutdown (it does not).
_REQUEUE = text(f"""
    UPDATE execution.runs r
    SET status = 'queued', error = q.error, available_time = now() + q.delay,
        attempt = CASE WHEN q.counts THEN r.attempt ELSE r.attempt - 1 END,
        lease_owner = NULL, lease_expire_time = NULL
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:delays AS interval[]),
                CAST(:errors AS text[]), CAST(:counts AS boolean[]))
        AS q(id, attempt, delay, error, counts)
    WHERE r.id = q.id AND r.attempt = q.attempt AND {_HELD}
    RETURNING r.id""")


@dataclass(frozen=True)
class ClaimedRun:
    """A run a worker holds, with what it needs to execute it."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    attempt: int
    max_attempts: int
    payload: bytes
    content_type: str
    create_time: datetime
    cancel_requested: bool
    # The trace context of the request that queued the run (None: none was recorded).
    traceparent: str | None = None


@dataclass(frozen=True)
class StepLogEntry:
    """One step log row as the worker writes it."""

    run_id: uuid.UUID
    attempt: int
    step_index: int
    step_id: str
    type: str
    status: str
    start_time: datetime
    end_time: datetime
    duration_ms: int
    message: str
    output_bytes: int
    output_sha256: str
    error: str


@dataclass(frozen=True)
class Outcome:
    """How one attempt of a run ended: a final status, or back to the queue after `delay`.

    A requeued attempt counts towards the run's attempts unless the worker gave it back
    unfinished (shutdown), which `counts=False` says.
    """

    run_id: uuid.UUID
    attempt: int
    status: str
    error: str = ""
    delay: timedelta = timedelta(0)
    counts: bool = True


class QueueRepository:
    """The run queue is the runs table: claim, renew leases, log steps, finish or requeue."""

    def __init__(self, session: AsyncSession, worker: str) -> None:
        self._session = session
        self._worker = worker

    async def reclaim(self) -> int:
        """Puts the runs whose lease expired back in the queue; returns how many."""
        return len((await self._session.execute(_RECLAIM)).all())

    async def tenants_with_work(self, after: uuid.UUID, limit: int) -> list[uuid.UUID]:
        """Up to `limit` tenants with due runs, in id order after `after`, then from the first."""
        rows = await self._session.execute(_TENANTS_WITH_WORK, {"after": after, "limit": limit})
        return list(rows.scalars())

    async def live_leases(self, tenants: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        """How many runs each tenant has under a live lease, counted once no other claim of
        any of these tenants is under way (and none can start before this transaction ends)."""
        if not tenants:
            return {}
        keys = sorted(set(tenants))
        await self._session.execute(_LOCK_TENANTS, {"tenants": keys})
        rows = await self._session.execute(_LIVE_LEASES, {"tenants": keys})
        return {tenant: int(count) for tenant, count in rows}

    async def start(self, wanted: dict[uuid.UUID, int], lease: timedelta) -> list[ClaimedRun]:
        """Takes up to `wanted[tenant]` of each tenant's oldest claimable runs."""
        if not wanted:
            return []
        rows = await self._session.execute(
            _START,
            {
                "tenants": list(wanted),
                "wanted": list(wanted.values()),
                "worker": self._worker,
                "lease": lease,
            },
        )
        return [ClaimedRun(*row) for row in rows]

    async def renew(
        self, held: Sequence[tuple[uuid.UUID, int]], lease: timedelta
    ) -> dict[tuple[uuid.UUID, int], bool]:
        """Extends the leases of (run, attempt) pairs; returns the pairs still held, each with
        whether cancellation was asked for. A pair missing from the answer was taken over."""
        if not held:
            return {}
        rows = await self._session.execute(
            _RENEW,
            {
                "ids": [run for run, _ in held],
                "attempts": [attempt for _, attempt in held],
                "worker": self._worker,
                "lease": lease,
            },
        )
        return {(run, attempt): bool(cancel) for run, attempt, cancel in rows}

    async def add_logs(self, entries: Sequence[StepLogEntry]) -> None:
        """Writes the entries of runs still held; those of runs taken over are dropped."""
        if not entries:
            return
        rows = json_rows(
            {**vars(entry), "message": storable(entry.message), "error": storable(entry.error)}
            for entry in entries
        )
        await self._session.execute(_ADD_LOGS, {"rows": rows, "worker": self._worker})

    async def finish(self, outcomes: Sequence[Outcome]) -> set[uuid.UUID]:
        """Records final statuses; returns the runs recorded (the others were taken over)."""
        if not outcomes:
            return set()
        rows = json_rows(
            {
                "id": o.run_id,
                "attempt": o.attempt,
                "status": str(o.status),
                "error": storable(o.error),
            }
            for o in outcomes
        )
        recorded = await self._session.execute(_FINISH, {"rows": rows, "worker": self._worker})
        return set(recorded.scalars())

    async def requeue(self, outcomes: Sequence[Outcome]) -> set[uuid.UUID]:
        """Puts runs back in the queue; returns those requeued (the others were taken over)."""
        if not outcomes:
            return set()
        rows = await self._session.execute(
            _REQUEUE,
            {
                "ids": [o.run_id for o in outcomes],
                "attempts": [o.attempt for o in outcomes],
                "delays": [o.delay for o in outcomes],
                "errors": [storable(o.error) for o in outcomes],
                "counts": [o.counts for o in outcomes],
                "worker": self._worker,
            },
        )
        return set(rows.scalars())
