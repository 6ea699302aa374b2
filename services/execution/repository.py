"""Queries of the `execution` schema; the caller's transaction decides when to commit."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, delete, func, null, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from aias.core.pagination import PageCursor, newest_first
from services.execution.models import (
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
class ClaimCandidate:
    run_id: uuid.UUID
    tenant_id: uuid.UUID


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

    async def run(self, run_id: uuid.UUID) -> RunRow | None:
        return await self._session.get(RunRow, run_id)

    async def runs(
        self, workflow_id: uuid.UUID | None, cursor: PageCursor | None, limit: int
    ) -> list[RunRow]:
        query = select(RunRow)
        if workflow_id is not None:
            query = query.where(RunRow.workflow_id == workflow_id)
        query = newest_first(query, RunRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())

    async def step_logs(self, run_id: uuid.UUID) -> list[StepLogRow]:
        query = (
            select(StepLogRow)
            .where(StepLogRow.run_id == run_id)
            .order_by(StepLogRow.attempt, StepLogRow.step_index, StepLogRow.id)
        )
        return list((await self._session.execute(query)).scalars())


class QueueRepository:
    """The run queue is the runs table: claim, heartbeat, finish, retry, release."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def next_claimable(
        self, skip_tenants: Collection[uuid.UUID], only: uuid.UUID | None = None
    ) -> ClaimCandidate | None:
        """Locks the oldest claimable run of a tenant not in `skip_tenants` (or run `only`).

        Claimable: queued and due, or running with an expired lease (its worker died). SKIP
        LOCKED lets many workers look at once without waiting for each other. Runs inside
        `Database.system(RUN_QUEUE)`, the only cross-tenant path here.
        """
        now = func.now()
        query = (
            select(RunRow.id, RunRow.tenant_id)
            .where(
                or_(
                    and_(RunRow.status == "queued", RunRow.available_time <= now),
                    and_(RunRow.status == "running", RunRow.lease_expire_time < now),
                )
            )
            .order_by(RunRow.available_time)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if skip_tenants:
            query = query.where(RunRow.tenant_id.not_in(list(skip_tenants)))
        if only is not None:
            query = query.where(RunRow.id == only)
        row = (await self._session.execute(query)).one_or_none()
        return ClaimCandidate(*row) if row is not None else None

    async def running_count(self, tenant_id: uuid.UUID, besides: uuid.UUID) -> int:
        """The tenant's runs held under a live lease, after waiting for other claims of it.

        The advisory lock serialises claims of one tenant until this transaction ends, so two
        workers cannot both take the tenant's last free slot.
        """
        await self._session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"running:{tenant_id}"},
        )
        query = select(func.count()).where(
            RunRow.tenant_id == tenant_id,
            RunRow.status == "running",
            RunRow.lease_expire_time >= func.now(),
            RunRow.id != besides,
        )
        return int((await self._session.execute(query)).scalar_one())

    async def start(self, run_id: uuid.UUID, worker: str, lease: timedelta) -> RunRow:
        """Marks a locked candidate as running under `worker`'s lease."""
        now = func.now()
        await self._session.execute(
            update(RunRow)
            .where(RunRow.id == run_id)
            .values(
                status="running",
                attempt=RunRow.attempt + 1,
                lease_owner=worker,
                lease_expire_time=now + lease,
                start_time=now,
                error="",
            )
        )
        row = await self._session.get(RunRow, run_id, populate_existing=True)
        assert row is not None, "the candidate is locked by this transaction"
        return row

    async def heartbeat(self, run_id: uuid.UUID, worker: str, lease: timedelta) -> bool:
        """Extends the lease; False means another worker took the run over."""
        result = await self._session.execute(
            update(RunRow)
            .where(RunRow.id == run_id, RunRow.lease_owner == worker, RunRow.status == "running")
            .values(lease_expire_time=func.now() + lease)
            .returning(RunRow.id)
        )
        return result.scalar_one_or_none() is not None

    async def finish(self, run_id: uuid.UUID, worker: str, status: str, error: str) -> bool:
        result = await self._session.execute(
            update(RunRow)
            .where(RunRow.id == run_id, RunRow.lease_owner == worker, RunRow.status == "running")
            .values(
                status=status,
                error=error,
                end_time=func.now(),
                lease_owner=None,
                lease_expire_time=None,
            )
            .returning(RunRow.id)
        )
        return result.scalar_one_or_none() is not None

    async def retry_later(
        self, run_id: uuid.UUID, worker: str, delay: timedelta, error: str
    ) -> bool:
        result = await self._session.execute(
            update(RunRow)
            .where(RunRow.id == run_id, RunRow.lease_owner == worker, RunRow.status == "running")
            .values(
                status="queued",
                error=error,
                available_time=func.now() + delay,
                lease_owner=None,
                lease_expire_time=None,
            )
            .returning(RunRow.id)
        )
        return result.scalar_one_or_none() is not None

    async def release(self, run_id: uuid.UUID, worker: str) -> bool:
        """Gives a run back on shutdown; the interrupted attempt does not count."""
        result = await self._session.execute(
            update(RunRow)
            .where(RunRow.id == run_id, RunRow.lease_owner == worker, RunRow.status == "running")
            .values(
                status="queued",
                attempt=RunRow.attempt - 1,
                available_time=func.now(),
                lease_owner=None,
                lease_expire_time=None,
            )
            .returning(RunRow.id)
        )
        return result.scalar_one_or_none() is not None

    async def add_log(self, row: StepLogRow) -> None:
        self._session.add(row)
        await self._session.flush()
