"""Execution use cases: workflows, webhook endpoints, triggering and reading runs."""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry

from aias.core import signing
from aias.core.db import Database, parse_uuid
from aias.core.entitlements import (
    EntitlementsCache,
    TenantEntitlements,
    plan_limit,
    quota_exceeded,
)
from aias.core.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unavailable,
)
from aias.core.pagination import (
    decode_number_token,
    decode_token,
    encode_number_token,
    next_page_token,
    page_size,
)
from aias.core.ratelimit import RateLimiter
from aias.core.tracing import current_traceparent
from aias.services.execution.deliveries import DeliveryLog, delivery_values
from aias.services.execution.domain import (
    DEFAULT_MAX_ATTEMPTS,
    FINAL_RUN_STATUSES,
    RunStatus,
    StepDefinition,
    check_payload,
    steps_from_json,
    validate_name,
    validate_steps,
)
from aias.services.execution.events import RunEvents
from aias.services.execution.ingest import RunWriter
from aias.services.execution.metrics import WebhookMetrics
from aias.services.execution.models import (
    RunRow,
    StepLogRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
    WorkflowRow,
    WorkflowVersionRow,
)
from aias.services.execution.quota import RunQuota
from aias.services.execution.repository import (
    ExecutionRepository,
    QueueState,
    RunFilter,
    StatusCounts,
    WebhookTarget,
)
from aias.services.execution.targets import WebhookTargets

IDEMPOTENCY_WINDOW = timedelta(hours=24)
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_CONTENT_TYPE_CHARS = 255
DEFAULT_ROTATION_GRACE = timedelta(hours=24)
MAX_ROTATION_GRACE = timedelta(days=7)
# The reason a delivery log gives an idempotent repeat, which is answered like the first one.
IDEMPOTENT_REPEAT = "IDEMPOTENT_REPEAT"
# The reason counted for a delivery that queued a new run.
RUN_QUEUED = "RUN_QUEUED"
STATS_HOUR = timedelta(hours=1)
STATS_DAY = timedelta(days=1)
FAILURE_WINDOW = timedelta(days=7)
DEFAULT_FAILURES = 10
MAX_FAILURES = 50
_ENDPOINT_NOT_FOUND = NotFound(
    "WEBHOOK_ENDPOINT_NOT_FOUND",
    "no webhook endpoint matches this URL; check the tenant id and secret",
)


class _EndpointClosed(NotFound):
    """The 404 of an unknown URL, for a URL whose endpoint is known but takes no deliveries.

    The sender learns nothing more than for an unknown URL; `detail` says why for the log.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(_ENDPOINT_NOT_FOUND.reason, _ENDPOINT_NOT_FOUND.message)
        self.detail = detail


@dataclass(frozen=True)
class WorkflowView:
    row: WorkflowRow
    steps: list[StepDefinition]


@dataclass(frozen=True)
class WorkflowChanges:
    """What an update sets; None leaves a field as it is."""

    name: str | None = None
    steps: list[StepDefinition] | None = None
    enabled: bool | None = None


@dataclass(frozen=True)
class EndpointChanges:
    """What an update sets; None leaves a field as it is. An empty signing secret removes it."""

    name: str | None = None
    enabled: bool | None = None
    signing_secret: str | None = None
    generate_signing_secret: bool = False


@dataclass(frozen=True, slots=True)
class AcceptedRun:
    """What a webhook's caller learns of its run (a new one, or the first one for a repeat)."""

    id: uuid.UUID
    status: str


@dataclass(frozen=True)
class WebhookCall:
    """A webhook delivery as it reaches execution: the URL's parts, the body and its headers."""

    tenant: str
    secret: str
    body: bytes
    content_type: str
    idempotency_key: str
    webhook_id: str = ""
    webhook_timestamp: str = ""
    webhook_signature: str = ""


@dataclass(frozen=True)
class WebhookAdmission:
    """A webhook delivery before its body is read: the URL's parts and the headers."""

    tenant: str
    secret: str
    content_length: int
    webhook_id: str = ""
    webhook_timestamp: str = ""
    webhook_signature: str = ""


