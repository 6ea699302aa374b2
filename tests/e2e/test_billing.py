"""Stripe -> plan -> enforced limits through the running suite's gateway; Stripe's API is faked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp
from click.testing import CliRunner

from aias.billing.v1 import billing_service_pb2 as pb
from aias.billing.v1 import billing_service_pb2_grpc as pb_grpc
from aias.cli.billing import billing as billing_cli
from aias.core.clients import internal_channel
from aias.core.launcher import Stack
from tests.conftest import INTERNAL_TOKEN
from tests.e2e.client import Tenant, expect, new_tenant
from tests.stripe_fake import (
    FakeStripe,
    checkout_object,
    event,
    invoice_object,
    signature,
    subscription_object,
)

WEBHOOK = "/api/stripe/webhook"
CHEAP_WORKFLOW = {
    "name": "echo",
    "steps": [{"id": "id", "type": "transform", "config": {"expression": "@"}}],
}
# How long a plan change may take to reach execution's cache (tenancy pushes it at once).
PROPAGATION_SECONDS = 5.0


def soon() -> int:
    """A Stripe `created` after the tenant's creation (tenancy refuses older changes)."""
    return int(time.time()) + 1


async def deliver(
    http: aiohttp.ClientSession, payload: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Posts a Stripe delivery; signed with the suite's secret unless `headers` say otherwise."""
    sent = {"Stripe-Signature": signature(payload)} if headers is None else headers
    async with http.post(
        WEBHOOK, data=payload, headers={"Content-Type": "application/json", **sent}
    ) as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def endpoint_url(http: aiohttp.ClientSession, tenant: Tenant) -> str:
    async with http.post("/api/workflows", json=CHEAP_WORKFLOW, headers=tenant.auth) as response:
        workflow = (await expect(response, 201))["workflow"]
    async with http.post(
        "/api/webhook-endpoints",
        json={"workflow_id": workflow["id"], "name": "burst"},
        headers=tenant.auth,
    ) as response:
        created = await expect(response, 201)
    return f"/api/webhooks/{tenant.id}/{created['secret']}"


async def burst(http: aiohttp.ClientSession, url: str, count: int) -> list[int]:
    """The statuses of `count` webhook requests sent at once."""

    async def one(index: int) -> int:
        async with http.post(url, json={"n": index}) as response:
            await response.read()
            return response.status

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def plan_of(http: aiohttp.ClientSession, tenant: Tenant) -> tuple[str, dict[str, Any]]:
    async with http.get("/api/tenants/me", headers=tenant.auth) as response:
        body = await expect(response, 200)
    return body["tenant"]["plan"], body["limits"]


async def subscribe(
    http: aiohttp.ClientSession, fake: FakeStripe, tenant: Tenant, plan: str
) -> tuple[str, dict[str, Any]]:
    """Checkout through the gateway, then the events Stripe sends when the user has paid."""
    async with http.post(
        "/api/billing/checkout-session", json={"plan": plan}, headers=tenant.auth
    ) as response:
        session = await expect(response, 200)
    assert session["url"].startswith("https://checkout.stripe.test/")
    (customer,) = [
        c["id"] for c in fake.customers.values() if c["metadata"]["tenant_id"] == tenant.id
    ]
    t = soon()
    sub = fake.add_subscription(customer, plan)
    for kind, obj, at in (
        ("customer.subscription.created", sub, t),
        ("checkout.session.completed", checkout_object(customer, tenant.id, sub["id"]), t),
    ):
        status, body = await deliver(http, event(kind, obj, at))
        assert (status, body["outcome"], body["tenant_id"]) == (200, "processed", tenant.id)
    return customer, sub


async def test_a_stripe_subscription_changes_the_plan_and_the_enforced_rate(
    http: aiohttp.ClientSession, fake_stripe: FakeStripe
) -> None:
    tenant = await new_tenant(http)
    url = await endpoint_url(http, tenant)
    # Free: 20 webhooks at once per endpoint, then 429.
    free = await burst(http, url, 30)
    assert (free.count(202), free.count(429)) == (20, 10)

    _customer, sub = await subscribe(http, fake_stripe, tenant, "pro")

    plan, limits = await plan_of(http, tenant)
    assert (plan, limits["webhook_burst"]) == ("pro", 200)
    # Tenancy pushes the change to execution's cache; pro takes a burst free never would.
    deadline = time.monotonic() + PROPAGATION_SECONDS
    while (pro := await burst(http, url, 60)).count(202) < 60:
        assert time.monotonic() < deadline, f"pro's limits did not reach execution: {pro}"
        await asyncio.sleep(0.2)

    sub["status"] = "canceled"
    status, body = await deliver(http, event("customer.subscription.deleted", sub, soon() + 1))
    assert (status, body["outcome"]) == (200, "processed")
    assert (await plan_of(http, tenant))[0] == "free"
    deadline = time.monotonic() + PROPAGATION_SECONDS
    while 429 not in (again := await burst(http, url, 30)):
        assert time.monotonic() < deadline, f"free's limits did not come back: {again}"
        await asyncio.sleep(0.2)


async def test_every_lifecycle_event_through_the_gateway(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    tenant = await new_tenant(http)
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    t = soon()
    trial = subscription_object(f"sub_{uuid.uuid4().hex[:12]}", customer, "starter", "trialing")
    invoice = invoice_object(customer, trial["id"])
    yearly = json.loads(json.dumps(trial))
    yearly["items"]["data"][0]["price"]["lookup_key"] = "pro_yearly"
    business = subscription_object(f"sub_{uuid.uuid4().hex[:12]}", customer, "business")
    steps: list[tuple[str, dict[str, Any], str, int]] = [
        ("customer.subscription.created", trial, "free", 20),  # no tenant yet: kept for later
        ("checkout.session.completed", checkout_object(customer, tenant.id), "starter", 50),
        ("customer.subscription.updated", {**yearly, "status": "active"}, "pro", 200),
        ("invoice.payment_failed", invoice, "pro", 200),
        ("customer.subscription.updated", {**yearly, "status": "past_due"}, "pro", 200),
        ("invoice.paid", invoice, "pro", 200),
        ("customer.subscription.updated", {**yearly, "status": "active"}, "pro", 200),
        ("customer.subscription.trial_will_end", {**yearly, "status": "active"}, "pro", 200),
        ("customer.subscription.created", business, "business", 1000),
        ("customer.subscription.deleted", {**business, "status": "canceled"}, "pro", 200),
        ("customer.subscription.updated", {**yearly, "status": "unpaid"}, "free", 20),
    ]
    past_due = []
    async with internal_channel(stack.address("billing"), INTERNAL_TOKEN) as channel:
        billing = pb_grpc.BillingServiceStub(channel)
        for offset, (kind, obj, plan, burst_limit) in enumerate(steps):
            status, body = await deliver(http, event(kind, obj, t + offset))
            assert status == 200, (kind, body)
            current, limits = await plan_of(http, tenant)
            assert (current, limits["webhook_burst"]) == (plan, burst_limit), kind
            reply = await billing.GetBillingAccount(
                pb.GetBillingAccountRequest(tenant_id=tenant.id)
            )
            past_due.append(reply.account.past_due)
    assert past_due == [False, False, False, True, True, False, False, False, False, False, False]


async def test_duplicates_concurrent_duplicates_and_out_of_order_pairs(
    http: aiohttp.ClientSession, fake_stripe: FakeStripe
) -> None:
    tenant = await new_tenant(http)
    _customer, sub = await subscribe(http, fake_stripe, tenant, "starter")
    t = soon() + 1
    upgrade = event("customer.subscription.updated", {**sub, "status": "active"}, t)
    upgraded = json.loads(upgrade)
    upgraded["data"]["object"]["items"]["data"][0]["price"]["lookup_key"] = "business"
    upgrade = json.dumps(upgraded).encode()

    first = await deliver(http, upgrade)
    again = await deliver(http, upgrade)
    assert first == (200, {**first[1], "outcome": "processed", "duplicate": False})
    assert again == (200, {**first[1], "outcome": "duplicate", "duplicate": True})
    assert (await plan_of(http, tenant))[0] == "business"

    canceled = event("customer.subscription.deleted", {**sub, "status": "canceled"}, t + 10)
    replies = await asyncio.gather(*(deliver(http, canceled) for _ in range(6)))
    assert sorted(body["outcome"] for _, body in replies) == ["duplicate"] * 5 + ["processed"]
    assert {status for status, _ in replies} == {200}
    assert (await plan_of(http, tenant))[0] == "free"

    # An older event arriving late changes nothing.
    late = event("customer.subscription.updated", {**sub, "status": "active"}, t + 5)
    assert (await deliver(http, late))[1]["outcome"] == "ignored"
    assert (await plan_of(http, tenant))[0] == "free"


async def test_bad_deliveries_are_400_with_a_reason_and_unknown_ones_are_acknowledged(
    http: aiohttp.ClientSession,
) -> None:
    payload = event(
        "customer.subscription.created",
        subscription_object("sub_unknown", f"cus_{uuid.uuid4().hex[:12]}", "pro"),
        soon(),
    )
    malformed = b'{"id": "evt_x", "object": "event", "data": '
    cases = [
        ({}, payload, "MISSING_SIGNATURE"),
        (
            {"Stripe-Signature": signature(payload, secret="whsec_other")},
            payload,
            "INVALID_SIGNATURE",
        ),
        (
            {"Stripe-Signature": signature(payload, timestamp=int(time.time()) - 400)},
            payload,
            "STALE_SIGNATURE",
        ),
        ({"Stripe-Signature": signature(malformed)}, malformed, "INVALID_PAYLOAD"),
    ]
    for headers, body, expected in cases:
        status, answer = await deliver(http, body, headers)
        assert status == 400, answer
        error = answer["error"]
        assert (error["code"], error["status"], error["reason"]) == (
            400,
            "INVALID_ARGUMENT",
            expected,
        )
        assert error["message"]
        assert error["request_id"]

    unknown_customer = await deliver(http, payload)
    unknown_type = await deliver(http, event("coupon.created", {"id": "co_1"}, soon()))
    assert unknown_customer[0] == unknown_type[0] == 200
    assert unknown_customer[1]["outcome"] == unknown_type[1]["outcome"] == "ignored"

    async with http.get(WEBHOOK) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"


async def test_billing_routes_need_an_admin_and_read_stripe(
    http: aiohttp.ClientSession, fake_stripe: FakeStripe
) -> None:
    tenant = await new_tenant(http)
    async with http.post("/api/billing/portal-session", json={}, headers=tenant.auth) as response:
        assert (await expect(response, 400))["error"]["reason"] == "NO_STRIPE_CUSTOMER"
    async with http.get("/api/billing/subscription", headers=tenant.auth) as response:
        assert await expect(response, 200) == {"subscription": None}

    await subscribe(http, fake_stripe, tenant, "business")

    async with http.post("/api/billing/portal-session", headers=tenant.auth) as response:
        portal = await expect(response, 200)
    assert portal["url"].startswith("https://billing.stripe.test/p/session/")
    async with http.get("/api/billing/subscription", headers=tenant.auth) as response:
        sub = (await expect(response, 200))["subscription"]
    assert (sub["plan"], sub["status"], sub["cancel_at_period_end"], sub["past_due"]) == (
        "business",
        "active",
        False,
        False,
    )
    assert sub["current_period_end_time"].endswith("Z")

    async with http.post(
        "/api/api-keys", json={"name": "dev", "role": "member"}, headers=tenant.auth
    ) as response:
        member = Tenant(tenant.id, (await expect(response, 201))["key"])
    for method, path in (
        ("POST", "/api/billing/checkout-session"),
        ("POST", "/api/billing/portal-session"),
        ("GET", "/api/billing/subscription"),
    ):
        async with http.request(method, path, json={}, headers=member.auth) as response:
            assert (await expect(response, 403))["error"]["reason"] == "ROLE_REQUIRED"


async def test_reconcile_fixes_a_downgrade_whose_webhook_was_missed(
    stack: Stack, http: aiohttp.ClientSession, fake_stripe: FakeStripe
) -> None:
    tenant = await new_tenant(http)
    customer, sub = await subscribe(http, fake_stripe, tenant, "pro")
    assert (await plan_of(http, tenant))[0] == "pro"
    sub["status"] = "canceled"  # at Stripe; the webhook never arrives
    # Reconcile's time must be later than the (whole-second) time of the events it overrides.
    await asyncio.sleep(int(time.time()) + 1.1 - time.time())

    result = await asyncio.to_thread(
        CliRunner().invoke,
        billing_cli,
        ["reconcile", tenant.id],
        env={"AIAS_BILLING_ADDR": stack.address("billing"), "AIAS_INTERNAL_TOKEN": INTERNAL_TOKEN},
    )

    assert result.exit_code == 0, result.output
    assert [tenant.id, customer, "pro", "->", "free", "changed"] in [
        line.split() for line in result.output.splitlines()
    ]
    assert (await plan_of(http, tenant))[0] == "free"
