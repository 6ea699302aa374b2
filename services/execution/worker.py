"""The execution worker: claims queued runs in batches, fairly across tenants, and runs their steps."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from aias.artifacts.v1 import artifacts_service_pb2 as artifacts_pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as artifacts_grpc
from aias.core.cache import CoherentCache, TtlCache
from aias.core.context import run_id_var, tenant_id_var
from aias.core.db import Database, SystemPath, follow_notifications
from aias.core.destinations import AddressPolicy
from aias.core.entitlements import EntitlementsCache, Limits
from aias.core.errors import NotFound, Unavailable
from aias.core.outbound import OutboundClient, OutboundError
from aias.core.protoconv import rfc3339
from aias.core.tickets import run_ticket
from aias.core.tracing import context_from, tracing_enabled
from aias.services.execution.domain import RunStatus, StepDefinition, StepStatus
from aias.services.execution.ledger import RunLedger
from aias.services.execution.metrics import RunMetrics
from aias.services.execution.repository import (
    ClaimedRun,
    ExecutionRepository,
    Outcome,
    QueueRepository,
    StepLogEntry,
)
from aias.services.execution.sandbox import JSON, StepCall, StepLimits, StepOutcome, StepRunner
from aias.services.execution.steps import (
    ArtifactOutput,
    HttpRequest,
    HttpResponse,
    StepContext,
    StepFailed,
    status_failure,
)

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "aias_run_queue"
# A cancellation asked for while a worker holds the run (migration execution_0003).
CANCEL_CHANNEL = "aias_run_cancel"
UPLOAD_CHUNK = 256 * 1024
# Artifacts up to this size go in one StoreArtifact message, not a stream (the service takes
# up to 512 KiB that way; a stream per small file cost more than the file).
STORE_BYTES = UPLOAD_CHUNK
# Tenants one claim considers. With more tenants waiting, the claims after it serve the rest in
# turn, so a run waits at most (tenants waiting / CLAIM_TENANTS) claims for its tenant's turn.
CLAIM_TENANTS = 16
# Where the first claim's walk over tenant ids starts: below every tenant id (UUIDv4).
_FIRST = uuid.UUID(int=0)
# A claim costs about as much for one run as for dozens. While runs are in flight and fewer
# than half the slots are free, the claim loop waits this long first, so claims come in batches;
# it is also the most this adds to a run's wait.
CLAIM_LINGER_SECONDS = 0.01
# How often a claim first puts runs whose lease expired back in the queue (a lease lasts far
# longer, so this adds at most a second to a takeover).
RECLAIM_INTERVAL_SECONDS = 1.0
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


class RetryableError(Exception):
    """A dependency failed in a way that may pass; the run is queued again with back-off."""


class _LeaseLost(Exception):
    """Another worker took the run over (this one's lease expired); nothing more is written."""


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    concurrency: int = 16
    # The most runs one claim takes (never more than the free slots).
    claim_batch: int = 32
    # While the worker keeps up with the queue, the least time from one claim to the next:
    # runs queued meanwhile wait for it, so one claim takes several (0: a claim per notice).
    claim_interval: float = 0.02
    lease: timedelta = timedelta(seconds=30)
    poll_interval: float = 5.0
    retry_base: float = 2.0
    retry_max: float = 300.0
    # The most any step may have; a tenant's plan may allow less.
    step_timeout: float = 60.0
    step_output_bytes: int = 16 * 2**20
    # Where http_request steps may go besides public addresses (AIAS_HTTP_STEP_ALLOW).
    http_allow: AddressPolicy = field(default_factory=AddressPolicy)
    # Artifacts up to this many bytes are stored in one message, larger ones streamed (0:
    # every one streamed).
    store_bytes: int = STORE_BYTES
    # Signs each upload's run ticket (aias.core.tickets); empty sends none, and the artifacts
    # service asks execution whose run it is.
    ticket_key: bytes = b""


@dataclass
class _Held:
    """A run this worker holds, and what it has learned about it since the claim."""

    run: ClaimedRun
    cancel_requested: bool
    lost: bool = False


class Worker:
    """Holds up to `concurrency` runs; one claim loop fills free slots, woken by LISTEN/NOTIFY.

    Claims take runs from the tenants with work in turn (round-robin over tenant ids, one run
    each per round), so one tenant's backlog delays another's run by about one run per slot.
    A tenant at its concurrent-runs limit gets nothing until one of its runs ends.
    """

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
        self._ledger = RunLedger(db, config.worker_id, config.lease)
        self._outbound = OutboundClient(config.http_allow)
        # Spans only when this process traces (its provider is installed before the worker is
        # built, as the factories' instrumentation is); otherwise a run and its steps make none.
        self._tracer = trace.get_tracer("aias.execution.worker") if tracing_enabled() else None
        # By (run, attempt): after a lost lease this worker may hold a later attempt of a run
        # while the earlier one is still stopping.
        self._held: dict[tuple[uuid.UUID, int], _Held] = {}
        self._runs: set[asyncio.Task[None]] = set()
        # Set by a queue notice, a freed slot or fetched limits: the claim loop looks again.
        self._wake = asyncio.Event()
        # Whether the last claim took every due run it could see (no tenant left with runs
        # beyond its share or its limit); if so, a freed slot has nothing to claim and does not
        # wake the loop: new runs announce themselves. `_notices` counts the announcements
        # (queue notices, fetched limits), so one that arrives during a claim is not lost.
        self._drained = False
        self._notices = 0
        # A notice came while the queue was drained: the next claim waits out `claim_interval`
        # from the last one, so a trickle of new runs is claimed in groups.
        self._trickle = False
        self._last_claim = -math.inf
        self._check_leases = asyncio.Event()
        self._stopping = asyncio.Event()
        # Where the round-robin walk over tenants resumes: after the last tenant served.
        self._after = _FIRST
        self._next_reclaim = 0.0
        self._fetches: dict[uuid.UUID, asyncio.Task[None]] = {}
        # Tenants that no longer exist: their leftover runs are held back by no limit.
        self._gone: TtlCache[uuid.UUID, bool] = TtlCache(3600.0, 10_000)
        # Workflow versions never change, so each is read once.
        self._versions: CoherentCache[
            tuple[uuid.UUID, uuid.UUID, int], uuid.UUID, list[StepDefinition] | None
        ] = CoherentCache(lambda key: key[0], 3600.0, 10_000)
        self._claimer: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._ledger.start()
        self._claimer = asyncio.create_task(self._claim_loop(), name="claim")
        self._background = [
            asyncio.create_task(
                follow_notifications(
                    self._listen_url,
                    NOTIFY_CHANNEL,
                    on_notify=lambda _payload: self._more_work(),
                    # Runs queued while nobody listened are claimable now.
                    on_connect=self._more_work,
                ),
                name="listen-queue",
            ),
            asyncio.create_task(
                follow_notifications(
                    self._listen_url,
                    CANCEL_CHANNEL,
                    on_notify=self._cancel_requested,
                    # A missed cancellation shows in the lease renewal, done at once.
                    on_connect=self._check_leases.set,
                ),
                name="listen-cancellations",
            ),
            asyncio.create_task(self._renew_leases(), name="renew-leases"),
        ]

    async def stop(self, grace: float) -> None:
        """Stops claiming; runs in flight get `grace` seconds, then are released to the queue."""
        self._stopping.set()
        self._wake.set()
        if self._claimer is not None:
            await asyncio.gather(self._claimer, return_exceptions=True)
        if self._runs:
            _done, pending = await asyncio.wait(self._runs, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Leases are renewed until every outcome (releases too) is written.
        await self._ledger.close(grace)
        others = [*self._background, *self._fetches.values()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._outbound.close()

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        # With this many slots free a claim goes ahead at once.
        enough = min(self._config.claim_batch, max(1, self._config.concurrency // 2))
        while not self._stopping.is_set():
            self._wake.clear()
            free = self._config.concurrency - len(self._held)
            if 0 < free < enough and self._held:
                await asyncio.sleep(CLAIM_LINGER_SECONDS)
                free = self._config.concurrency - len(self._held)
            elif self._trickle and free > 0:
                gap = self._last_claim + self._config.claim_interval - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
                    free = self._config.concurrency - len(self._held)
            if free > 0:
                wanted = min(free, self._config.claim_batch)
                self._trickle = False
                self._last_claim = time.monotonic()
                try:
                    claimed = await self._claim(wanted)
                except Exception:
                    log.exception("claiming runs failed")
                    await asyncio.sleep(1.0)
                    continue
                for run in claimed:
                    self._begin(run)
                if len(claimed) == wanted:
                    continue  # perhaps there is more: look again at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.poll_interval)

    async def _claim(self, wanted: int) -> list[ClaimedRun]:
        """Up to `wanted` runs, shared in turn among the next tenants with work.

        Tenants whose limits are not cached yet are left to a later claim (their limits are
        fetched meanwhile); tenants at their concurrent-runs limit get nothing.
        """
        notices = self._notices
        async with self._db.system(SystemPath.RUN_QUEUE) as session:
            queue = QueueRepository(session, self._config.worker_id)
            now = time.monotonic()
            if now >= self._next_reclaim:
                self._next_reclaim = now + RECLAIM_INTERVAL_SECONDS
                if reclaimed := await queue.reclaim():
                    log.warning(
                        "runs whose lease expired are queued again", extra={"runs": reclaimed}
                    )
            tenants = await queue.tenants_with_work(self._after, CLAIM_TENANTS)
            caps = self._caps(tenants)
            running = await queue.live_leases([t for t, cap in caps.items() if cap is not None])
            free = {
                tenant: wanted if cap is None else cap - running.get(tenant, 0)
                for tenant, cap in caps.items()
            }
            shares = _in_turn([t for t in tenants if t in free], free, wanted)
            claimed = await queue.start(shares, self._config.lease)
        if shares:
            self._after = next(reversed(shares))
        self._drained = notices == self._notices and _drained(tenants, shares, claimed)
        return claimed

    def _caps(self, tenants: Sequence[uuid.UUID]) -> dict[uuid.UUID, int | None]:
        """Each tenant's concurrent-runs limit (None: none), for the tenants whose limits are
        known; the others' are fetched in the background."""
        caps: dict[uuid.UUID, int | None] = {}
        for tenant in tenants:
            entitlements = self._entitlements.peek(tenant)
            if entitlements is not None:
                caps[tenant] = entitlements.limits.concurrent_runs
            elif self._gone.get(tenant):
                caps[tenant] = None
            elif tenant not in self._fetches:
                task = asyncio.create_task(self._fetch_limits(tenant), name="fetch-limits")
                self._fetches[tenant] = task
        return caps

    async def _fetch_limits(self, tenant: uuid.UUID) -> None:
        try:
            await self._entitlements.get(tenant)
        except NotFound:
            self._gone.put(tenant, True)
        except Unavailable as error:
            log.warning("could not fetch a tenant's limits", extra={"error": error.message})
        finally:
            del self._fetches[tenant]
            self._more_work()

    def _more_work(self) -> None:
        """Runs may be claimable that the last claim did not see: look again."""
        self._trickle = self._trickle or self._drained
        self._notices += 1
        self._drained = False
        self._wake.set()

    def _slot_freed(self) -> None:
        """A slot, or a tenant's turn under its limit, is free: claim again unless the last
        claim saw no run left behind."""
        if not self._drained:
            self._wake.set()

    def _begin(self, run: ClaimedRun) -> None:
        held = self._held[run.id, run.attempt] = _Held(run, run.cancel_requested)
        task = asyncio.create_task(self._process(held), name=f"run-{run.id}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    # -- leases and cancellations ------------------------------------------------------------

    def _cancel_requested(self, payload: str) -> None:
        for held in self._held.values():
            if str(held.run.id) == payload:
                held.cancel_requested = True

    async def _renew_leases(self) -> None:
        """Renews every held lease in one statement, and learns of cancellations missed."""
        interval = self._config.lease.total_seconds() / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_leases.wait(), interval)
            self._check_leases.clear()
            held = list(self._held.values())
            if not held:
                continue
            try:
                kept = await self._ledger.renew([(h.run.id, h.run.attempt) for h in held])
            except Exception:
                log.exception("renewing leases failed")
                continue
            for entry in held:
                key = (entry.run.id, entry.run.attempt)
                if key not in kept:
                    entry.lost = True
                elif kept[key]:
                    entry.cancel_requested = True

    # -- running -----------------------------------------------------------------------------

    async def _process(self, held: _Held) -> None:
        """Runs one attempt; its slot is free again once the outcome is queued for writing.

        Until the ledger writes it the run stays `running` under this worker's lease, so a
        tenant's concurrent-runs count can only be too high for that moment, never too low.
        """
        run = held.run
        tenant_id_var.set(str(run.tenant_id))
        run_id_var.set(str(run.id))
        try:
            # A child of the request that queued the run, so one trace runs from the webhook to
            # the last step; a retry's attempts are children of the same request.
            with self._span(
                "run",
                lambda: {
                    "context": context_from(run.traceparent),
                    "kind": SpanKind.CONSUMER,
                    "attributes": {
                        "aias.run.id": str(run.id),
                        "aias.run.attempt": run.attempt,
                        "aias.workflow.id": str(run.workflow_id),
                        "aias.workflow.version": run.workflow_version,
                    },
                },
            ) as span:
                outcome = await self._outcome(held)
                if outcome is not None:
                    span.set_attribute("aias.run.status", str(outcome.status))
                    if outcome.status == RunStatus.FAILED:
                        span.set_status(StatusCode.ERROR, outcome.error)
                    recorded = self._ledger.settle(outcome)
                    recorded.add_done_callback(functools.partial(_settled, self._metrics, outcome))
                    # Written, the run no longer counts against its tenant's limit: a run that
                    # limit held back can be claimed now.
                    recorded.add_done_callback(lambda _recorded: self._slot_freed())
        except asyncio.CancelledError:
            # Shutdown: the run goes back to the queue, its interrupted attempt not counted.
            self._ledger.settle(Outcome(run.id, run.attempt, RunStatus.QUEUED, counts=False))
            log.info("run released to the queue on shutdown")
            raise
        finally:
            del self._held[run.id, run.attempt]
            self._slot_freed()

    def _span(
        self, name: str, options: Callable[[], dict[str, Any]]
    ) -> AbstractContextManager[trace.Span]:
        """A span made with `options` (start_as_current_span's keywords) when this process
        traces; otherwise a span that records nothing, and `options` is never called."""
        if self._tracer is None:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return self._tracer.start_as_current_span(name, **options())

    async def _outcome(self, held: _Held) -> Outcome | None:
        """How this attempt ends; None when the lease was lost (another worker has the run)."""
        run = held.run
        # A run asked to stop is cancelled at its first step boundary, however often it failed.
        if run.attempt > run.max_attempts and not held.cancel_requested:
            error = f"gave up after {run.max_attempts} attempts (leases expired)"
            return Outcome(run.id, run.attempt, RunStatus.FAILED, error)
        try:
            status, error = await self._execute(held)
        except _LeaseLost:
            self._metrics.lease_lost()
            log.warning("lease lost; another worker owns the run now")
            return None
        except RetryableError as failure:
            return self._retry_or_fail(run, str(failure))
        except Exception as failure:
            log.exception("run crashed")
            return Outcome(run.id, run.attempt, RunStatus.FAILED, f"internal error: {failure}")
        return Outcome(run.id, run.attempt, status, error)

    async def _execute(self, held: _Held) -> tuple[RunStatus, str]:
        run = held.run
        steps = await self._versions.get(
            (run.tenant_id, run.workflow_id, run.workflow_version), lambda: self._steps_of(run)
        )
        if steps is None:
            return RunStatus.FAILED, f"workflow version {run.workflow_version} no longer exists"
        limits = await self._step_limits(run.tenant_id)
        context = StepContext(
            run={
                "id": str(run.id),
                "attempt": run.attempt,
                # As the public API writes it, so templates match GET /api/runs.
                "create_time": rfc3339(run.create_time),
            },
            workflow={"id": str(run.workflow_id), "version": run.workflow_version},
        )
        # The step processes decode the payload; the worker only passes bytes along.
        value, content_type = run.payload, run.content_type
        for index, step in enumerate(steps):
            # A step boundary: where a lost lease or a cancellation stops the run.
            if held.lost:
                raise _LeaseLost
            if held.cancel_requested:
                started = datetime.now(UTC)
                self._ledger.log(
                    _entry(
                        run,
                        index,
                        step,
                        StepStatus.CANCELLED,
                        started,
                        0.0,
                        None,
                        "",
                        "the run was cancelled before this step started",
                    )
                )
                return RunStatus.CANCELLED, ""
            with self._span(
                f"step {step.type}",
                functools.partial(_step_span, step, index),
            ) as span:
                status, failure_text, done = await self._step(
                    run,
                    index,
                    step,
                    StepCall(step.type, step.config, value, content_type, context),
                    limits,
                )
                span.set_attribute("aias.step.status", status.value)
                if status == StepStatus.FAILED:
                    span.set_status(StatusCode.ERROR, failure_text)
            if done is not None:
                value, content_type = done.value, JSON
            if status == StepStatus.FAILED:
                return RunStatus.FAILED, f"step {step.id!r} failed: {failure_text}"
            if status == StepStatus.SKIPPED:
                return RunStatus.SKIPPED, ""
        return RunStatus.SUCCEEDED, ""

    async def _step(
        self, run: ClaimedRun, index: int, step: StepDefinition, call: StepCall, limits: StepLimits
    ) -> tuple[StepStatus, str, StepOutcome | None]:
        """Runs one step and logs it: its status, why it failed, and its outcome if it ran.

        A failure that may pass (RetryableError) is logged and raised: the run is retried.
        """
        started, clock = datetime.now(UTC), time.perf_counter()
        status, failure_text = StepStatus.SUCCEEDED, ""
        done: StepOutcome | None = None
        try:
            tenant = str(run.tenant_id)
            outcome = await self._steps.run(call, limits, tenant)
            if outcome.request is not None:
                outcome = await self._send(call, outcome.request, limits, tenant)
            if outcome.artifact is not None:
                await self._upload(run, step.id, outcome.artifact)
            done = outcome
            if outcome.stop:
                status = StepStatus.SKIPPED
        except StepFailed as failure:
            status, failure_text = StepStatus.FAILED, str(failure)
        except RetryableError as failure:
            elapsed = time.perf_counter() - clock
            self._metrics.step(step.type, StepStatus.FAILED, elapsed)
            self._ledger.log(
                _entry(run, index, step, StepStatus.FAILED, started, elapsed, None, str(failure))
            )
            raise
        elapsed = time.perf_counter() - clock
        self._metrics.step(step.type, status, elapsed)
        self._ledger.log(_entry(run, index, step, status, started, elapsed, done, failure_text))
        return status, failure_text, done

    async def _steps_of(self, run: ClaimedRun) -> list[StepDefinition] | None:
        async with self._db.tenant(run.tenant_id) as session:
            version = await ExecutionRepository(session).workflow_version(
                run.workflow_id, run.workflow_version
            )
        if version is None:
            return None
        return [StepDefinition(s["id"], s["type"], s.get("config") or {}) for s in version.steps]

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

    async def _send(
        self, call: StepCall, request: HttpRequest, limits: StepLimits, tenant: str
    ) -> StepOutcome:
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
        return await self._steps.run(read, limits, tenant)

    async def _upload(self, run: ClaimedRun, step_id: str, artifact: ArtifactOutput) -> None:
        metadata = artifacts_pb.UploadArtifactMetadata(
            run_id=str(run.id),
            workflow_id=str(run.workflow_id),
            step_id=step_id,
            name=artifact.name,
            media_type=artifact.media_type,
            run_ticket=(
                run_ticket(self._config.ticket_key, run.tenant_id, run.id, run.workflow_id)
                if self._config.ticket_key
                else ""
            ),
        )

        async def messages() -> AsyncIterator[artifacts_pb.UploadArtifactRequest]:
            yield artifacts_pb.UploadArtifactRequest(metadata=metadata)
            for offset in range(0, len(artifact.content), UPLOAD_CHUNK):
                yield artifacts_pb.UploadArtifactRequest(
                    chunk=artifact.content[offset : offset + UPLOAD_CHUNK]
                )

        try:
            if self._config.store_bytes and len(artifact.content) <= self._config.store_bytes:
                await self._artifacts.StoreArtifact(
                    artifacts_pb.StoreArtifactRequest(metadata=metadata, content=artifact.content),
                    timeout=60,
                )
            else:
                await self._artifacts.UploadArtifact(messages(), timeout=60)
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRYABLE:
                raise RetryableError(f"artifact upload failed: {error.details()}") from None
            raise StepFailed(f"artifact upload refused: {error.details()}") from None

    def _retry_or_fail(self, run: ClaimedRun, error: str) -> Outcome:
        if run.attempt >= run.max_attempts:
            return Outcome(
                run.id, run.attempt, RunStatus.FAILED, f"{error} (after {run.attempt} attempts)"
            )
        delay = min(self._config.retry_base * 2 ** (run.attempt - 1), self._config.retry_max)
        log.info("run will be retried", extra={"delay_seconds": delay, "error": error})
        return Outcome(run.id, run.attempt, RunStatus.QUEUED, error, delay=timedelta(seconds=delay))


def _settled(
    metrics: RunMetrics, outcome: Outcome, recorded: asyncio.Future[Outcome | None]
) -> None:
    """Counts and logs how the run ended once written (in the run's logging context, which the
    callback keeps): as recorded, which may differ from `outcome` if the database refused it."""
    if recorded.cancelled():
        return
    written = recorded.result()
    if written is None:
        metrics.lease_lost()
    elif written.status != RunStatus.QUEUED:
        metrics.finished(str(written.status))
    log.info(
        "run finished" if written else "run finished after its lease was lost",
        extra={"status": (written or outcome).status, "attempt": outcome.attempt},
    )


def _drained(
    tenants: Sequence[uuid.UUID], shares: dict[uuid.UUID, int], claimed: Sequence[ClaimedRun]
) -> bool:
    """Whether a claim left no due run behind: the walk saw every tenant with work, and each
    got fewer runs than its share (none was held back by the batch, its free slots or its
    unknown limits)."""
    if len(tenants) >= CLAIM_TENANTS:
        return False
    got = Counter(run.tenant_id for run in claimed)
    return all(got[tenant] < shares.get(tenant, 0) for tenant in tenants)


def _in_turn(
    tenants: Sequence[uuid.UUID], free: dict[uuid.UUID, int], wanted: int
) -> dict[uuid.UUID, int]:
    """`wanted` claims shared in turn: one run per tenant per round, in the given order, never
    more than a tenant's free slots. Keys keep that order; the last is the last tenant served."""
    shares = dict.fromkeys(tenants, 0)
    while wanted > 0:
        served = False
        for tenant in tenants:
            if wanted and shares[tenant] < free[tenant]:
                shares[tenant] += 1
                wanted -= 1
                served = True
        if not served:
            break
    return {tenant: count for tenant, count in shares.items() if count}


def _entry(
    run: ClaimedRun,
    index: int,
    step: StepDefinition,
    status: StepStatus,
    started: datetime,
    elapsed: float,
    outcome: StepOutcome | None,
    error: str,
    message: str = "",
) -> StepLogEntry:
    return StepLogEntry(
        run_id=run.id,
        attempt=run.attempt,
        step_index=index,
        step_id=step.id,
        type=step.type,
        status=status.value,
        start_time=started,
        end_time=started + timedelta(seconds=elapsed),
        duration_ms=round(elapsed * 1000),
        message=outcome.message if outcome else message,
        output_bytes=len(outcome.value) if outcome else 0,
        output_sha256=outcome.output_sha256 if outcome else "",
        error=error,
    )


def _step_span(step: StepDefinition, index: int) -> dict[str, Any]:
    """A step span's keywords."""
    return {
        "attributes": {
            "aias.step.id": step.id,
            "aias.step.type": step.type,
            "aias.step.index": index,
        }
    }


def new_worker_id() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
