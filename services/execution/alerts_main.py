"""Execution-alerts process: send tenants' alerts to their destinations; serves health and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from aias.core.db import Database, create_engine, libpq_url
from aias.core.destinations import ALLOW_SETTING, AddressPolicy
from aias.core.grpc_server import BuiltServer, build_grpc_server, run_main
from aias.core.outbound import OutboundClient
from aias.core.settings import Env, ServerSettings
from aias.services.execution.alerts.domain import RetrySchedule
from aias.services.execution.alerts.sender import AlertSender, SenderConfig, SenderMetrics

DAY_SECONDS = 86_400


@dataclass(frozen=True)
class AlertsSettings:
    server: ServerSettings
    database_url: str
    sender: SenderConfig
    # Which private addresses alerts may reach: the same setting as http_request steps.
    allow: AddressPolicy


def load_settings(env: Env | None = None) -> AlertsSettings:
    env = env or Env()
    settings = AlertsSettings(
        server=ServerSettings.from_env(env, "execution-alerts", 50056, 9106),
        database_url=env.database_url("AIAS_APP_DATABASE_URL"),
        sender=SenderConfig(
            schedule=RetrySchedule(
                base=timedelta(
                    seconds=env.number("AIAS_ALERT_RETRY_BASE_SECONDS", 10.0, minimum=0.01)
                ),
                cap=timedelta(seconds=env.number("AIAS_ALERT_RETRY_MAX_SECONDS", 3600.0)),
                window=timedelta(
                    seconds=env.number("AIAS_ALERT_RETRY_WINDOW_SECONDS", float(DAY_SECONDS))
                ),
            ),
            batch=env.integer("AIAS_ALERT_CONCURRENCY", 16, minimum=1, maximum=256),
            poll_interval=env.number("AIAS_ALERT_POLL_SECONDS", 2.0, minimum=0.05),
            timeout=env.number("AIAS_ALERT_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            kept=timedelta(days=env.integer("AIAS_ALERT_KEPT_DAYS", 30, minimum=1)),
        ),
        allow=env.parsed(ALLOW_SETTING, AddressPolicy.parse, AddressPolicy()),
    )
    env.check()
    return settings


async def build_server(settings: AlertsSettings) -> BuiltServer:
    """The composition root: engine, guarded HTTP client, sender, health server."""
    db = Database(
        create_engine(
            settings.database_url, name="alerts", max_connections=2 * (settings.sender.batch + 2)
        )
    )
    client = OutboundClient(settings.allow)
    built = build_grpc_server(settings.server, [])
    sender = AlertSender(
        db,
        libpq_url(settings.database_url),
        client,
        settings.sender,
        # On the process's metrics port, beside its RPC metrics.
        SenderMetrics(built.metrics.registry),
    )
    built.on_start.append(sender.start)

    async def stop_sender() -> None:
        await sender.stop(settings.server.grace_seconds)

    # Cleanups run last-registered first: the sender finishes its batch before anything closes.
    built.add_database(db)
    built.on_stop += [db.close, client.close, stop_sender]
    return built


def main() -> None:
    run_main(load_settings, build_server)


if __name__ == "__main__":
    main()