@dataclass(frozen=True)
class RunStats:
    """A tenant's runs by status, its latest failures with their failed step, its queue."""

    counts: StatusCounts
    failures: list[tuple[RunRow, StepLogRow | None]]
    queue: QueueState


_T = TypeVar("_T")


@dataclass(frozen=True)
class Page(Generic[_T]):
    items: list[_T]
    next_page_token: str


def _hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _workflow_not_found(workflow_id: uuid.UUID) -> NotFound:
    return NotFound("WORKFLOW_NOT_FOUND", f"workflow {workflow_id} does not exist")


def _endpoint_not_found(endpoint_id: uuid.UUID) -> NotFound:
    return NotFound("WEBHOOK_ENDPOINT_NOT_FOUND", f"webhook endpoint {endpoint_id} does not exist")


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
        *,
        deliveries: DeliveryLog,
        writer: RunWriter,
        rotation_grace: timedelta = DEFAULT_ROTATION_GRACE,
        webhook_metrics: WebhookMetrics | None = None,
    ) -> None:
        self._db = db
        # Without the process's registry (tests), the counts go to one nobody scrapes.
        self._webhook_metrics = webhook_metrics or WebhookMetrics(CollectorRegistry())
        self._events = events
        self._entitlements = entitlements
        self._quota = quota
        self._rates = rates
        self._targets = targets
        self._public_url = public_url.rstrip("/")
        self._max_attempts = max_attempts
        self._deliveries = deliveries
        self._writer = writer
        self._rotation_grace = rotation_grace

    # -- diagnostics -------------------------------------------------------------------------

    async def run_stats(self, tenant_id: uuid.UUID, failure_count: int) -> RunStats:
        if not 0 <= failure_count <= MAX_FAILURES:
            raise InvalidArgument(
                "INVALID_FAILURE_COUNT",
                f"failure_count must be between 0 and {MAX_FAILURES}, got {failure_count}",
            )
        # One transaction: the counts, failures and queue describe the same moment.
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            counts = await repo.status_counts(STATS_HOUR, STATS_DAY)
            failures = await repo.latest_failures(FAILURE_WINDOW, failure_count or DEFAULT_FAILURES)
            queue = await repo.queue_state()
        return RunStats(counts, failures, queue)

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
                raise _workflow_not_found(wid)
            version = await repo.workflow_version(wid, row.current_version)
        assert version is not None, "a workflow always has its current version"
        return WorkflowView(row, steps_from_json(version.steps))

    async def list_workflows(
        self, tenant_id: uuid.UUID, size: int, token: str
    ) -> Page[WorkflowView]:
        limit, cursor = page_size(size), decode_token(token)
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            rows = await repo.workflows(cursor, limit + 1)
            versions = await repo.current_versions(rows[:limit])
        views = [WorkflowView(row, steps_from_json(versions[row.id].steps)) for row in rows[:limit]]
        return Page(views, next_page_token(rows, limit))

    async def update_workflow(
        self, tenant_id: uuid.UUID, workflow_id: str, changes: WorkflowChanges
    ) -> WorkflowView:
        """Applies the changes; steps that differ from the current version's make a new one."""
        wid = parse_uuid(workflow_id, "workflow_id")
        name = validate_name(changes.name, "workflow name") if changes.name is not None else None
        steps = validate_steps(changes.steps) if changes.steps is not None else None
        if steps is not None:
            _check_step_types(steps, await self._active(tenant_id))
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            # Locked, so two concurrent updates cannot both make the next version.
            row = await repo.workflow(wid, for_update=True)
            if row is None:
                raise _workflow_not_found(wid)
            current = await repo.workflow_version(wid, row.current_version)
            assert current is not None, "a workflow always has its current version"
            kept = steps_from_json(current.steps)
            changed = False
            if steps is not None and [s.as_json() for s in steps] != current.steps:
                row.current_version += 1
                await repo.add(
                    WorkflowVersionRow(
                        workflow_id=wid,
                        version=row.current_version,
                        tenant_id=tenant_id,
                        steps=[s.as_json() for s in steps],
                    ),
                    refresh=False,
                )
                kept, changed = steps, True
            if name is not None and name != row.name:
                row.name, changed = name, True
            if changes.enabled is not None and changes.enabled != row.enabled:
                row.enabled, changed = changes.enabled, True
            if changed:
                row.update_time = datetime.now(UTC)
        self._targets.forget(tenant_id)
        return WorkflowView(row, kept)

    async def delete_workflow(self, tenant_id: uuid.UUID, workflow_id: str) -> None:
        """Soft-deletes the workflow and its endpoints; runs, logs and versions stay."""
        wid = parse_uuid(workflow_id, "workflow_id")
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            row = await repo.workflow(wid, for_update=True)
            if row is None:
                raise _workflow_not_found(wid)
            row.delete_time = datetime.now(UTC)
            await repo.delete_endpoints_of(wid, row.delete_time)
        self._targets.forget(tenant_id)

    async def list_workflow_versions(
        self, tenant_id: uuid.UUID, workflow_id: str, size: int, token: str
    ) -> Page[WorkflowVersionRow]:
        wid = parse_uuid(workflow_id, "workflow_id")
        limit, before = page_size(size), decode_number_token(token, str(wid))
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            if await repo.workflow(wid) is None:
                raise _workflow_not_found(wid)
            rows = await repo.workflow_versions(wid, before, limit + 1)
        more = len(rows) > limit
        token = encode_number_token(rows[limit - 1].version, str(wid)) if more else ""
        return Page(rows[:limit], token)

    # -- webhook endpoints -------------------------------------------------------------------

    async def create_endpoint(
        self,
        tenant_id: uuid.UUID,
        workflow_id: str,
        name: str,
        signing_secret: str = "",
        generate_signing_secret: bool = False,
    ) -> tuple[WebhookEndpointRow, str, str, str]:
        """Returns the endpoint, its secret, its URL and a generated signing secret (or "").

        Only the secret's hash is stored; the signing key is stored as is, since checking a
        signature needs it.
        """
        wid = parse_uuid(workflow_id, "workflow_id")
        name = validate_name(name, "endpoint name")
        generated, signing_key = _signing_key(signing_secret, generate_signing_secret)
        secret = secrets.token_urlsafe(32)
        entitlements = await self._active(tenant_id)
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            # Locked: a concurrent delete of the workflow either sees this endpoint and deletes
            # it too, or has deleted the workflow first and this creation finds none.
            if await repo.workflow(wid, for_update=True) is None:
                raise _workflow_not_found(wid)
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
                signing_key=signing_key,
            )
            await repo.add(row)
        return row, secret, self._url(tenant_id, secret), generated

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

    async def update_endpoint(
        self, tenant_id: uuid.UUID, endpoint_id: str, changes: EndpointChanges
    ) -> tuple[WebhookEndpointRow, str]:
        """The changed endpoint and a generated signing secret (or "")."""
        eid = parse_uuid(endpoint_id, "endpoint_id")
        name = validate_name(changes.name, "endpoint name") if changes.name is not None else None
        signing_changes = changes.signing_secret is not None or changes.generate_signing_secret
        generated, signing_key = _signing_key(
            changes.signing_secret or "", changes.generate_signing_secret
        )
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            row = await repo.endpoint(eid, for_update=True)
            if row is None:
                raise _endpoint_not_found(eid)
            if name is not None:
                row.name = name
            if changes.enabled is not None:
                row.enabled = changes.enabled
            if signing_changes:
                row.signing_key = signing_key
        self._targets.forget(tenant_id)
        return row, generated

    async def delete_endpoint(self, tenant_id: uuid.UUID, endpoint_id: str) -> None:
        """Soft-deletes the endpoint: its URL answers 404, its delivery log stays."""
        eid = parse_uuid(endpoint_id, "endpoint_id")
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            row = await repo.endpoint(eid, for_update=True)
            if row is None:
                raise _endpoint_not_found(eid)
            row.delete_time = datetime.now(UTC)
        self._targets.forget(tenant_id)

    async def rotate_endpoint_secret(
        self, tenant_id: uuid.UUID, endpoint_id: str, grace: timedelta | None
    ) -> tuple[WebhookEndpointRow, str, str]:
        """The endpoint, its new secret and URL; the old secret works for `grace` more.

        Only one old secret is kept: one replaced by an earlier rotation stops at once.
        """
        eid = parse_uuid(endpoint_id, "endpoint_id")
        grace = self._rotation_grace if grace is None else grace
        if not timedelta(0) <= grace <= MAX_ROTATION_GRACE:
            raise InvalidArgument(
                "INVALID_GRACE_PERIOD",
                f"grace_period must be 0s to {MAX_ROTATION_GRACE.total_seconds():.0f}s",
            )
        secret = secrets.token_urlsafe(32)
        async with self._db.tenant(tenant_id) as session:
            repo = ExecutionRepository(session)
            row = await repo.endpoint(eid, for_update=True)
            if row is None:
                raise _endpoint_not_found(eid)
            row.previous_secret_hash = row.secret_hash
            # The clock that later decides whether the old secret still works (`_check_open`).
            row.previous_secret_expire_time = datetime.now(UTC) + grace
            row.secret_hash = _hash_secret(secret)
        self._targets.forget(tenant_id)
        return row, secret, self._url(tenant_id, secret)

    async def list_deliveries(
        self, tenant_id: uuid.UUID, endpoint_id: str, size: int, token: str
    ) -> Page[WebhookDeliveryRow]:
        eid = parse_uuid(endpoint_id, "endpoint_id") if endpoint_id else None
        limit, cursor = page_size(size), decode_token(token, str(eid or ""))
        async with self._db.tenant(tenant_id) as session:
            rows = await ExecutionRepository(session).deliveries(eid, cursor, limit + 1)
        return Page(rows[:limit], next_page_token(rows, limit, str(eid or "")))

    def _url(self, tenant_id: uuid.UUID, secret: str) -> str:
        return f"{self._public_url}/api/webhooks/{tenant_id}/{secret}"

    # -- the webhook hot path ----------------------------------------------------------------

    async def trigger(self, call: WebhookCall) -> AcceptedRun:
        """Queues a run and returns it once committed; a repeat returns the first run.

        The checks run cheapest first, and every refusal happens before a run is written. Every
        delivery to a known endpoint is recorded: an accepted one in the run's transaction, a
        refused one after the refusal.
        """
        try:
            tenant_id, target = await self._target(call.tenant, call.secret)
            try:
                run, repeat = await self._accept(tenant_id, target, call)
            except DomainError as error:
                await self._record_refusal(tenant_id, target, error, len(call.body))
                raise
        except DomainError as error:
            self._webhook_metrics.refused(error.reason)
            raise
        self._webhook_metrics.accepted(IDEMPOTENT_REPEAT if repeat else RUN_QUEUED)
        self._deliveries.recorded(tenant_id)
        return run

    async def admit(self, call: WebhookAdmission) -> int:
        """The largest body a webhook URL accepts (0: no plan limit), or why it accepts none."""
        try:
            tenant_id, target = await self._target(call.tenant, call.secret)
            try:
                entitlements = await self._check_open(tenant_id, target)
                limit = entitlements.limits.webhook_payload_bytes
                if limit is not None and call.content_length > limit:
                    raise _too_large(call.content_length, entitlements)
                if target.signing_key is not None:
                    signing.check_headers(
                        call.webhook_id, call.webhook_timestamp, call.webhook_signature, time.time()
                    )
            except DomainError as error:
                await self._record_refusal(tenant_id, target, error, call.content_length)
                raise
        except DomainError as error:
            # A delivery refused here never reaches `trigger`: each is counted once.
            self._webhook_metrics.refused(error.reason)
            raise
        return limit or 0

    async def _target(self, tenant: str, secret: str) -> tuple[uuid.UUID, WebhookTarget]:
        """The endpoint a webhook URL names, whatever its state; unknown URLs are not recorded."""
        try:
            tenant_id = uuid.UUID(tenant)
        except ValueError:
            raise _ENDPOINT_NOT_FOUND from None
        target = await self._targets.resolve(tenant_id, _hash_secret(secret))
        if target is None:
            raise _ENDPOINT_NOT_FOUND
        return tenant_id, target

    async def _check_open(self, tenant_id: uuid.UUID, target: WebhookTarget) -> TenantEntitlements:
        """The tenant's entitlements, once the endpoint, workflow and tenant take deliveries."""
        if target.deleted:
            raise _EndpointClosed("the endpoint or its workflow is deleted")
        if not target.endpoint_enabled:
            raise _EndpointClosed("the endpoint is disabled")
        expire = target.secret_expire_time
        if expire is not None and expire <= datetime.now(UTC):
            raise _EndpointClosed(
                f"the URL holds a secret that a rotation replaced; it was accepted until "
                f"{expire.isoformat()}"
            )
        if not target.workflow_enabled:
            raise FailedPrecondition(
                "WORKFLOW_DISABLED",
                f"workflow {target.workflow_id} is disabled; enable it to accept deliveries",
                {"http_status": "409"},
            )
        return await self._active(tenant_id)

    async def _accept(
        self, tenant_id: uuid.UUID, target: WebhookTarget, call: WebhookCall
    ) -> tuple[AcceptedRun, bool]:
        """The delivery's run, and whether it is an earlier run returned for a repeat."""
        entitlements = await self._check_open(tenant_id, target)
        body, content_type = call.body, call.content_type
        limit = entitlements.limits.webhook_payload_bytes
        if limit is not None and len(body) > limit:
            raise _too_large(len(body), entitlements)
        if target.signing_key is not None:
            # Before the rate limit: deliveries that are not the sender's use none of its rate.
            signing.verify(
                target.signing_key,
                call.webhook_id,
                call.webhook_timestamp,
                call.webhook_signature,
                body,
                time.time(),
            )
        await self._check_rate(target.endpoint_id, entitlements)
        if len(content_type) > MAX_CONTENT_TYPE_CHARS:
            raise InvalidArgument(
                "INVALID_CONTENT_TYPE",
                f"the Content-Type header is longer than {MAX_CONTENT_TYPE_CHARS} characters",
            )
        key = (call.idempotency_key or call.webhook_id).strip()
        if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidArgument(
                "INVALID_IDEMPOTENCY_KEY",
                f"the idempotency key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters",
            )
        check_payload(body, content_type)
        # Only a repeat is compared with its first run, so only a run with a key needs one.
        digest = hashlib.sha256(body).digest() if key else None
        if not key:
            return await self._queue_run(tenant_id, target, entitlements, body, content_type), False
        ticket = None
        try:
            async with self._db.tenant(tenant_id) as session:
                repo = ExecutionRepository(session)
                await repo.lock_idempotency_key(target.endpoint_id, key)
                existing = await repo.run_by_idempotency_key(
                    target.endpoint_id, key, IDEMPOTENCY_WINDOW
                )
                if existing is not None:
                    _check_same_body(existing, digest)
                    await repo.add(
                        WebhookDeliveryRow(
                            **delivery_values(
                                tenant_id,
                                target.endpoint_id,
                                202,
                                IDEMPOTENT_REPEAT,
                                "the idempotency key was used before with the same body; the "
                                "first run was returned",
                                len(body),
                                existing.id,
                            )
                        ),
                        refresh=False,
                    )
                    return AcceptedRun(existing.id, existing.status), True
                ticket = await self._quota.take(entitlements)
                run = RunRow(**self._run_values(tenant_id, target, body, content_type, key, digest))
                accepted = WebhookDeliveryRow(
                    **delivery_values(tenant_id, target.endpoint_id, 202, "", "", len(body), run.id)
                )
                # Only the id and status go back to the caller: no read-back on the hot path.
                await repo.add(run, accepted, refresh=False)
        except BaseException:
            # Not committed: the reserved run was not used.
            if ticket is not None:
                self._quota.give_back(ticket)
            raise
        return AcceptedRun(run.id, run.status), False

    async def _queue_run(
        self,
        tenant_id: uuid.UUID,
        target: WebhookTarget,
        entitlements: TenantEntitlements,
        body: bytes,
        content_type: str,
    ) -> AcceptedRun:
        """A delivery without an idempotency key: its run is group-committed with others.

        The rows are plain dicts, not ORM objects: the group commit writes their values as they
        are, and an ORM object per row cost more than the rest of this method.
        """
        ticket = await self._quota.take(entitlements)
        run = self._run_values(tenant_id, target, body, content_type, "", None)
        accepted = delivery_values(tenant_id, target.endpoint_id, 202, "", "", len(body), run["id"])
        await self._writer.write(
            tenant_id,
            run,
            accepted,
            on_failure=functools.partial(self._quota.give_back, ticket),
        )
        return AcceptedRun(run["id"], run["status"])

    def _run_values(
        self,
        tenant_id: uuid.UUID,
        target: WebhookTarget,
        body: bytes,
        content_type: str,
        key: str,
        digest: bytes | None,
    ) -> dict[str, Any]:
        """A new queued run's columns."""
        return {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "workflow_id": target.workflow_id,
            "workflow_version": target.workflow_version,
            "endpoint_id": target.endpoint_id,
            "status": RunStatus.QUEUED.value,
            "attempt": 0,
            "max_attempts": self._max_attempts,
            "payload": body,
            "content_type": content_type,
            "idempotency_key": key or None,
            "payload_sha256": digest,
            "error": "",
            "traceparent": current_traceparent(),
        }

    async def _record_refusal(
        self, tenant_id: uuid.UUID, target: WebhookTarget, error: DomainError, size: int
    ) -> None:
        detail = error.detail if isinstance(error, _EndpointClosed) else error.message
        await self._deliveries.record_refusal(tenant_id, target.endpoint_id, error, detail, size)

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
                    traceparent=current_traceparent(),
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


