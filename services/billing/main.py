"""Billing process: read settings, build the server, serve until SIGTERM."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aias.billing.v1 import billing_service_pb2 as pb
from aias.billing.v1 import billing_service_pb2_grpc as pb_grpc
from aias.core.db import create_engine
from aias.core.grpc_server import BuiltServer, Registration, build_grpc_server, run_main
from aias.core.settings import Env, ServerSettings
from services.billing.service import BillingService
from services.billing.servicer import BillingServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BillingService"].full_name
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BillingSettings:
    server: ServerSettings
    database_url: str
    stripe_webhook_secret: str
    stripe_api_key: str


def load_settings(env: Env | None = None) -> BillingSettings:
    env = env or Env()
    settings = BillingSettings(
        server=ServerSettings.from_env(env, "billing", 50054, 9104),
        database_url=env.database_url("AIAS_APP_DATABASE_URL"),
        # Optional: without them billing reports itself unconfigured and the rest keeps working.
        stripe_webhook_secret=env.text("AIAS_STRIPE_WEBHOOK_SECRET", ""),
        stripe_api_key=env.text("AIAS_STRIPE_API_KEY", ""),
    )
    env.check()
    return settings


async def build_server(settings: BillingSettings) -> BuiltServer:
    """The composition root: engine, use cases, servicer, gRPC server."""
    engine = create_engine(settings.database_url)
    service = BillingService(engine, settings.stripe_webhook_secret, settings.stripe_api_key)
    if not service.configured:
        log.warning(
            "billing is not configured: set AIAS_STRIPE_API_KEY and "
            "AIAS_STRIPE_WEBHOOK_SECRET to accept Stripe events"
        )
    servicer = BillingServicer(service)
    built = build_grpc_server(
        settings.server,
        [
            Registration(
                SERVICE_NAME, lambda s: pb_grpc.add_BillingServiceServicer_to_server(servicer, s)
            ),
        ],
    )
    built.on_stop.append(engine.dispose)
    return built


def main() -> None:
    run_main(load_settings, build_server)


if __name__ == "__main__":
    main()
