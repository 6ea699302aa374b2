"""Billing over real gRPC and real PostgreSQL with a real tenancy; only Stripe's API is faked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result
from google.api import httpbody_pb2
from google.rpc import error_details_pb2, status_pb2
from pytest_aiohttp import AiohttpClient
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from aias.billing.v1 import billing_service_pb2 as pb
from aias.billing.v1 import billing_service_pb2_grpc as pb_grpc
from aias.cli.billing import billing as billing_cli
from aias.core.clients import internal_channel
from aias.core.context import ROLE, TENANT_ID
from aias.core.db import Database, SystemPath
from aias.core.localdb import LocalDatabase
from aias.gateway.app import init_app
from aias.gateway.settings import GatewaySettings
from aias.services.billing import main as billing_main
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from tests.conftest import DASHBOARD_SECRET, INTERNAL_TOKEN, server_settings
from tests.integration.servers import Execution, Tenancy, running
from tests.stripe_fake import (
    API_KEY,
    WEBHOOK_SECRET,
    FakeStripe,
    checkout_object,
    event,
    invoice_object,
    signature,
    subscription_object,
)

PROCESSED = pb.DELIVERY_OUTCOME_PROCESSED
DUPLICATE = pb.DELIVERY_OUTCOME_DUPLICATE
IGNORED = pb.DELIVERY_OUTCOME_IGNORED
REJECTED = pb.DELIVERY_OUTCOME_REJECTED
# An address where no service answers.
NOWHERE = "127.0.0.1:9"


@dataclass
class Billing:
    address: str
    stub: pb_grpc.BillingServiceStub

    async def deliver(self, payload: bytes, sig: str | None = None) -> pb.HandleStripeEventResponse:
        """Hands a delivery over as the gateway does: raw bytes and the signature header."""
        reply: pb.HandleStripeEventResponse = await self.stub.HandleStripeEvent(
            pb.HandleStripeEventRequest(
                http_body=httpbody_pb2.HttpBody(content_type="application/json", data=payload),
                stripe_signature=signature(payload) if sig is None else sig,
            )
        )
        return reply

    async def account(self, tenant_id: uuid.UUID) -> pb.BillingAccount:
        reply: pb.GetBillingAccountResponse = await self.stub.GetBillingAccount(
            pb.GetBillingAccountRequest(tenant_id=str(tenant_id))
        )
        return reply.account

    async def deliveries(self, tenant_id: uuid.UUID | None = None) -> list[pb.StripeDelivery]:
        metadata = ((TENANT_ID, str(tenant_id)),) if tenant_id else ()
        reply = await self.stub.ListStripeDeliveries(
            pb.ListStripeDeliveriesRequest(page_size=100), metadata=metadata
        )
        return list(reply.deliveries)


def as_tenant(tenant_id: uuid.UUID, role: str = "admin") -> tuple[tuple[str, str], ...]:
    """The metadata the gateway sends for a tenant's API key."""
    return ((TENANT_ID, str(tenant_id)), (ROLE, role))


