"""Execution process: read settings, build the server, serve until SIGTERM."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import CollectorRegistry

from aias.core.clients import internal_channel
from aias.core.db import Database, create_engine, libpq_url
from aias.core.entitlements import EntitlementsCache
from aias.core.grpc_server import BuiltServer, Registration, build_grpc_server, run_main
from aias.core.ratelimit import RateLimiter
from aias.core.settings import Env, ServerSettings
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from aias.services.execution.alerts.service import AlertService, QuotaAlerts
from aias.services.execution.deliveries import DEFAULT_KEPT, DeliveryLog
from aias.services.execution.domain import DEFAULT_MAX_ATTEMPTS
from aias.services.execution.events import RunEvents
from aias.services.execution.ingest import RunWriter
from aias.services.execution.metrics import WebhookMetrics
from aias.services.execution.quota import DEFAULT_BLOCK, RunQuota
from aias.services.execution.service import (
    DEFAULT_ROTATION_GRACE,
    MAX_ROTATION_GRACE,
    ExecutionService,
)
from aias.services.execution.servicer import ExecutionServicer
from aias.services.execution.steps import load_libraries
from aias.services.execution.targets import WebhookTargets

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExecutionService"].full_name


@dataclass(frozen=True)
class ExecutionSettings:
    server: ServerSettings
    database_url: str
    tenancy_addr: str
    public_url: str
    entitlements_ttl: float
    max_attempts: int
    redis_url: str = ""
    quota_block: int = DEFAULT_BLOCK
    rotation_grace: timedelta = DEFAULT_ROTATION_GRACE
    deliveries_kept: int = DEFAULT_KEPT


def load_settings(env: Env | None = None) -> ExecutionSettings:
    env = env or Env()
    settings = ExecutionSettings(
        server=ServerSettings.from_env(env, "execution", 50052, 9102),
        database_url=env.database_url("AIAS_APP_DATABASE_URL"),
        tenancy_addr=env.address("AIAS_TENANCY_ADDR"),
        public_url=env.text("AIAS_PUBLIC_URL", "http://localhost:8080"),
        entitlements_ttl=env.number("AIAS_ENTITLEMENTS_CACHE_SECONDS", 30.0),
        max_attempts=env.integer(
            "AIAS_RUN_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1, maximum=20
        ),
        redis_url=env.redis_url("AIAS_REDIS_URL"),
        quota_block=env.integer("AIAS_RUN_QUOTA_BLOCK", DEFAULT_BLOCK, minimum=1, maximum=10_000),
        rotation_grace=timedelta(
            seconds=env.integer(
                "AIAS_SECRET_ROTATION_GRACE_SECONDS",
                int(DEFAULT_ROTATION_GRACE.total_seconds()),
                maximum=int(MAX_ROTATION_GRACE.total_seconds()),
            )
        ),
        deliveries_kept=env.integer(
            "AIAS_WEBHOOK_DELIVERIES_KEPT", DEFAULT_KEPT, minimum=1, maximum=10_000_000
        ),
    )
    env.check()
    return settings


async def build_server(settings: ExecutionSettings) -> BuiltServer:
    """The composition root: engine, tenancy channel, caches, use cases (alerts too), servicer,
    server."""
    # Workflows' step configs are checked with them: loaded now, not by the first workflow.
    load_libraries()
    db = Database(create_engine(settings.database_url, name="execution"))
    tenancy = internal_channel(settings.tenancy_addr, settings.server.internal_token)
    entitlements = EntitlementsCache(tenancy, settings.entitlements_ttl)
    alerts = AlertService(db)
    quota = RunQuota(tenancy, settings.quota_block, watcher=QuotaAlerts(alerts))
    rates = RateLimiter(settings.redis_url)
    targets = WebhookTargets(db, libpq_url(settings.database_url))
    deliveries = DeliveryLog(db, settings.deliveries_kept)
    events = RunEvents(libpq_url(settings.database_url))
    writer = RunWriter(db)
    # Served on the process's metrics port, beside its RPC metrics.
    registry = CollectorRegistry()
    service = ExecutionService(
        db,
        entitlements,
        quota,
        rates,
        targets,
        events,
        settings.public_url,
        settings.max_attempts,
        deliveries=deliveries,
        writer=writer,
        rotation_grace=settings.rotation_grace,
        webhook_metrics=WebhookMetrics(registry),
    )
    servicer = ExecutionServicer(service, alerts)
    built = build_grpc_server(
        settings.server,
        [
            Registration(
                SERVICE_NAME, lambda s: pb_grpc.add_ExecutionServiceServicer_to_server(servicer, s)
            ),
        ],
        registry,
    )
    built.on_start += [entitlements.start, quota.start, targets.start, writer.start]
    # Streams that follow runs end first, so a graceful stop need not wait for them.
    built.on_draining.append(events.close)
    # Cleanups run last-registered first: the quota gives runs back before the channel closes.
    built.add_database(db)
    built.on_stop += [
        db.close,
        rates.close,
        tenancy.close,
        entitlements.stop,
        quota.close,
        targets.stop,
        deliveries.close,
        writer.close,
    ]
    return built


def main() -> None:
    run_main(load_settings, build_server)


if __name__ == "__main__":
    main()