def _too_large(size: int, entitlements: TenantEntitlements) -> PayloadTooLarge:
    return PayloadTooLarge(
        "PAYLOAD_TOO_LARGE",
        f"the body is {size} bytes; the {entitlements.plan} plan accepts at most "
        f"{entitlements.limits.webhook_payload_bytes}",
        {"limit": "webhook_payload_bytes", "plan": entitlements.plan},
    )


def _check_same_body(first: RunRow, digest: bytes | None) -> None:
    # Runs queued before bodies were digested cannot be compared; they count as the same.
    if first.payload_sha256 is not None and first.payload_sha256 != digest:
        raise FailedPrecondition(
            "IDEMPOTENCY_KEY_REUSED",
            f"the idempotency key was used for run {first.id} with another body; a repeat must "
            "send the same bytes, and a new delivery needs a new key",
            {"http_status": "422", "run_id": str(first.id)},
        )


def _signing_key(secret: str, generate: bool) -> tuple[str, bytes | None]:
    """A generated secret (or "") and the key to store; None when deliveries are not signed."""
    if secret and generate:
        raise InvalidArgument(
            "INVALID_SIGNING_SECRET",
            "give signing_secret or set generate_signing_secret, not both",
        )
    if generate:
        return signing.generate_secret()
    if secret:
        return "", signing.parse_secret(secret, "signing_secret")
    return "", None


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
                f"step {step.id!r}: steps[{index}].type {step.type!r} is not one of the plan's "
                f"step types ({', '.join(sorted(allowed))})",
            )


def _check_count(
    entitlements: TenantEntitlements, limit_name: str, what: str, current: int
) -> None:
    limit: int | None = getattr(entitlements.limits, limit_name)
    if limit is not None and current >= limit:
        raise plan_limit(limit_name, limit, entitlements.plan, f"the tenant has {current} {what}")