def reason(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            info = error_details_pb2.ErrorInfo()
            status.details[0].Unpack(info)
            return info.reason, dict(info.metadata)
    raise AssertionError("no error details")


def new_customer() -> str:
    return f"cus_{uuid.uuid4().hex[:14]}"


def new_subscription_id() -> str:
    return f"sub_{uuid.uuid4().hex[:14]}"


def soon() -> int:
    """A Stripe `created` after everything this test made so far (tenancy refuses older)."""
    return int(time.time()) + 1


async def plan_of(tenancy: Tenancy, tenant_id: uuid.UUID) -> str:
    reply = await tenancy.stub.GetTenant(tenancy_pb.GetTenantRequest(tenant_id=str(tenant_id)))
    return str(reply.tenant.plan)


@asynccontextmanager
async def billing_server(
    database: LocalDatabase,
    tenancy_addr: str,
    stripe: billing_main.StripeSettings,
    execution_addr: str,
) -> AsyncIterator[Billing]:
    """A billing server built by the production factory, on an ephemeral port."""
    built = await billing_main.build_server(
        billing_main.BillingSettings(
            server_settings("billing"), database.app_url, tenancy_addr, execution_addr, stripe
        )
    )
    async with running(built) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        yield Billing(address, pb_grpc.BillingServiceStub(channel))
        await channel.close()


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    fake.start()
    yield fake
    fake.stop()


def configured(fake: FakeStripe) -> billing_main.StripeSettings:
    return billing_main.StripeSettings(
        webhook_secret=WEBHOOK_SECRET,
        api_key=API_KEY,
        api_base=fake.url,
        price_plans={"pro_yearly": "pro"},
    )


@pytest.fixture(scope="module")
async def billing(
    database: LocalDatabase, tenancy: Tenancy, execution: Execution, fake_stripe: FakeStripe
) -> AsyncIterator[Billing]:
    async with billing_server(
        database, tenancy.address, configured(fake_stripe), execution.address
    ) as server:
        yield server


async def linked_tenant(tenancy: Tenancy, billing: Billing) -> tuple[uuid.UUID, str]:
    """A free tenant whose Stripe customer a completed checkout linked."""
    tenant = await tenancy.new_tenant()
    customer = new_customer()
    reply = await billing.deliver(
        event("checkout.session.completed", checkout_object(customer, str(tenant)), soon())
    )
    assert (reply.outcome, reply.tenant_id) == (PROCESSED, str(tenant))
    return tenant, customer


# --- configuration ---------------------------------------------------------------------------


async def test_unconfigured_billing_is_503_at_the_gateway_and_refuses_checkout(
    database: LocalDatabase, tenancy: Tenancy, aiohttp_client: AiohttpClient
) -> None:
    # Nothing here makes a tenant past due, so no execution answers at its address.
    async with billing_server(
        database, tenancy.address, billing_main.StripeSettings(), NOWHERE
    ) as unconfigured:
        gateway = await aiohttp_client(
            init_app(
                GatewaySettings(
                    host="127.0.0.1",
                    port=0,
                    internal_token=INTERNAL_TOKEN,
                    admin_token="operator",
                    dashboard_secret=DASHBOARD_SECRET,
                    backends={
                        "tenancy": tenancy.address,
                        "execution": NOWHERE,
                        "artifacts": NOWHERE,
                        "billing": unconfigured.address,
                    },
                    log_level="INFO",
                    ready_file=None,
                    grace_seconds=1.0,
                )
            )
        )
        payload = event(
            "customer.subscription.created",
            subscription_object(new_subscription_id(), new_customer(), "pro"),
            soon(),
        )
        response = await gateway.post(
            "/api/stripe/webhook", data=payload, headers={"Stripe-Signature": signature(payload)}
        )
        body = await response.json()
        assert response.status == 503, body
        assert body["error"]["reason"] == "BILLING_NOT_CONFIGURED"
        assert "AIAS_STRIPE_WEBHOOK_SECRET" in body["error"]["message"]

        status = await unconfigured.stub.GetBillingStatus(pb.GetBillingStatusRequest())
        assert status.configured is False
        tenant = await tenancy.new_tenant()
        for call in (
            unconfigured.stub.CreateCheckoutSession(
                pb.CreateCheckoutSessionRequest(plan="pro"), metadata=as_tenant(tenant)
            ),
            unconfigured.stub.CreatePortalSession(
                pb.CreatePortalSessionRequest(), metadata=as_tenant(tenant)
            ),
            unconfigured.stub.GetSubscription(
                pb.GetSubscriptionRequest(), metadata=as_tenant(tenant)
            ),
            unconfigured.stub.Reconcile(pb.ReconcileRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason(caught.value)[0] == "BILLING_NOT_CONFIGURED"
            assert (caught.value.details() or "").startswith("billing is not configured")
        # Nothing else depends on billing's configuration.
        async with gateway.get("/healthz") as healthz:
            assert healthz.status == 200
        assert await plan_of(tenancy, tenant) == "free"


# --- lifecycle -> plan ------------------------------------------------------------------------


async def test_checkout_then_subscription_moves_the_tenant_to_its_plan_and_back(
    billing: Billing, tenancy: Tenancy
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    t = soon()
    sub = subscription_object(new_subscription_id(), customer, "pro")

    created = await billing.deliver(event("customer.subscription.created", sub, t + 1))

    assert (created.outcome, created.tenant_id) == (PROCESSED, str(tenant))
    assert await plan_of(tenancy, tenant) == "pro"
    account = await billing.account(tenant)
    assert (account.customer_id, account.plan, account.plan_sync_pending) == (
        customer,
        "pro",
        False,
    )
    (stored,) = account.subscriptions
    assert (stored.id, stored.status, stored.plan, stored.price_lookup_key) == (
        sub["id"],
        "active",
        "pro",
        "pro",
    )
    period_end = sub["items"]["data"][0]["current_period_end"]
    assert stored.current_period_end_time.seconds == period_end

    sub["status"] = "canceled"
    deleted = await billing.deliver(event("customer.subscription.deleted", sub, t + 2))

    assert deleted.outcome == PROCESSED
    assert await plan_of(tenancy, tenant) == "free"


async def test_statuses_decide_the_plan_and_past_due_keeps_it_flagged(
    billing: Billing, tenancy: Tenancy
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    t = soon()
    sub = subscription_object(new_subscription_id(), customer, "starter", status="trialing")
    invoice = invoice_object(customer, sub["id"])

    async def step(kind: str, obj: dict[str, Any], at: int) -> str:
        reply = await billing.deliver(event(kind, obj, at))
        assert reply.outcome == PROCESSED, kind
        return await plan_of(tenancy, tenant)

    assert await step("customer.subscription.created", sub, t + 1) == "starter"
    # AIAS_STRIPE_PRICE_PLANS maps the yearly price to pro.
    sub["status"] = "active"
    sub["items"]["data"][0]["price"]["lookup_key"] = "pro_yearly"
    assert await step("customer.subscription.updated", sub, t + 2) == "pro"

    assert await step("invoice.payment_failed", invoice, t + 3) == "pro"
    assert (await billing.account(tenant)).past_due is True
    sub["status"] = "past_due"
    assert await step("customer.subscription.updated", sub, t + 4) == "pro"
    account = await billing.account(tenant)
    assert account.past_due is True
    assert account.subscriptions[0].past_due is True

    sub["status"] = "active"
    assert await step("customer.subscription.updated", sub, t + 5) == "pro"
    assert await step("invoice.paid", invoice, t + 6) == "pro"
    assert (await billing.account(tenant)).past_due is False
    assert await step("customer.subscription.trial_will_end", sub, t + 7) == "pro"

    sub["status"] = "unpaid"
    assert await step("customer.subscription.updated", sub, t + 8) == "free"
    assert (await billing.account(tenant)).past_due is False


@pytest.mark.parametrize("status", ["canceled", "unpaid", "incomplete_expired"])
async def test_ended_subscriptions_fall_back_to_free(
    billing: Billing, tenancy: Tenancy, status: str
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    t = soon()
    sub = subscription_object(new_subscription_id(), customer, "business")
    await billing.deliver(event("customer.subscription.created", sub, t + 1))
    assert await plan_of(tenancy, tenant) == "business"

    sub["status"] = status
    await billing.deliver(event("customer.subscription.updated", sub, t + 2))

    assert await plan_of(tenancy, tenant) == "free"


async def test_the_best_of_several_subscriptions_decides(
    billing: Billing, tenancy: Tenancy
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    t = soon()
    starter = subscription_object(new_subscription_id(), customer, "starter")
    business = subscription_object(new_subscription_id(), customer, "business")
    await billing.deliver(event("customer.subscription.created", starter, t + 1))
    await billing.deliver(event("customer.subscription.created", business, t + 2))
    assert await plan_of(tenancy, tenant) == "business"

    business["status"] = "canceled"
    await billing.deliver(event("customer.subscription.deleted", business, t + 3))

    assert await plan_of(tenancy, tenant) == "starter"


async def test_subscription_events_before_the_checkout_apply_once_it_links_the_customer(
    billing: Billing, tenancy: Tenancy
) -> None:
    tenant = await tenancy.new_tenant()
    customer = new_customer()
    t = soon()
    sub = subscription_object(new_subscription_id(), customer, "pro")

    early = await billing.deliver(event("customer.subscription.created", sub, t + 1))
    assert (early.outcome, early.tenant_id) == (IGNORED, "")
    assert await plan_of(tenancy, tenant) == "free"

    linked = await billing.deliver(
        event("checkout.session.completed", checkout_object(customer, str(tenant)), t + 2)
    )

    assert linked.outcome == PROCESSED
    assert await plan_of(tenancy, tenant) == "pro"


async def test_out_of_order_events_never_roll_the_tenant_back(
    billing: Billing, tenancy: Tenancy
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    t = soon()
    sub = subscription_object(new_subscription_id(), customer, "pro")
    await billing.deliver(event("customer.subscription.created", sub, t + 1))
    canceled = {**sub, "status": "canceled"}
    await billing.deliver(event("customer.subscription.deleted", canceled, t + 10))
    assert await plan_of(tenancy, tenant) == "free"

    late = await billing.deliver(event("customer.subscription.updated", sub, t + 5))

    assert late.outcome == IGNORED
    assert await plan_of(tenancy, tenant) == "free"
    (delivery, *_) = await billing.deliveries(tenant)
    assert delivery.event_type == "customer.subscription.updated"
    assert "out of order" in delivery.error

    # The same holds for the past-due flag.
    active = subscription_object(sub["id"], customer, "pro")
    await billing.deliver(event("customer.subscription.updated", active, t + 20))
    invoice = invoice_object(customer, sub["id"])
    await billing.deliver(event("invoice.paid", invoice, t + 22))
    stale = await billing.deliver(event("invoice.payment_failed", invoice, t + 21))
    assert stale.outcome == IGNORED
    assert (await billing.account(tenant)).past_due is False
    assert await plan_of(tenancy, tenant) == "pro"


async def test_unknown_customers_types_and_lookup_keys_are_acknowledged_and_kept(
    billing: Billing, tenancy: Tenancy
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    t = soon()

    stranger = await billing.deliver(
        event(
            "customer.subscription.created",
            subscription_object(new_subscription_id(), new_customer(), "pro"),
            t,
        )
    )
    unhandled = await billing.deliver(
        event("customer.updated", {"id": customer, "object": "customer"}, t)
    )
    product = await billing.deliver(event("product.created", {"id": "prod_1"}, t))
    odd_price = await billing.deliver(
        event(
            "customer.subscription.created",
            subscription_object(new_subscription_id(), customer, "platinum"),
            t + 1,
        )
    )

    assert [r.outcome for r in (stranger, unhandled, product, odd_price)] == [IGNORED] * 4
    assert (odd_price.tenant_id, stranger.tenant_id) == (str(tenant), "")
    assert await plan_of(tenancy, tenant) == "free"
    errors = {d.event_type + d.event_id: d.error for d in await billing.deliveries()}
    assert "not linked to a tenant" in errors["customer.subscription.created" + stranger.event_id]
    assert "does not act on product.created" in errors["product.created" + product.event_id]
    assert "AIAS_STRIPE_PRICE_PLANS" in errors["customer.subscription.created" + odd_price.event_id]


async def test_a_checkout_for_a_tenant_that_does_not_exist_links_nothing(
    billing: Billing,
) -> None:
    ghost = str(uuid.uuid4())
    reply = await billing.deliver(
        event("checkout.session.completed", checkout_object(new_customer(), ghost), soon())
    )
    assert (reply.outcome, reply.tenant_id) == (IGNORED, "")


# --- idempotency --------------------------------------------------------------------------------


async def test_duplicates_and_concurrent_duplicates_are_applied_once(
    billing: Billing, tenancy: Tenancy
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    payload = event(
        "customer.subscription.created",
        subscription_object(new_subscription_id(), customer, "pro"),
        soon(),
    )

    first = await billing.deliver(payload)
    again = await billing.deliver(payload)
    assert (first.outcome, first.duplicate) == (PROCESSED, False)
    assert (again.outcome, again.duplicate) == (DUPLICATE, True)

    other = event(
        "customer.subscription.created",
        subscription_object(new_subscription_id(), customer, "business"),
        soon() + 1,
    )
    replies = await asyncio.gather(*(billing.deliver(other) for _ in range(8)))

    assert sorted(r.outcome for r in replies) == [PROCESSED] + [DUPLICATE] * 7
    assert await plan_of(tenancy, tenant) == "business"
    account = await billing.account(tenant)
    assert len(account.subscriptions) == 2
    everything = await billing.deliveries(tenant)
    outcomes = [d.outcome for d in everything]
    assert outcomes.count(DUPLICATE) == 8
    assert outcomes.count(PROCESSED) == 3  # the checkout and the two subscriptions

    paged: list[pb.StripeDelivery] = []
    token = ""
    while True:
        page = await billing.stub.ListStripeDeliveries(
            pb.ListStripeDeliveriesRequest(page_size=4, page_token=token),
            metadata=((TENANT_ID, str(tenant)),),
        )
        paged += page.deliveries
        if not (token := page.next_page_token):
            break
    assert paged == everything


async def test_a_set_plan_that_failed_after_the_commit_is_made_good_by_the_retry(
    database: LocalDatabase, tenancy: Tenancy, billing: Billing, fake_stripe: FakeStripe
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    payload = event(
        "customer.subscription.created",
        subscription_object(new_subscription_id(), customer, "pro"),
        soon(),
    )
    # The same database, but tenancy cannot be reached: the commit happens, SetPlan fails.
    async with billing_server(database, NOWHERE, configured(fake_stripe), NOWHERE) as cut_off:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cut_off.deliver(payload)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(caught.value)[0] == "TENANCY_UNAVAILABLE"
    assert await plan_of(tenancy, tenant) == "free"
    pending = await billing.account(tenant)
    assert (pending.plan, pending.plan_sync_pending) == ("pro", True)
    (delivery, *_) = await billing.deliveries(tenant)
    assert delivery.outcome == PROCESSED
    assert "not applied yet" in delivery.error

    # Stripe delivers the event again: a duplicate for billing, and the plan reaches tenancy.
    retry = await billing.deliver(payload)

    assert retry.outcome == DUPLICATE
    assert await plan_of(tenancy, tenant) == "pro"
    assert (await billing.account(tenant)).plan_sync_pending is False


# --- rejected deliveries --------------------------------------------------------------------


async def test_bad_deliveries_are_refused_with_a_reason_and_nothing_is_processed(
    billing: Billing, tenancy: Tenancy
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    payload = event(
        "customer.subscription.created",
        subscription_object(new_subscription_id(), customer, "pro"),
        soon(),
    )
    malformed = b'{"id": "evt_1", "type": "customer.subscription.created"'
    not_an_event = json.dumps({"id": "evt_2", "type": "x"}).encode()
    cases = [
        (payload, "", "MISSING_SIGNATURE"),
        (payload, signature(payload, secret="whsec_wrong"), "INVALID_SIGNATURE"),
        (payload + b" ", signature(payload), "INVALID_SIGNATURE"),
        (payload, signature(payload, timestamp=int(time.time()) - 301), "STALE_SIGNATURE"),
        (malformed, signature(malformed), "INVALID_PAYLOAD"),
        (not_an_event, signature(not_an_event), "INVALID_PAYLOAD"),
    ]
    for body, sig, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await billing.deliver(body, sig)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
        assert reason(caught.value)[0] == expected

    assert await plan_of(tenancy, tenant) == "free"
    # None of them recorded the event as processed: a good delivery of it is new.
    assert (await billing.deliver(payload)).outcome == PROCESSED
    # The refusals are kept for the operator, not shown to any tenant.
    everything = await billing.deliveries()
    refused = [d for d in everything if d.outcome == REJECTED][: len(cases)]
    assert sorted(d.error.split(":")[0] for d in refused) == sorted(c[2] for c in cases)
    assert all(d.tenant_id == "" and d.event_id == "" for d in refused)
    assert REJECTED not in [d.outcome for d in await billing.deliveries(tenant)]


# --- outbound: checkout, portal, subscription --------------------------------------------------


async def test_checkout_creates_and_links_the_customer_once(
    billing: Billing, tenancy: Tenancy, fake_stripe: FakeStripe
) -> None:
    tenant = await tenancy.new_tenant()
    customers_before = len(fake_stripe.calls("POST", "/v1/customers"))

    first = await billing.stub.CreateCheckoutSession(
        pb.CreateCheckoutSessionRequest(plan="pro"), metadata=as_tenant(tenant)
    )
    second = await billing.stub.CreateCheckoutSession(
        pb.CreateCheckoutSessionRequest(plan="pro", price_lookup_key="pro_yearly"),
        metadata=as_tenant(tenant, "owner"),
    )

    assert first.url.startswith("https://checkout.stripe.test/c/pay/cs_test_")
    assert first.session_id != second.session_id
    created = fake_stripe.calls("POST", "/v1/customers")[customers_before:]
    assert len(created) == 1
    assert created[0].params["metadata[tenant_id]"] == str(tenant)
    assert created[0].headers["Idempotency-Key"] == f"aias-customer-{tenant}"
    customer_id = (await billing.account(tenant)).customer_id
    assert customer_id in fake_stripe.customers
    sessions = fake_stripe.calls("POST", "/v1/checkout/sessions")[-2:]
    for session, price in zip(sessions, ("price_pro", "price_pro_yearly"), strict=True):
        assert session.params["customer"] == customer_id
        assert session.params["client_reference_id"] == str(tenant)
        assert session.params["mode"] == "subscription"
        assert session.params["line_items[0][price]"] == price
        assert session.params["success_url"].endswith("/dashboard/diagnostics?billing=success")
    assert fake_stripe.calls("GET", "/v1/prices")[-1].params["lookup_keys[0]"] == "pro_yearly"

    # Stripe's later checkout event for that customer finds the tenant already linked.
    t = soon()
    completed = await billing.deliver(
        event("checkout.session.completed", checkout_object(customer_id, str(tenant)), t)
    )
    assert completed.outcome == PROCESSED
    sub = subscription_object(new_subscription_id(), customer_id, "pro")
    await billing.deliver(event("customer.subscription.created", sub, t + 1))
    assert await plan_of(tenancy, tenant) == "pro"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.CreateCheckoutSession(
            pb.CreateCheckoutSessionRequest(plan="business"), metadata=as_tenant(tenant)
        )
    assert reason(caught.value)[0] == "SUBSCRIPTION_EXISTS"


@pytest.mark.parametrize(
    ("request_", "role", "code", "expected"),
    [
        (
            pb.CreateCheckoutSessionRequest(plan="pro"),
            "member",
            "PERMISSION_DENIED",
            "ROLE_REQUIRED",
        ),
        (pb.CreateCheckoutSessionRequest(plan="free"), "admin", "INVALID_ARGUMENT", "INVALID_PLAN"),
        (pb.CreateCheckoutSessionRequest(plan="gold"), "admin", "INVALID_ARGUMENT", "INVALID_PLAN"),
        (
            pb.CreateCheckoutSessionRequest(plan="starter", price_lookup_key="pro_yearly"),
            "admin",
            "INVALID_ARGUMENT",
            "INVALID_PRICE_LOOKUP_KEY",
        ),
        (
            pb.CreateCheckoutSessionRequest(plan="enterprise"),
            "admin",
            "FAILED_PRECONDITION",
            "PRICE_NOT_FOUND",
        ),
    ],
)
async def test_checkout_refusals(
    billing: Billing,
    tenancy: Tenancy,
    request_: pb.CreateCheckoutSessionRequest,
    role: str,
    code: str,
    expected: str,
) -> None:
    tenant = await tenancy.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.CreateCheckoutSession(request_, metadata=as_tenant(tenant, role))
    assert caught.value.code().name == code
    assert reason(caught.value)[0] == expected


async def test_portal_and_subscription_come_from_stripe(
    billing: Billing, tenancy: Tenancy, fake_stripe: FakeStripe
) -> None:
    tenant = await tenancy.new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing.stub.CreatePortalSession(
            pb.CreatePortalSessionRequest(), metadata=as_tenant(tenant)
        )
    assert reason(caught.value)[0] == "NO_STRIPE_CUSTOMER"
    none = await billing.stub.GetSubscription(
        pb.GetSubscriptionRequest(), metadata=as_tenant(tenant)
    )
    assert not none.HasField("subscription")

    await billing.stub.CreateCheckoutSession(
        pb.CreateCheckoutSessionRequest(plan="business"), metadata=as_tenant(tenant)
    )
    customer = (await billing.account(tenant)).customer_id
    fake_stripe.add_subscription(customer, "starter", status="canceled")
    current = fake_stripe.add_subscription(customer, "business", cancel_at_period_end=True)

    portal = await billing.stub.CreatePortalSession(
        pb.CreatePortalSessionRequest(), metadata=as_tenant(tenant)
    )
    reply = await billing.stub.GetSubscription(
        pb.GetSubscriptionRequest(), metadata=as_tenant(tenant)
    )

    assert portal.url.startswith("https://billing.stripe.test/p/session/")
    sent = fake_stripe.calls("POST", "/v1/billing_portal/sessions")[-1].params
    assert sent == {"customer": customer, "return_url": sent["return_url"]}
    assert sent["return_url"].endswith("/dashboard/diagnostics")
    sub = reply.subscription
    assert (sub.id, sub.status, sub.plan, sub.cancel_at_period_end) == (
        current["id"],
        "active",
        "business",
        True,
    )
    assert sub.current_period_end_time.seconds == current["items"]["data"][0]["current_period_end"]
    listed = fake_stripe.calls("GET", "/v1/subscriptions")[-1].params
    assert (listed["customer"], listed["status"]) == (customer, "all")


async def test_stripe_failures_are_explained(
    database: LocalDatabase, tenancy: Tenancy, fake_stripe: FakeStripe
) -> None:
    tenant = await tenancy.new_tenant()
    good = configured(fake_stripe)
    cases = [
        (
            replace(good, api_key="sk_test_revoked"),
            "FAILED_PRECONDITION",
            "STRIPE_CREDENTIALS_REJECTED",
        ),
        (replace(good, api_base="http://127.0.0.1:9"), "UNAVAILABLE", "STRIPE_UNAVAILABLE"),
    ]
    for settings, code, expected in cases:
        async with billing_server(database, tenancy.address, settings, NOWHERE) as broken:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await broken.stub.CreateCheckoutSession(
                    pb.CreateCheckoutSessionRequest(plan="pro"), metadata=as_tenant(tenant)
                )
        assert (caught.value.code().name, reason(caught.value)[0]) == (code, expected)


# --- reconcile ----------------------------------------------------------------------------------


async def run_cli(billing: Billing, *args: str) -> Result:
    """`aias billing ...` as an operator runs it, pointed at this billing server."""
    env = {"AIAS_BILLING_ADDR": billing.address, "AIAS_INTERNAL_TOKEN": INTERNAL_TOKEN}
    return await asyncio.to_thread(CliRunner().invoke, billing_cli, list(args), env=env)


async def test_reconcile_fixes_a_missed_downgrade(
    billing: Billing, tenancy: Tenancy, fake_stripe: FakeStripe
) -> None:
    tenant = await tenancy.new_tenant()
    await billing.stub.CreateCheckoutSession(
        pb.CreateCheckoutSessionRequest(plan="pro"), metadata=as_tenant(tenant)
    )
    customer = (await billing.account(tenant)).customer_id
    sub = fake_stripe.add_subscription(customer, "pro")
    created = soon()
    await billing.deliver(event("customer.subscription.created", sub, created))
    assert await plan_of(tenancy, tenant) == "pro"
    # The subscription ends at Stripe, and the webhook that said so never arrives.
    sub["status"] = "canceled"
    await asyncio.sleep(max(0.0, created + 0.1 - time.time()))

    dry = await run_cli(billing, "reconcile", str(tenant), "--dry-run")
    assert dry.exit_code == 0, dry.output
    header, row, summary = dry.output.splitlines()
    assert header.split() == ["TENANT", "STRIPE", "CUSTOMER", "PLAN", "RESULT"]
    assert row.split() == [str(tenant), customer, "pro", "->", "free", "would", "change"]
    assert summary == "1 tenant(s) checked, 1 would change."
    assert await plan_of(tenancy, tenant) == "pro"

    fixed = await run_cli(billing, "reconcile", str(tenant))

    assert fixed.exit_code == 0, fixed.output
    _header, row, summary = fixed.output.splitlines()
    assert row.split() == [str(tenant), customer, "pro", "->", "free", "changed"]
    assert summary == "1 tenant(s) checked, 1 changed."
    assert await plan_of(tenancy, tenant) == "free"
    account = await billing.account(tenant)
    assert [s.status for s in account.subscriptions] == ["canceled"]
    assert account.plan_sync_pending is False

    again = await run_cli(billing, "reconcile", "--json")
    assert again.exit_code == 0, again.output
    mine = [t for t in json.loads(again.stdout)["tenants"] if t["tenant_id"] == str(tenant)]
    assert mine == [
        {
            "tenant_id": str(tenant),
            "customer_id": customer,
            "previous_plan": "free",
            "plan": "free",
            "changed": False,
            "error": "",
        }
    ]


async def test_reconcile_of_a_tenant_without_customer_is_not_found(
    billing: Billing, tenancy: Tenancy
) -> None:
    tenant = await tenancy.new_tenant()
    result = await run_cli(billing, "reconcile", str(tenant))
    assert result.exit_code == 1
    assert "has no Stripe customer" in result.output


# --- the cross-tenant path --------------------------------------------------------------------


async def test_the_intake_path_reads_customer_links_and_writes_only_unassigned_deliveries(
    billing: Billing, tenancy: Tenancy, app_db: Database
) -> None:
    tenant, customer = await linked_tenant(tenancy, billing)
    await billing.deliver(
        event(
            "customer.subscription.created",
            subscription_object(new_subscription_id(), customer, "pro"),
            soon(),
        )
    )
    async with app_db.system(SystemPath.STRIPE_INTAKE) as session:
        owner = (
            await session.execute(
                text("SELECT tenant_id FROM billing.customers WHERE id = :c"), {"c": customer}
            )
        ).scalar()
        subscriptions = (
            await session.execute(text("SELECT count(*) FROM billing.subscriptions"))
        ).scalar()
        tenants = (await session.execute(text("SELECT count(*) FROM tenancy.tenants"))).scalar()
    assert (owner, subscriptions, tenants) == (tenant, 0, 0)

    async with app_db.system(SystemPath.STRIPE_INTAKE) as session:
        updated = (
            await session.execute(
                text("UPDATE billing.customers SET plan = 'enterprise' WHERE id = :c RETURNING id"),
                {"c": customer},
            )
        ).all()
        deleted = (
            await session.execute(
                text("DELETE FROM billing.deliveries WHERE tenant_id = :t RETURNING id"),
                {"t": tenant},
            )
        ).all()
    assert (updated, deleted) == ([], [])
    assert (await billing.account(tenant)).plan == "pro"
    assert len(await billing.deliveries(tenant)) == 2


async def test_the_intake_path_cannot_write_a_tenants_delivery(
    tenancy: Tenancy, app_db: Database
) -> None:
    tenant = await tenancy.new_tenant()
    with pytest.raises(ProgrammingError, match="row-level security"):
        async with app_db.system(SystemPath.STRIPE_INTAKE) as session:
            await session.execute(
                text(
                    "INSERT INTO billing.deliveries (id, tenant_id, event_id, event_type, "
                    "outcome) VALUES (gen_random_uuid(), :t, 'evt_x', 'x', 'processed')"
                ),
                {"t": tenant},
            )


async def test_an_event_holding_nul_is_kept_and_applied(billing: Billing, tenancy: Tenancy) -> None:
    # JSON may escape U+0000, PostgreSQL's jsonb cannot hold it: a verified event whose customer
    # name holds one is recorded (the character escaped) and acts like any other, instead of
    # failing until Stripe gives up retrying it.
    tenant, customer = await linked_tenant(tenancy, billing)
    subscription = subscription_object(new_subscription_id(), customer, "pro")
    subscription["metadata"] = {"note": "a\x00b"}
    applied = await billing.deliver(event("customer.subscription.created", subscription, soon()))
    named = await billing.deliver(
        event("customer.updated", {"id": customer, "object": "customer", "name": "x\x00"}, soon())
    )
    assert (applied.outcome, named.outcome) == (PROCESSED, IGNORED)
    assert await plan_of(tenancy, tenant) == "pro"
