"""The worker's metrics: runs finished by status, steps by type, lease losses, the queue by plan."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aias.core.db import Database, SystemPath
from aias.core.entitlements import PLANS, TenantEntitlements
from aias.core.periodic import Periodic
from aias.services.execution.repository import ExecutionRepository

# How often a worker reads the queue's depth and age; about one scrape interval.
SAMPLE_SECONDS = 15.0
# The plan label of a tenant whose entitlements this worker has not fetched yet (or whose plan
# is not in the catalog), so the label takes the catalog's few values only.
UNKNOWN_PLAN = "unknown"
# Steps run from milliseconds (a transform) to a minute (an http_request at its timeout).
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RunMetrics:
    """Runs a worker finished (a counter per final status), its steps' durations, its lost leases,
    and the queue as last sampled, in total and by the plan of the waiting runs' tenants."""

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
        # Tenants' plans, not tenants: one series per plan whatever the number of tenants.
        self._depth_by_plan = Gauge(
            "aias_run_queue_depth_by_plan",
            "Queued runs by their tenant's plan (sampled); unknown: limits not fetched yet.",
            ["plan"],
            registry=registry,
        )
        self._oldest_by_plan = Gauge(
            "aias_run_queue_oldest_age_by_plan_seconds",
            "How long the longest-waiting due run of each plan's tenants has waited (sampled).",
            ["plan"],
            registry=registry,
        )
        self._steps = Histogram(
            "aias_step_duration_seconds",
            "How long steps took, by step type and status.",
            ["type", "status"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self._lease_losses = Counter(
            "aias_run_lease_losses",
            "Runs this worker stopped or could not record because another worker took them over "
            "after its lease expired.",
            registry=registry,
        )

    def finished(self, status: str) -> None:
        self._finished.labels(status).inc()

    def step(self, step_type: str, status: str, seconds: float) -> None:
        self._steps.labels(step_type, status).observe(seconds)

    def lease_lost(self) -> None:
        self._lease_losses.inc()

    def queue(
        self,
        depth: int,
        oldest_age_seconds: float,
        by_plan: dict[str, tuple[int, float]] | None = None,
    ) -> None:
        """The queue in total, and by plan: (depth, oldest age) for each plan with runs waiting;
        plans that had runs at the last sample and have none now read 0."""
        self._depth.set(depth)
        self._oldest.set(oldest_age_seconds)
        for plan in (*PLANS, UNKNOWN_PLAN):
            plan_depth, plan_age = (by_plan or {}).get(plan, (0, 0.0))
            self._depth_by_plan.labels(plan).set(plan_depth)
            self._oldest_by_plan.labels(plan).set(plan_age)


class WebhookMetrics:
    """Webhook deliveries by outcome and reason: accepted (a new run, or an idempotent repeat
    answered with the first run) or refused (the error's reason, ENDPOINT_NOT_FOUND included)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Reasons are the code's own error reasons, so the label takes a few dozen values at most.
        self._deliveries = Counter(
            "aias_webhook_deliveries",
            "Webhook deliveries answered, by outcome (accepted, refused) and reason.",
            ["outcome", "reason"],
            registry=registry,
        )

    def accepted(self, reason: str) -> None:
        self._deliveries.labels("accepted", reason).inc()

    def refused(self, reason: str) -> None:
        self._deliveries.labels("refused", reason).inc()


class QueueSampler:
    """Reads the queue's depth and oldest age across tenants (the run-queue path) now and then,
    and sorts them by plan with the entitlements the worker has cached (`plan_of`)."""

    def __init__(
        self,
        db: Database,
        metrics: RunMetrics,
        plan_of: Callable[[uuid.UUID], TenantEntitlements | None] = lambda _tenant: None,
        interval_seconds: float = SAMPLE_SECONDS,
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._plan_of = plan_of
        self._periodic = Periodic("queue-sampler", self.sample, interval_seconds)

    async def sample(self) -> None:
        async with self._db.system(SystemPath.RUN_QUEUE) as session:
            tenants = await ExecutionRepository(session).queue_by_tenant()
        depth, oldest = 0, 0.0
        by_plan: dict[str, tuple[int, float]] = defaultdict(lambda: (0, 0.0))
        for state in tenants:
            age = (
                max((state.read_time - state.oldest_due_time).total_seconds(), 0.0)
                if state.oldest_due_time
                else 0.0
            )
            entitlements = self._plan_of(state.tenant_id)
            plan = UNKNOWN_PLAN
            if entitlements is not None and entitlements.plan in PLANS:
                plan = entitlements.plan
            plan_depth, plan_age = by_plan[plan]
            by_plan[plan] = (plan_depth + state.queued, max(plan_age, age))
            depth, oldest = depth + state.queued, max(oldest, age)
        self._metrics.queue(depth, oldest, by_plan)

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
