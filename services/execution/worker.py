"""The execution worker: claims queued runs, runs their steps, logs each step, stores artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import grpc
from prometheus_client import CollectorRegistry

from aias.artifacts.v1 import artifacts_service_pb2 as artifacts_pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as artifacts_grpc
from aias.core.context import run_id_var, tenant_id_var
from aias.core.db import Database, SystemPath, follow_notifications
from aias.core.destinations import AddressPolicy
from aias.core.entitlements import EntitlementsCache, Limits
from aias.core.errors import NotFound, Unavailable
from aias.core.outbound import OutboundClient, OutboundError
from aias.core.protoconv import timestamp
from services.execution.domain import RunStatus, StepDefinition, StepStatus
from services.execution.metrics import RunMetrics
from services.execution.models import RunRow, StepLogRow
from services.execution.repository import ExecutionRepository, QueueRepository
from services.execution.sandbox import JSON, StepCall, StepLimits, StepOutcome, StepRunner
from services.execution.steps import (
    ArtifactOutput,
    HttpRequest,
    HttpResponse,
    StepContext,
    StepFailed,
    status_failure,
)

log = logging.getLogger(__name__)

# Claim attempts in one go: each skips a tenant found at its limit or fetches one's limits.
_MAX_CLAIM_ATTEMPTS = 16

NOTIFY_CHANNEL = "aias_run_queue"
UPLOAD_CHUNK = 256 * 1024
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


class RetryableError(Exception):
    """A dependency failed in a way that may pass; the run is queued again with back-off."""


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    concurrency: int = 4
    lease: timedelta = timedelta(seconds=30)
    poll_interval: float = 5.0
    retry_base: float = 2.0
    retry_max: float = 300.0
    # The most any step may have; a tenant's plan may allow less.
    step_timeout: float = 60.0
    step_output_bytes: int = 16 * 2**20
    # Where http_request steps may go besides public addresses (AIAS_HTTP_STEP_ALLOW).
    http_allow: AddressPolicy = field(default_factory=AddressPolicy)


class Worker:
    """Runs `concurrency` claim loops, woken by LISTEN/NOTIFY and a poll as a fallback."""

    def __init__(
        self,
        db: Database,
        listen_url: str,
        artifacts: artifacts_grpc.ArtifactsServiceStub,
        entitlements: EntitlementsCache,
        steps: StepRunner,
        config: WorkerConfig,
        metrics: RunMetrics | None = None,
    ) -> None:
        self._db = db
        # Without the process's registry (tests), the counts go to one nobody scrapes.
        self._metrics = metrics or RunMetrics(CollectorRegistry())
        self._steps = steps
        self._entitlements = entitlements
        self._listen_url = listen_url
        self._artifacts = artifacts
        self._config = config
        self._outbound = OutboundClient(config.http_allow)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="listen")
        self._tasks += [
            asyncio.create_task(self._loop(i), name=f"slot-{i}")
            for i in range(self._config.concurrency)
        ]

    async def stop(self, grace: float) -> None:
        """Stops claiming; runs in flight get `grace` seconds, then are released to the queue."""
        self._stopping.set()
        self._wake.set()
        listener = [self._listener] if self._listener is not None else []
        for task in listener:
            task.cancel()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
        await asyncio.gather(*self._tasks, *listener, return_exceptions=True)
        await self._outbound.close()

    async def _listen(self) -> None:
        """Wakes a claim loop on every NOTIFY, and on every reconnection (runs queued while
        nobody listened)."""
        await follow_notifications(
            self._listen_url,
            NOTIFY_CHANNEL,
            on_notify=lambda _payload: self._wake.set(),
            on_connect=self._wake.set,
        )

    async def _loop(self, slot: int) -> None:
        while not self._stopping.is_set():
            try:
                run = await self._claim()
            except Exception:
                log.exception("claiming a run failed")
                await asyncio.sleep(1.0)
                continue
            if run is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._config.poll_interval)
                continue
            try:
                await self._process(run)
            except Exception:
                # Recording the outcome failed (e.g. the database went away); the lease will
                # expire and another claim retries the run, so this slot carries on.
                log.exception("could not record the outcome of a run")

    async def _claim(self) -> RunRow | None:
        """The oldest claimable run of a tenant below its concurrent-runs limit.

        A tenant at its limit is skipped: its runs wait queued, and other tenants' runs go on.
        """
        full: set[uuid.UUID] = set()
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            async with self._db.system(SystemPath.RUN_QUEUE) as session:
                queue = QueueRepository(session)
                candidate = await queue.next_claimable(full)
                if candidate is None:
                    return None
                entitlements = self._entitlements.peek(candidate.tenant_id)
                if entitlements is not None:
                    cap = entitlements.limits.concurrent_runs
                    running = (
                        await queue.running_count(candidate.tenant_id, candidate.run_id)
                        if cap is not None
                        else 0
                    )
                    if cap is None or running < cap:
                        return await queue.start(
                            candidate.run_id, self._config.worker_id, self._config.lease
                        )
                    full.add(candidate.tenant_id)
                    continue
            # Not cached: look the limit up outside the transaction, then look again.
            try:
                await self._entitlements.get(candidate.tenant_id)
            except NotFound:
                # The tenant is gone; its leftover runs are not held back by any limit.
                return await self._claim_unlimited(candidate.run_id)
        return None

    async def _claim_unlimited(self, run_id: uuid.UUID) -> RunRow | None:
        async with self._db.system(SystemPath.RUN_QUEUE) as session:
            queue = QueueRepository(session)
            if await queue.next_claimable((), only=run_id) is None:
                return None
            return await queue.start(run_id, self._config.worker_id, self._config.lease)

    async def _process(self, run: RunRow) -> None:
        tenant_id_var.set(str(run.tenant_id))
        run_id_var.set(str(run.id))
        heartbeat = asyncio.create_task(self._heartbeat(run))
        try:
            if run.attempt > run.max_attempts:
                await self._finish(
                    run,
                    RunStatus.FAILED,
                    f"gave up after {run.max_attempts} attempts (leases expired)",
                )
                return
            status, error = await self._execute(run)
            await self._finish(run, status, error)
        except RetryableError as failure:
            await self._retry_or_fail(run, str(failure))
        except asyncio.CancelledError:
            await asyncio.shield(self._release(run))
            raise
        except Exception as failure:
            log.exception("run crashed")
            await self._finish(run, RunStatus.FAILED, f"internal error: {failure}")
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, run: RunRow) -> None:
        interval = self._config.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._db.tenant(run.tenant_id) as session:
                    kept = await QueueRepository(session).heartbeat(
                        run.id, self._config.worker_id, self._config.lease
                    )
                if not kept:
                    log.warning("lease lost; another worker owns the run now")
                    return
            except Exception:
                log.exception("heartbeat failed")

    async def _execute(self, run: RunRow) -> tuple[RunStatus, str]:
        async with self._db.tenant(run.tenant_id) as session:
            version = await ExecutionRepository(session).workflow_version(
                run.workflow_id, run.workflow_version
            )
        if version is None:
            return RunStatus.FAILED, f"workflow version {run.workflow_version} no longer exists"
        steps = [StepDefinition(s["id"], s["type"], s.get("config") or {}) for s in version.steps]
        limits = await self._step_limits(run.tenant_id)
        context = StepContext(
            run={
                "id": str(run.id),
                "attempt": run.attempt,
                "create_time": _api_time(run.create_time),
            },
            workflow={"id": str(run.workflow_id), "version": run.workflow_version},
        )
        # The step processes decode the payload; the worker only passes bytes along.
        value, content_type = run.payload, run.content_type
        for index, step in enumerate(steps):
            started, clock = datetime.now(UTC), time.perf_counter()
            status, failure_text = StepStatus.SUCCEEDED, ""
            done: StepOutcome | None = None
            try:
                call = StepCall(step.type, step.config, value, content_type, context)
                outcome = await self._steps.run(call, limits)
                if outcome.request is not None:
                    outcome = await self._send(call, outcome.request, limits)
                if outcome.artifact is not None:
                    await self._upload(run, step.id, outcome.artifact)
                done, value, content_type = outcome, outcome.value, JSON
                if outcome.stop:
                    status = StepStatus.SKIPPED
            except StepFailed as failure:
                status, failure_text = StepStatus.FAILED, str(failure)
            except RetryableError as failure:
                await self._log(
                    run, index, step, StepStatus.FAILED, started, clock, None, str(failure)
                )
                raise
            await self._log(run, index, step, status, started, clock, done, failure_text)
            if status == StepStatus.FAILED:
                return RunStatus.FAILED, f"step {step.id!r} failed: {failure_text}"
            if status == StepStatus.SKIPPED:
                return RunStatus.SKIPPED, ""
        return RunStatus.SUCCEEDED, ""

    async def _step_limits(self, tenant_id: uuid.UUID) -> StepLimits:
        """The worker's maximums, lowered where the tenant's plan sets step limits."""
        try:
            limits = (await self._entitlements.get(tenant_id)).limits
        except NotFound:
            limits = Limits()  # a deleted tenant's leftover runs get the worker's maximums
        except Unavailable as error:
            raise RetryableError(error.message) from None
        timeout, output_bytes = self._config.step_timeout, self._config.step_output_bytes
        if limits.step_timeout_seconds is not None:
            timeout = min(timeout, limits.step_timeout_seconds)
        if limits.step_output_bytes is not None:
            output_bytes = min(output_bytes, limits.step_output_bytes)
        return StepLimits(timeout, output_bytes)

    async def _send(self, call: StepCall, request: HttpRequest, limits: StepLimits) -> StepOutcome:
        """Sends an http_request step's request from the worker, which the step processes have
        no business doing; the response becomes the step's value in a step process, like any
        input. 5xx answers, timeouts and broken connections may pass: they retry the run."""
        try:
            response = await self._outbound.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                body=request.body,
                time_limit=min(request.timeout, limits.timeout),
                max_body_bytes=limits.output_bytes,
            )
        except OutboundError as error:
            if error.retryable:
                raise RetryableError(str(error)) from None
            raise StepFailed(str(error)) from None
        head = HttpResponse(
            request.method, response.url, response.status, response.reason, response.headers
        )
        if not request.accepts(response.status):
            failure = status_failure(head, response.body)
            if response.status >= 500:
                raise RetryableError(failure)
            raise StepFailed(failure)
        read = replace(call, value=response.body, content_type=response.content_type, response=head)
        return await self._steps.run(read, limits)

    async def _log(
        self,
        run: RunRow,
        index: int,
        step: StepDefinition,
        status: StepStatus,
        started: datetime,
        clock: float,
        outcome: StepOutcome | None,
        error: str,
    ) -> None:
        elapsed = time.perf_counter() - clock
        row = StepLogRow(
            tenant_id=run.tenant_id,
            run_id=run.id,
            step_index=index,
            step_id=step.id,
            type=step.type,
            status=status.value,
            attempt=run.attempt,
            start_time=started,
            end_time=started + timedelta(seconds=elapsed),
            duration_ms=round(elapsed * 1000),
            message=outcome.message if outcome else "",
            output_bytes=len(outcome.value) if outcome else 0,
            output_sha256=outcome.output_sha256 if outcome else "",
            error=error,
        )
        async with self._db.tenant(run.tenant_id) as session:
            await QueueRepository(session).add_log(row)

    async def _upload(self, run: RunRow, step_id: str, artifact: ArtifactOutput) -> None:
        async def messages() -> AsyncIterator[artifacts_pb.UploadArtifactRequest]:
            yield artifacts_pb.UploadArtifactRequest(
                metadata=artifacts_pb.UploadArtifactMetadata(
                    run_id=str(run.id),
                    step_id=step_id,
                    name=artifact.name,
                    media_type=artifact.media_type,
                )
            )
            for offset in range(0, len(artifact.content), UPLOAD_CHUNK):
                yield artifacts_pb.UploadArtifactRequest(
                    chunk=artifact.content[offset : offset + UPLOAD_CHUNK]
                )

        try:
            await self._artifacts.UploadArtifact(messages(), timeout=60)
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRYABLE:
                raise RetryableError(f"artifact upload failed: {error.details()}") from None
            raise StepFailed(f"artifact upload refused: {error.details()}") from None

    async def _finish(self, run: RunRow, status: RunStatus, error: str) -> None:
        async with self._db.tenant(run.tenant_id) as session:
            done = await QueueRepository(session).finish(
                run.id, self._config.worker_id, status.value, error
            )
        if done:
            self._metrics.finished(status.value)
        log.info(
            "run finished" if done else "run finished after its lease was lost",
            extra={"status": status.value, "attempt": run.attempt},
        )

    async def _retry_or_fail(self, run: RunRow, error: str) -> None:
        if run.attempt >= run.max_attempts:
            await self._finish(run, RunStatus.FAILED, f"{error} (after {run.attempt} attempts)")
            return
        delay = min(self._config.retry_base * 2 ** (run.attempt - 1), self._config.retry_max)
        async with self._db.tenant(run.tenant_id) as session:
            await QueueRepository(session).retry_later(
                run.id, self._config.worker_id, timedelta(seconds=delay), error
            )
        log.info("run will be retried", extra={"delay_seconds": delay, "error": error})

    async def _release(self, run: RunRow) -> None:
        async with self._db.tenant(run.tenant_id) as session:
            await QueueRepository(session).release(run.id, self._config.worker_id)
        log.info("run released to the queue on shutdown")


def _api_time(value: datetime) -> str:
    """A time as the public API writes it (RFC 3339 in UTC), so templates match GET /api/runs."""
    stamp = timestamp(value)
    assert stamp is not None, "a datetime gives a Timestamp"
    return stamp.ToJsonString()


def new_worker_id() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
