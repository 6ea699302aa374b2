"""The run queue's metrics, for the alert rules: runs finished by status, the queue's depth and age."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge

from aias.core.db import Database, SystemPath
from services.execution.repository import ExecutionRepository

log = logging.getLogger(__name__)

# How often a worker reads the queue's depth and age; about one scrape interval.
SAMPLE_SECONDS = 15.0


class RunMetrics:
    """Runs a worker finished (a counter per final status) and the queue as last sampled."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._finished = Counter(
            "aias_runs_finished",
            "Runs this worker finished, by final status.",
            ["status"],
            registry=registry,
        )
        self._depth = Gauge(
            "aias_run_queue_depth",
            "Queued runs of every tenant, retries waiting for their back-off included (sampled).",
            registry=registry,
        )
        self._oldest = Gauge(
            "aias_run_queue_oldest_age_seconds",
            "How long the longest-waiting due run has waited for a worker; 0 when none waits.",
            registry=registry,
        )

    def finished(self, status: str) -> None:
        self._finished.labels(status).inc()

    def queue(self, depth: int, oldest_age_seconds: float) -> None:
        self._depth.set(depth)
        self._oldest.set(oldest_age_seconds)


class QueueSampler:
    """Reads the queue's depth and oldest age across tenants (the run-queue path) now and then."""

    def __init__(
        self, db: Database, metrics: RunMetrics, interval_seconds: float = SAMPLE_SECONDS
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        async with self._db.system(SystemPath.RUN_QUEUE) as session:
            state = await ExecutionRepository(session).queue_state()
        age = (
            (state.read_time - state.oldest_due_time).total_seconds()
            if state.oldest_due_time
            else 0.0
        )
        self._metrics.queue(state.queued, max(age, 0.0))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._sample_forever(), name="queue-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception as error:
                # The gauges keep their last values; the database's own alert says why.
                log.warning("sampling the run queue failed", extra={"error": type(error).__name__})
            await asyncio.sleep(self._interval)
