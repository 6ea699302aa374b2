"""Execution use cases: workflows, webhook endpoints, triggering and reading runs."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from aias.core.db import Database, parse_uuid
from aias.core.entitlements import (
    EntitlementsCache,
    TenantEntitlements,
    plan_limit,
    quota_exceeded,
)
from aias.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unavailable,
)
from aias.core.pagination import decode_token, next_page_token, page_size
from aias.core.ratelimit import RateLimiter
from services.execution.domain import (
    DEFAULT_MAX_ATTEMPTS,
    FINAL_RUN_STATUSES,
    RunStatus,
    StepDefinition,
    decode_payload,
    validate_name,
    validate_steps,
)
from services.execution.events import RunEvents
from services.execution.models import (
    RunRow,
    StepLogRow,
    WebhookEndpointRow,
    WorkflowRow,
    WorkflowVersionRow,
)
from services.execution.quota import RunQuota
from services.execution.repository import ExecutionRepository, RunFilter, WebhookTarget
from services.execution.targets import WebhookTargets

IDEMPOTENCY_WINDOW = timedelta(hours=24)
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_CONTENT_TYPE_CHARS = 255
_ENDPOINT_NOT_FOUND = NotFound(
    "WEBHOOK_ENDPOINT_NOT_FOUND",
    "no webhook endpoint matches this URL; check the tenant id and secret",
)


@dataclass(frozen=True)
class WorkflowView:
    row: WorkflowRow
    steps: list[StepDefinition]


_T = TypeVar("_T")


@dataclass(frozen=True)
class Page(Generic[_T]):
    items: list[_T]
    next_page_token: str


def _hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _steps(raw: list[dict[str, Any]]) -> list[StepDefinition]:
    return [StepDefinition(s["id"], s["type"], s.get("config") or {}) for s in raw]


class ExecutionService:
    def __init__(
        self,
        db: Database,
        entitlements: EntitlementsCache,
        quota: RunQuota,
        rates: RateLimiter,
        targets: WebhookTargets,
        events: RunEvents,
        public_url: str,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self._db = db
        self._events = events
        self._entitlements = entitlements
        self._quota = quota
        self._rates = rates
        self._targets = targets
        self._public_url = public_url.rstrip("/")
        self._max_attempts = max_attempts

    # -- workflows ---------------------------------------------------------------------------

    async def create_workflow(
        self, tenant_id: uuid.UUID, name: str, steps: list[StepDefinition], enabled: bool
    ) -> WorkflowView:
        name = validate_name(name, "workflow name")
        steps = validate_steps(steps)
        entitlements = await self._active(tenant_id)
        _check_step_types(steps, entitlements)
        workflow_id = uuid.uuid4()
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            _check_count(
                entitlements, "workflows", "workflows", await repo.count_workflows(tenant_id)
            )
            row = WorkflowRow(
                id=workflow_id, tenant_id=tenant_id, name=name, enabled=enabled, current_version=1
            )
            await repo.add(row)
            await repo.add(
                WorkflowVersionRow(
                    workflow_id=workflow_id,
                    version=1,
                    tenant_id=tenant_id,
                    steps=[s.as_json() for s in steps],
                ),
                refresh=False,
            )
        return WorkflowView(row, steps)

    async def get_workflow(self, tenant_id: uuid.UUID, workflow_id: str) -> WorkflowView:
        wid = parse_uuid(workflow_id, "workflow_id")
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            row = await repo.workflow(wid)
            if row is None:
                raise NotFound("WORKFLOW_NOT_FOUND", f"workflow {wid} does not exist")
            version = await repo.workflow_version(wid, row.current_version)
        assert version is not None, "a workflow always has its current version"
        return WorkflowView(row, _steps(version.steps))

    async def list_workflows(
        self, tenant_id: uuid.UUID, size: int, token: str
    ) -> Page[WorkflowView]:
        limit, cursor = page_size(size), decode_token(token)
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            rows = await repo.workflows(cursor, limit + 1)
            versions = await repo.current_versions(rows[:limit])
        views = [WorkflowView(row, _steps(versions[row.id].steps)) for row in rows[:limit]]
        return Page(views, next_page_token(rows, limit))

    # -- webhook endpoints -------------------------------------------------------------------

    async def create_endpoint(
        self, tenant_id: uuid.UUID, workflow_id: str, name: str
    ) -> tuple[WebhookEndpointRow, str, str]:
        """Returns the endpoint, its secret and its URL; only the secret's hash is stored."""
        wid = parse_uuid(workflow_id, "workflow_id")
        name = validate_name(name, "endpoint name")
        secret = secrets.token_urlsafe(32)
        entitlements = await self._active(tenant_id)
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            if await repo.workflow(wid) is None:
                raise NotFound("WORKFLOW_NOT_FOUND", f"workflow {wid} does not exist")
            _check_count(
                entitlements,
                "webhook_endpoints",
                "webhook endpoints",
                await repo.count_endpoints(tenant_id),
            )
            row = WebhookEndpointRow(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                workflow_id=wid,
                name=name,
                secret_hash=_hash_secret(secret),
                enabled=True,
            )
            await repo.add(row)
        return row, secret, f"{self._public_url}/api/webhooks/{tenant_id}/{secret}"

    async def list_endpoints(
        self, tenant_id: uuid.UUID, requested_tenant: str, size: int, token: str
    ) -> Page[WebhookEndpointRow]:
        if requested_tenant and requested_tenant != str(tenant_id):
            raise PermissionDenied(
                "TENANT_MISMATCH", "tenant_id must be your own tenant's id (or left out)"
            )
        limit, cursor = page_size(size), decode_token(token)
        async with self._db.tenant(tenant_id) as session:
            rows = await ExecutionRepository(session).endpoints(cursor, limit + 1)
        return Page(rows[:limit], next_page_token(rows, limit))

    # -- the webhook hot path ----------------------------------------------------------------

    async def trigger(
        self, tenant: str, secret: str, body: bytes, content_type: str, idempotency_key: str
    ) -> tuple[RunRow, bool]:
        """Queues a run and returns it once committed; True when it is a new run.

        The checks run cheapest first, and every refusal happens before anything is written.
        """
        target, entitlements = await self._open(tenant, secret)
        tenant_id = entitlements.tenant_id
        limits = entitlements.limits
        if limits.webhook_payload_bytes is not None and len(body) > limits.webhook_payload_bytes:
            raise PayloadTooLarge(
                "PAYLOAD_TOO_LARGE",
                f"the body is {len(body)} bytes; the {entitlements.plan} plan accepts at most "
                f"{limits.webhook_payload_bytes}",
                {"limit": "webhook_payload_bytes", "plan": entitlements.plan},
            )
        await self._check_rate(target.endpoint_id, entitlements)
        if len(content_type) > MAX_CONTENT_TYPE_CHARS:
            raise InvalidArgument(
                "INVALID_CONTENT_TYPE",
                f"the Content-Type header is longer than {MAX_CONTENT_TYPE_CHARS} characters",
            )
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidArgument(
                "INVALID_IDEMPOTENCY_KEY",
                f"the idempotency key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters",
            )
        decode_payload(body, content_type)
        key = idempotency_key.strip()
        ticket = None
        try:
            async with self._db.tenant(tenant_id) as session:
                repo = ExecutionRepository(session)
                if key:
                    await repo.lock_idempotency_key(target.endpoint_id, key)
                    existing = await repo.run_by_idempotency_key(
                        target.endpoint_id, key, IDEMPOTENCY_WINDOW
                    )
                    if existing is not None:
                        return existing, False
                ticket = await self._quota.take(entitlements)
                run = RunRow(
                    id=uuid.uuid4(),
                    tenant_id=tenant_id,
                    workflow_id=target.workflow_id,
                    workflow_version=target.workflow_version,
                    endpoint_id=target.endpoint_id,
                    status=RunStatus.QUEUED.value,
                    attempt=0,
                    max_attempts=self._max_attempts,
                    payload=body,
                    content_type=content_type or "application/json",
                    idempotency_key=key or None,
                    error="",
                )
                # Only the id and status go back to the caller: no read-back on the hot path.
                await repo.add(run, refresh=False)
        except BaseException:
            # Not committed: the reserved run was not used.
            if ticket is not None:
                self._quota.give_back(ticket)
            raise
        return run, True

    async def admit(self, tenant: str, secret: str) -> int:
        """The largest body a webhook URL accepts (0: no plan limit), or why it accepts none."""
        _target, entitlements = await self._open(tenant, secret)
        return entitlements.limits.webhook_payload_bytes or 0

    async def _open(self, tenant: str, secret: str) -> tuple[WebhookTarget, TenantEntitlements]:
        """What a webhook URL leads to, once the endpoint, workflow and tenant accept deliveries."""
        try:
            tenant_id = uuid.UUID(tenant)
        except ValueError:
            raise _ENDPOINT_NOT_FOUND from None
        target = await self._targets.resolve(tenant_id, _hash_secret(secret))
        if target is None or not target.endpoint_enabled:
            raise _ENDPOINT_NOT_FOUND
        if not target.workflow_enabled:
            raise FailedPrecondition(
                "WORKFLOW_DISABLED",
                f"workflow {target.workflow_id} is disabled; enable it to accept deliveries",
                {"http_status": "409"},
            )
        return target, await self._active(tenant_id)

    async def _active(self, tenant_id: uuid.UUID) -> TenantEntitlements:
        entitlements = await self._entitlements.get(tenant_id)
        if not entitlements.active:
            raise PermissionDenied(
                "TENANT_SUSPENDED", "the tenant is suspended; contact the operator"
            )
        return entitlements

    async def _check_rate(self, endpoint_id: uuid.UUID, entitlements: TenantEntitlements) -> None:
        rate = entitlements.limits.webhook_requests_per_second
        if rate is None:
            return
        burst = entitlements.limits.webhook_burst or rate
        wait = await self._rates.hit(f"webhook:{endpoint_id}", rate, burst)
        if wait is not None:
            raise quota_exceeded(
                "webhook_requests_per_second",
                rate,
                entitlements.plan,
                f"this endpoint accepts {rate} requests per second with bursts of {burst}",
                wait,
            )

    # -- runs --------------------------------------------------------------------------------

    async def get_run(self, tenant_id: uuid.UUID, run_id: str) -> RunRow:
        rid = parse_uuid(run_id, "run_id")
        async with self._db.tenant(tenant_id) as session:
            run = await ExecutionRepository(session).run(rid)
        if run is None:
            raise NotFound("RUN_NOT_FOUND", f"run {rid} does not exist")
        return run

    async def list_runs(
        self,
        tenant_id: uuid.UUID,
        workflow_id: str,
        statuses: Collection[RunStatus],
        created_after: datetime | None,
        created_before: datetime | None,
        size: int,
        token: str,
    ) -> Page[RunRow]:
        if created_after and created_before and created_after >= created_before:
            raise InvalidArgument(
                "INVALID_TIME_RANGE", "create_time_after must be earlier than create_time_before"
            )
        where = RunFilter(
            workflow_id=parse_uuid(workflow_id, "workflow_id") if workflow_id else None,
            statuses=frozenset(status.value for status in statuses),
            created_after=created_after,
            created_before=created_before,
        )
        # A page token is bound to the filter it was issued for.
        scope = "|".join(
            (
                str(where.workflow_id or ""),
                ",".join(sorted(where.statuses)),
                created_after.isoformat() if created_after else "",
                created_before.isoformat() if created_before else "",
            )
        )
        limit, cursor = page_size(size), decode_token(token, scope)
        async with self._db.tenant(tenant_id) as session:
            rows = await ExecutionRepository(session).runs(where, cursor, limit + 1)
        return Page(rows[:limit], next_page_token(rows, limit, scope))

    async def run_logs(self, tenant_id: uuid.UUID, run_id: str) -> list[StepLogRow]:
        rid = parse_uuid(run_id, "run_id")
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            if await repo.run(rid) is None:
                raise NotFound("RUN_NOT_FOUND", f"run {rid} does not exist")
            return await repo.step_logs(rid)

    async def cancel_run(self, tenant_id: uuid.UUID, run_id: str) -> tuple[RunRow, bool]:
        """Cancels a queued run at once (True), or asks the worker holding a running run to stop
        at its next step boundary (False; the trigger on runs tells the worker at commit)."""
        rid = parse_uuid(run_id, "run_id")
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            # Locked, so no worker claims it while it is being cancelled.
            run = await repo.run(rid, lock=True)
            if run is None:
                raise NotFound("RUN_NOT_FOUND", f"run {rid} does not exist")
            if run.status in FINAL_RUN_STATUSES:
                raise FailedPrecondition(
                    "RUN_FINISHED",
                    f"run {rid} has already finished ({run.status}); only queued or running "
                    "runs can be cancelled",
                    {"http_status": "409"},
                )
            if run.status == RunStatus.QUEUED:
                return await repo.cancel(rid), True
            return await repo.ask_to_cancel(rid), False

    async def retry_run(self, tenant_id: uuid.UUID, run_id: str) -> RunRow:
        """A new queued run with the input and workflow version of a finished run, linked to it.

        It is a run like any other: the tenant must be active and it takes one of the month's
        runs, given back if the run is not committed.
        """
        rid = parse_uuid(run_id, "run_id")
        entitlements = await self._active(tenant_id)
        ticket = None
        try:
            async with self._db.tenant(tenant_id) as session:
                repo = ExecutionRepository(session)
                original = await repo.run(rid)
                if original is None:
                    raise NotFound("RUN_NOT_FOUND", f"run {rid} does not exist")
                if original.status not in FINAL_RUN_STATUSES:
                    raise FailedPrecondition(
                        "RUN_NOT_FINISHED",
                        f"run {rid} is {original.status}; only a finished run can be retried "
                        "(cancel it first)",
                        {"http_status": "409"},
                    )
                ticket = await self._quota.take(entitlements)
                run = RunRow(
                    id=uuid.uuid4(),
                    tenant_id=tenant_id,
                    workflow_id=original.workflow_id,
                    workflow_version=original.workflow_version,
                    endpoint_id=original.endpoint_id,
                    status=RunStatus.QUEUED.value,
                    attempt=0,
                    max_attempts=self._max_attempts,
                    payload=original.payload,
                    content_type=original.content_type,
                    error="",
                    retry_of=original.id,
                )
                await repo.add(run)
        except BaseException:
            # Not committed: the reserved run was not used.
            if ticket is not None:
                self._quota.give_back(ticket)
            raise
        return run

    async def watch_run(
        self, tenant_id: uuid.UUID, run_id: str
    ) -> AsyncIterator[RunRow | StepLogRow]:
        """The run, then its step logs and changes as they are committed, until it finishes.

        Each notice (or missed notices) re-reads the run and the log entries not sent yet, in
        the tenant's own transaction.
        """
        rid = parse_uuid(run_id, "run_id")
        sent_log, sent_state = 0, None
        with self._events.follow(rid) as changed:
            while True:
                changed.clear()
                async with self._db.tenant(tenant_id) as session:
                    repo = ExecutionRepository(session)
                    # The run before its logs: once it reads as finished, every entry written
                    # before it finished is committed, so the read after it sees them all.
                    run = await repo.run(rid)
                    if run is None:
                        raise NotFound("RUN_NOT_FOUND", f"run {rid} does not exist")
                    logs = await repo.step_logs_after(rid, sent_log)
                state = (run.status, run.attempt, run.cancel_requested)
                if sent_state is None:
                    sent_state = state
                    yield run
                for entry in logs:
                    sent_log = entry.id
                    yield entry
                if state != sent_state:
                    sent_state = state
                    yield run
                if run.status in FINAL_RUN_STATUSES:
                    return
                if self._events.closed:
                    raise Unavailable(
                        "SHUTTING_DOWN", "the execution service is stopping; follow the run again"
                    )
                await changed.wait()


def _check_step_types(steps: list[StepDefinition], entitlements: TenantEntitlements) -> None:
    allowed = entitlements.limits.allowed_step_types
    if allowed is None:
        return
    for index, step in enumerate(steps):
        if step.type not in allowed:
            raise plan_limit(
                "allowed_step_types",
                len(allowed),
                entitlements.plan,
                f"steps[{index}].type {step.type!r} is not one of the plan's step types "
                f"({', '.join(sorted(allowed))})",
            )


def _check_count(
    entitlements: TenantEntitlements, limit_name: str, what: str, current: int
) -> None:
    limit: int | None = getattr(entitlements.limits, limit_name)
    if limit is not None and current >= limit:
        raise plan_limit(limit_name, limit, entitlements.plan, f"the tenant has {current} {what}")
