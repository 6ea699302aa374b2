"""Execution use cases: workflows, webhook endpoints, triggering and reading runs."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from aias.core.db import Database, parse_uuid
from aias.core.errors import (
    FailedPrecondition,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from aias.core.pagination import PageCursor, decode_token, encode_token, page_size
from services.execution.domain import (
    DEFAULT_MAX_ATTEMPTS,
    RunStatus,
    StepDefinition,
    decode_payload,
    validate_name,
    validate_steps,
)
from services.execution.entitlements import EntitlementsClient
from services.execution.models import (
    RunRow,
    StepLogRow,
    WebhookEndpointRow,
    WorkflowRow,
    WorkflowVersionRow,
)
from services.execution.repository import ExecutionRepository

IDEMPOTENCY_WINDOW = timedelta(hours=24)
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
        entitlements: EntitlementsClient,
        public_url: str,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self._db = db
        self._entitlements = entitlements
        self._public_url = public_url.rstrip("/")
        self._max_attempts = max_attempts

    # -- workflows ---------------------------------------------------------------------------

    async def create_workflow(
        self, tenant_id: uuid.UUID, name: str, steps: list[StepDefinition], enabled: bool
    ) -> WorkflowView:
        name = validate_name(name, "workflow name")
        steps = validate_steps(steps)
        workflow_id = uuid.uuid4()
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
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
        return Page(views, _next_token(rows, limit))

    # -- webhook endpoints -------------------------------------------------------------------

    async def create_endpoint(
        self, tenant_id: uuid.UUID, workflow_id: str, name: str
    ) -> tuple[WebhookEndpointRow, str, str]:
        """Returns the endpoint, its secret and its URL; only the secret's hash is stored."""
        wid = parse_uuid(workflow_id, "workflow_id")
        name = validate_name(name, "endpoint name")
        secret = secrets.token_urlsafe(32)
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            if await repo.workflow(wid) is None:
                raise NotFound("WORKFLOW_NOT_FOUND", f"workflow {wid} does not exist")
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
        return Page(rows[:limit], _next_token(rows, limit))

    # -- the webhook hot path ----------------------------------------------------------------

    async def trigger(
        self, tenant: str, secret: str, body: bytes, content_type: str, idempotency_key: str
    ) -> tuple[RunRow, bool]:
        """Queues a run and returns it once committed; True when it is a new run."""
        try:
            tenant_id = uuid.UUID(tenant)
        except ValueError:
            raise _ENDPOINT_NOT_FOUND from None
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            endpoint = await repo.endpoint_by_secret(_hash_secret(secret))
            if endpoint is None or not endpoint.enabled:
                raise _ENDPOINT_NOT_FOUND
            workflow = await repo.workflow(endpoint.workflow_id)
            if workflow is None:
                raise _ENDPOINT_NOT_FOUND
            if not workflow.enabled:
                raise FailedPrecondition(
                    "WORKFLOW_DISABLED",
                    f"workflow {workflow.id} is disabled; enable it to accept deliveries",
                    {"http_status": "409"},
                )
            limits = await self._entitlements.limits(tenant_id)
            if not limits.active:
                raise PermissionDenied("TENANT_SUSPENDED", "the tenant is suspended")
            if len(body) > limits.max_payload_bytes:
                raise PayloadTooLarge(
                    "PAYLOAD_TOO_LARGE",
                    f"the body is {len(body)} bytes; your plan accepts at most "
                    f"{limits.max_payload_bytes}",
                )
            decode_payload(body, content_type)
            key = idempotency_key.strip()[:255]
            if key:
                await repo.lock_idempotency_key(endpoint.id, key)
                existing = await repo.run_by_idempotency_key(endpoint.id, key, IDEMPOTENCY_WINDOW)
                if existing is not None:
                    return existing, False
            run = RunRow(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                workflow_id=workflow.id,
                workflow_version=workflow.current_version,
                endpoint_id=endpoint.id,
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
        return run, True

    # -- runs --------------------------------------------------------------------------------

    async def get_run(self, tenant_id: uuid.UUID, run_id: str) -> RunRow:
        rid = parse_uuid(run_id, "run_id")
        async with self._db.tenant(tenant_id) as session:
            run = await ExecutionRepository(session).run(rid)
        if run is None:
            raise NotFound("RUN_NOT_FOUND", f"run {rid} does not exist")
        return run

    async def list_runs(
        self, tenant_id: uuid.UUID, workflow_id: str, size: int, token: str
    ) -> Page[RunRow]:
        wid = parse_uuid(workflow_id, "workflow_id") if workflow_id else None
        limit, cursor = page_size(size), decode_token(token, str(wid or ""))
        async with self._db.tenant(tenant_id) as session:
            rows = await ExecutionRepository(session).runs(wid, cursor, limit + 1)
        return Page(rows[:limit], _next_token(rows, limit, str(wid or "")))

    async def run_logs(self, tenant_id: uuid.UUID, run_id: str) -> list[StepLogRow]:
        rid = parse_uuid(run_id, "run_id")
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            if await repo.run(rid) is None:
                raise NotFound("RUN_NOT_FOUND", f"run {rid} does not exist")
            return await repo.step_logs(rid)


def _next_token(rows: list[Any], limit: int, scope: str = "") -> str:
    """A token only when a row beyond the page exists (the query fetched limit + 1)."""
    if len(rows) <= limit:
        return ""
    last = rows[limit - 1]
    return encode_token(PageCursor(last.create_time, last.id), scope)
