"""Billing's rules without I/O: signatures, event shapes, lookup keys, statuses, settings."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from aias.core.entitlements import DEFAULT_PLAN, PLANS
from aias.core.errors import FailedPrecondition, InvalidArgument
from aias.core.settings import Env, SettingsError
from aias.services.billing.domain import (
    CHECKOUT_COMPLETED,
    Plans,
    checkout_tenant,
    event_from,
    invoice_subscription_id,
    past_due_after,
    subscription_from,
    verify,
)
from aias.services.billing.main import load_settings
from tests.stripe_fake import (
    WEBHOOK_SECRET,
    checkout_object,
    event,
    signature,
    subscription_object,
)

PLANS_WITH_YEARLY = Plans.build(tuple(PLANS), DEFAULT_PLAN, "pro_yearly=pro, biz_2024 = business")


def refusal(payload: bytes, sig: str, secret: str = WEBHOOK_SECRET) -> str:
    with pytest.raises(InvalidArgument) as caught:
        verify(payload, sig, secret)
    return caught.value.reason


def test_a_signed_event_is_verified_and_parsed() -> None:
    sub = subscription_object("sub_1", "cus_1", "pro")
    payload = event("customer.subscription.created", sub, 1_800_000_000, "evt_1")

    verified = verify(payload, signature(payload), WEBHOOK_SECRET)

    assert (verified.id, verified.type, verified.customer_id) == (
        "evt_1",
        "customer.subscription.created",
        "cus_1",
    )
    assert verified.created.timestamp() == 1_800_000_000
    assert verified.object == sub


def test_signature_failures_have_distinct_reasons() -> None:
    payload = event("invoice.paid", {"id": "in_1"}, 1_800_000_000)
    assert refusal(payload, "") == "MISSING_SIGNATURE"
    assert refusal(payload, "t=1,v1=abc") == "INVALID_SIGNATURE"
    assert refusal(payload, "garbage") == "INVALID_SIGNATURE"
    assert refusal(payload, signature(payload, "whsec_other")) == "INVALID_SIGNATURE"
    assert refusal(payload.replace(b"in_1", b"in_2"), signature(payload)) == "INVALID_SIGNATURE"
    old = signature(payload, timestamp=int(time.time()) - 301)
    assert refusal(payload, old) == "STALE_SIGNATURE"
    assert refusal(b"\xff\xfe", signature(payload)) == "INVALID_PAYLOAD"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({"id": "evt_1", "type": "x", "created": 1}).encode(),
        json.dumps({"id": "", "type": "x", "created": 1, "data": {"object": {}}}).encode(),
        json.dumps({"id": "evt_1", "type": "x", "created": "1", "data": {"object": {}}}).encode(),
        json.dumps(
            {"id": "evt_1", "type": "x", "created": 10**20, "data": {"object": {}}}
        ).encode(),
    ],
)
def test_a_signed_body_that_is_no_event_is_invalid_payload(body: bytes) -> None:
    assert refusal(body, signature(body)) == "INVALID_PAYLOAD"


def test_without_a_webhook_secret_billing_is_unconfigured_503() -> None:
    payload = event("invoice.paid", {"id": "in_1"}, 1_800_000_000)
    with pytest.raises(FailedPrecondition) as caught:
        verify(payload, signature(payload), "")
    assert caught.value.reason == "BILLING_NOT_CONFIGURED"
    assert caught.value.metadata == {"http_status": "503"}


def test_lookup_keys_map_to_plans() -> None:
    assert PLANS_WITH_YEARLY.plan_for("pro") == "pro"
    assert PLANS_WITH_YEARLY.plan_for("pro_yearly") == "pro"
    assert PLANS_WITH_YEARLY.plan_for("biz_2024") == "business"
    assert PLANS_WITH_YEARLY.plan_for("platinum") is None
    assert PLANS_WITH_YEARLY.plan_for("") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [("pro_yearly", "is not lookup_key=plan"), ("x=gold", "names no plan"), ("=pro", "lookup_key")],
)
def test_bad_price_plan_entries_are_named(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Plans.build(tuple(PLANS), DEFAULT_PLAN, text)


@pytest.mark.parametrize(
    ("subscriptions", "plan"),
    [
        ([], "free"),
        ([("active", "pro")], "pro"),
        ([("trialing", "starter")], "starter"),
        ([("past_due", "business")], "business"),
        ([("canceled", "pro")], "free"),
        ([("unpaid", "pro")], "free"),
        ([("incomplete_expired", "pro")], "free"),
        ([("incomplete", "pro")], "free"),
        ([("active", "starter"), ("active", "business"), ("canceled", "enterprise")], "business"),
        ([("active", "")], "free"),
    ],
)
def test_statuses_decide_the_plan(subscriptions: list[tuple[str, str]], plan: str) -> None:
    assert PLANS_WITH_YEARLY.decided_by(subscriptions) == plan


@pytest.mark.parametrize(
    ("previous", "status", "after"),
    [
        (False, "past_due", True),
        (True, "active", True),
        (False, "active", False),
        (True, "trialing", True),
        (True, "canceled", False),
        (True, "unpaid", False),
    ],
)
def test_past_due_flag_after_a_snapshot(previous: bool, status: str, after: bool) -> None:
    assert past_due_after(previous, status) is after


def test_subscription_snapshot_takes_the_item_with_a_plan_and_its_period() -> None:
    sub = subscription_object("sub_1", "cus_1", "pro_yearly", cancel_at_period_end=True)
    addon = {"id": "si_addon", "price": {"lookup_key": "seats"}, "current_period_end": 1}
    sub["items"]["data"].insert(0, addon)

    snapshot = subscription_from(sub, PLANS_WITH_YEARLY)

    assert (snapshot.id, snapshot.customer_id, snapshot.status) == ("sub_1", "cus_1", "active")
    assert (snapshot.price_lookup_key, snapshot.cancel_at_period_end) == ("pro_yearly", True)
    assert snapshot.current_period_end is not None
    assert snapshot.current_period_end.timestamp() == sub["items"]["data"][1]["current_period_end"]


def test_subscription_snapshot_reads_the_older_api_shape() -> None:
    sub = subscription_object("sub_1", "cus_1", "pro")
    del sub["items"]["data"][0]["current_period_end"]
    sub["current_period_end"] = 1_800_000_000

    snapshot = subscription_from(sub, PLANS_WITH_YEARLY)

    assert snapshot.current_period_end is not None
    assert snapshot.current_period_end.timestamp() == 1_800_000_000


def test_invoice_subscription_in_both_api_shapes() -> None:
    current = {"parent": {"subscription_details": {"subscription": "sub_new"}}}
    assert invoice_subscription_id(current) == "sub_new"
    assert invoice_subscription_id({"subscription": "sub_old", "parent": None}) == "sub_old"
    assert invoice_subscription_id({"subscription": {"id": "sub_expanded"}}) == "sub_expanded"
    assert invoice_subscription_id({"parent": None}) == ""


def test_checkout_names_its_tenant_by_reference_or_metadata() -> None:
    tenant = uuid.uuid4()
    by_reference = checkout_object("cus_1", str(tenant))
    by_metadata = {**by_reference, "client_reference_id": None}
    nothing = {**by_metadata, "metadata": {"tenant_id": "not-a-uuid"}}

    def of(obj: dict[str, object]) -> uuid.UUID | None:
        return checkout_tenant(
            event_from(json.loads(event(CHECKOUT_COMPLETED, obj, 1_800_000_000)))
        )

    assert of(by_reference) == tenant
    assert of(by_metadata) == tenant
    assert of(nothing) is None


def test_settings_read_stripe_and_default_the_return_urls() -> None:
    settings = load_settings(
        Env(
            {
                "AIAS_INTERNAL_TOKEN": "t",
                "AIAS_APP_DATABASE_URL": "postgresql://app@db/aias",
                "AIAS_TENANCY_ADDR": "tenancy:50051",
                "AIAS_EXECUTION_ADDR": "execution:50052",
                "AIAS_PUBLIC_URL": "https://aias.example.com/",
                "AIAS_STRIPE_WEBHOOK_SECRET": "whsec_1",
                "AIAS_STRIPE_API_KEY": "sk_1",
                "AIAS_STRIPE_PRICE_PLANS": "pro_yearly=pro",
                "AIAS_BILLING_RETURN_URL": "https://app.example.com/billing",
            }
        )
    )
    stripe = settings.stripe
    assert (settings.tenancy_addr, settings.execution_addr, stripe.api_base) == (
        "tenancy:50051",
        "execution:50052",
        "https://api.stripe.com",
    )
    assert dict(stripe.price_plans) == {"pro_yearly": "pro"}
    assert stripe.urls.checkout_success == (
        "https://aias.example.com/dashboard/diagnostics?billing=success"
    )
    assert stripe.urls.portal_return == "https://app.example.com/billing"


def test_settings_name_every_problem_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            Env(
                {
                    "AIAS_INTERNAL_TOKEN": "t",
                    "AIAS_APP_DATABASE_URL": "postgresql://app@db/aias",
                    "AIAS_TENANCY_ADDR": "tenancy:50051",
                    "AIAS_EXECUTION_ADDR": "execution:50052",
                    "AIAS_STRIPE_API_BASE": "localhost:12111",
                    "AIAS_STRIPE_PRICE_PLANS": "pro_yearly=gold",
                }
            )
        )
    message = str(caught.value)
    assert "AIAS_STRIPE_API_BASE must be an http:// or https:// URL" in message
    assert "AIAS_STRIPE_PRICE_PLANS: entry 'pro_yearly=gold' names no plan" in message


def test_billing_needs_tenancy_and_execution() -> None:
    env = {"AIAS_INTERNAL_TOKEN": "t", "AIAS_APP_DATABASE_URL": "postgresql://app@db/aias"}
    with pytest.raises(SettingsError) as caught:
        load_settings(Env(env))
    assert "AIAS_TENANCY_ADDR is required" in str(caught.value)
    assert "AIAS_EXECUTION_ADDR is required" in str(caught.value)
