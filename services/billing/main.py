"""Billing process: read settings, build the server, serve until SIGTERM."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aias.billing.v1 import billing_service_pb2 as pb
from aias.billing.v1 import billing_service_pb2_grpc as pb_grpc
from aias.core.clients import internal_channel
from aias.core.db import Database, create_engine
from aias.core.entitlements import DEFAULT_PLAN, PLANS
from aias.core.grpc_server import BuiltServer, Registration, build_grpc_server, run_main
from aias.core.settings import Env, ServerSettings, SettingsError
from aias.services.billing.domain import Plans
from aias.services.billing.execution_client import ExecutionClient
from aias.services.billing.service import BillingService, ReturnUrls
from aias.services.billing.servicer import BillingServicer
from aias.services.billing.stripe_api import DEFAULT_API_BASE, StripeApi
from aias.services.billing.tenancy_client import TenancyClient

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BillingService"].full_name
log = logging.getLogger(__name__)


def default_urls(public_url: str) -> ReturnUrls:
    """Where users come back to when AIAS_BILLING_*_URL are not set: the dashboard."""
    base = public_url.rstrip("/") + "/dashboard/diagnostics"
    return ReturnUrls(f"{base}?billing=success", f"{base}?billing=cancelled", base)


@dataclass(frozen=True)
class StripeSettings:
    """Stripe credentials and endpoints. Without the secrets billing reports itself
    unconfigured and the rest of the suite works as before."""

    webhook_secret: str = ""
    api_key: str = ""
    api_base: str = DEFAULT_API_BASE
    # Price lookup key -> plan, beyond each plan's own name (AIAS_STRIPE_PRICE_PLANS).
    price_plans: Mapping[str, str] = field(default_factory=dict)
    urls: ReturnUrls = field(default_factory=lambda: default_urls("http://localhost:8080"))


@dataclass(frozen=True)
class BillingSettings:
    server: ServerSettings
    database_url: str
    tenancy_addr: str
    execution_addr: str
    stripe: StripeSettings = field(default_factory=StripeSettings)


def load_settings(env: Env | None = None) -> BillingSettings:
    env = env or Env()
    server = ServerSettings.from_env(env, "billing", 50054, 9104)
    database_url = env.database_url("AIAS_APP_DATABASE_URL")
    tenancy_addr = env.address("AIAS_TENANCY_ADDR")
    execution_addr = env.address("AIAS_EXECUTION_ADDR")
    # Optional: without them billing reports itself unconfigured and the rest keeps working.
    webhook_secret = env.text("AIAS_STRIPE_WEBHOOK_SECRET", "")
    api_key = env.text("AIAS_STRIPE_API_KEY", "")
    price_plans = env.text("AIAS_STRIPE_PRICE_PLANS", "")
    defaults = default_urls(env.text("AIAS_PUBLIC_URL", "http://localhost:8080"))
    urls = {
        name: env.text(name, default)
        for name, default in (
            ("AIAS_STRIPE_API_BASE", DEFAULT_API_BASE),
            ("AIAS_BILLING_SUCCESS_URL", defaults.checkout_success),
            ("AIAS_BILLING_CANCEL_URL", defaults.checkout_cancel),
            ("AIAS_BILLING_RETURN_URL", defaults.portal_return),
        )
    }
    env.check()
    problems = [
        f"{name} must be an http:// or https:// URL, got {value!r}"
        for name, value in urls.items()
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc
    ]
    try:
        extra_keys = Plans.build(tuple(PLANS), DEFAULT_PLAN, price_plans).extra_keys
    except ValueError as error:
        problems.append(f"AIAS_STRIPE_PRICE_PLANS: {error}")
    if problems:
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems))
    return BillingSettings(
        server,
        database_url,
        tenancy_addr,
        execution_addr,
        StripeSettings(
            webhook_secret,
            api_key,
            urls["AIAS_STRIPE_API_BASE"],
            extra_keys,
            ReturnUrls(
                urls["AIAS_BILLING_SUCCESS_URL"],
                urls["AIAS_BILLING_CANCEL_URL"],
                urls["AIAS_BILLING_RETURN_URL"],
            ),
        ),
    )


async def build_server(settings: BillingSettings) -> BuiltServer:
    """The composition root: engine, tenancy and execution channels, Stripe client, use cases,
    server."""
    db = Database(create_engine(settings.database_url, name="billing"))
    tenancy = internal_channel(settings.tenancy_addr, settings.server.internal_token)
    execution = internal_channel(settings.execution_addr, settings.server.internal_token)
    stripe = settings.stripe
    api = StripeApi(stripe.api_key, stripe.api_base) if stripe.api_key else None
    service = BillingService(
        db,
        TenancyClient(tenancy),
        ExecutionClient(execution),
        Plans(tuple(PLANS), DEFAULT_PLAN, stripe.price_plans),
        stripe.webhook_secret,
        api,
        stripe.urls,
    )
    if not service.configured:
        log.warning(
            "billing is not configured: set AIAS_STRIPE_WEBHOOK_SECRET to accept Stripe "
            "events and AIAS_STRIPE_API_KEY for checkout, portal and reconcile"
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
    built.add_database(db)
    built.on_stop += [db.close, tenancy.close, execution.close]
    if api is not None:
        built.on_stop.append(api.close)
    return built


def main() -> None:
    run_main(load_settings, build_server)


if __name__ == "__main__":
    main()
