"""Billing rules: verifying Stripe deliveries and turning subscriptions into plans."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import stripe

from aias.core.errors import FailedPrecondition, InvalidArgument
from aias.core.stored import storable_json

SIGNATURE_TOLERANCE_SECONDS = 300

CHECKOUT_COMPLETED = "checkout.session.completed"
# Every customer.subscription.* event carries the whole subscription as it is now.
SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.trial_will_end",
    }
)
# Invoice events set or clear a subscription's past-due flag.
INVOICE_PAST_DUE = {"invoice.payment_failed": True, "invoice.paid": False}
# What a customer's earlier events replay when the customer is linked to a tenant.
REPLAYED_EVENTS = SUBSCRIPTION_EVENTS | INVOICE_PAST_DUE.keys()

# Statuses in which a subscription grants its plan; `past_due` keeps it while Stripe retries.
GRANTING_STATUSES = frozenset({"active", "trialing", "past_due"})
PAST_DUE = "past_due"


class Outcome(StrEnum):
    """What billing did with one delivery."""

    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    REJECTED = "rejected"


NOT_CONFIGURED = "BILLING_NOT_CONFIGURED"


def not_configured(setting: str) -> FailedPrecondition:
    return FailedPrecondition(NOT_CONFIGURED, f"billing is not configured: set {setting}")


@dataclass(frozen=True)
class StripeEvent:
    """A verified Stripe event: its identity, its time and the object it is about."""

    id: str
    type: str
    created: datetime
    object: Mapping[str, Any]
    payload: dict[str, Any]

    @property
    def customer_id(self) -> str:
        """The Stripe customer the event's object belongs to; "" when it names none."""
        return _id_of(self.object.get("customer"))


def verify(payload: bytes, signature: str, webhook_secret: str) -> StripeEvent:
    """Checks the Stripe-Signature over the exact bytes with stripe's own verifier, then parses."""
    if not webhook_secret:
        raise FailedPrecondition(
            NOT_CONFIGURED,
            "billing is not configured: it has no Stripe webhook secret "
            "(AIAS_STRIPE_WEBHOOK_SECRET)",
            {"http_status": "503"},
        )
    if not signature:
        raise InvalidArgument("MISSING_SIGNATURE", "the Stripe-Signature header is missing")
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature, webhook_secret, SIGNATURE_TOLERANCE_SECONDS
        )
    except UnicodeDecodeError:
        raise InvalidArgument("INVALID_PAYLOAD", "the body is not UTF-8 text") from None
    except stripe.SignatureVerificationError:
        if _signed_but_stale(payload, signature, webhook_secret):
            raise InvalidArgument(
                "STALE_SIGNATURE",
                f"the Stripe-Signature timestamp is more than {SIGNATURE_TOLERANCE_SECONDS} "
                "seconds old; check the server's clock",
            ) from None
        raise InvalidArgument(
            "INVALID_SIGNATURE",
            "the Stripe-Signature does not match the body and the webhook secret "
            "(AIAS_STRIPE_WEBHOOK_SECRET)",
        ) from None
    return parse_event(payload)


def _signed_but_stale(payload: bytes, signature: str, webhook_secret: str) -> bool:
    """Whether the signature is right and only its age failed (no tolerance: age not checked)."""
    try:
        stripe.WebhookSignature.verify_header(payload, signature, webhook_secret, None)
    except stripe.SignatureVerificationError:
        return False
    return True


def parse_event(payload: bytes) -> StripeEvent:
    """A Stripe event from its JSON, or INVALID_PAYLOAD saying what is missing."""
    try:
        body = json.loads(payload)
    except ValueError as error:
        raise InvalidArgument("INVALID_PAYLOAD", f"the body is not valid JSON: {error}") from None
    # Recorded as jsonb, which holds no NUL: a customer's name or metadata may carry one.
    return event_from(storable_json(body))


def event_from(body: Any) -> StripeEvent:
    """A Stripe event from its decoded JSON (a delivery, or one recorded earlier)."""
    data = body.get("data") if isinstance(body, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    created = _time(body.get("created")) if isinstance(body, dict) else None
    if not (
        isinstance(body, dict)
        and isinstance(body.get("id"), str)
        and body["id"]
        and isinstance(body.get("type"), str)
        and created is not None
        and isinstance(obj, dict)
    ):
        raise InvalidArgument(
            "INVALID_PAYLOAD",
            "the body is not a Stripe event (it needs id, type, created and data.object)",
        )
    return StripeEvent(id=body["id"], type=body["type"], created=created, object=obj, payload=body)


def checkout_tenant(event: StripeEvent) -> uuid.UUID | None:
    """The tenant a completed Checkout Session was started for (client_reference_id first)."""
    metadata = event.object.get("metadata")
    candidates = [
        event.object.get("client_reference_id"),
        metadata.get("tenant_id") if isinstance(metadata, dict) else None,
    ]
    for value in candidates:
        if isinstance(value, str) and value:
            try:
                return uuid.UUID(value)
            except ValueError:
                continue
    return None


def invoice_subscription_id(invoice: Mapping[str, Any]) -> str:
    """The subscription an invoice bills; "" for a one-off invoice."""
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    if isinstance(details, dict) and (found := _id_of(details.get("subscription"))):
        return found
    # API versions before 2025-03-31 put it on the invoice itself; accounts pinned to one
    # still send that shape.
    return _id_of(invoice.get("subscription"))


@dataclass(frozen=True)
class SubscriptionSnapshot:
    """A Stripe subscription as one event (or one API read) shows it."""

    id: str
    customer_id: str
    status: str
    price_lookup_key: str
    current_period_end: datetime | None
    cancel_at_period_end: bool

    @property
    def grants_plan(self) -> bool:
        return self.status in GRANTING_STATUSES


class UnusableEvent(ValueError):
    """An event billing cannot act on; it is acknowledged and recorded with this message."""


def subscription_from(obj: Mapping[str, Any], plans: Plans) -> SubscriptionSnapshot:
    """The snapshot in a subscription object; its price is the item whose lookup key has a plan."""
    sub_id, status = obj.get("id"), obj.get("status")
    if not (isinstance(sub_id, str) and sub_id and isinstance(status, str)):
        raise UnusableEvent("the subscription has no id or status")
    items = obj.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    rows = [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
    chosen = next((item for item in rows if plans.plan_for(_lookup_key(item))), None)
    if chosen is None and rows:
        chosen = rows[0]
    period_end = chosen.get("current_period_end") if chosen is not None else None
    if period_end is None:
        # Before API version 2025-03-31 the period lived on the subscription.
        period_end = obj.get("current_period_end")
    return SubscriptionSnapshot(
        id=sub_id,
        customer_id=_id_of(obj.get("customer")),
        status=status,
        price_lookup_key=_lookup_key(chosen) if chosen is not None else "",
        current_period_end=_time(period_end),
        cancel_at_period_end=obj.get("cancel_at_period_end") is True,
    )


def past_due_after(previous: bool, status: str) -> bool:
    """The past-due flag after a subscription snapshot.

    `past_due` sets it; an active or trialing snapshot keeps it (Stripe may still report
    `active` while a failed invoice is retried; `invoice.paid` clears it); an ended
    subscription owes nothing billing acts on.
    """
    if status == PAST_DUE:
        return True
    if status in GRANTING_STATUSES:
        return previous
    return False


@dataclass(frozen=True)
class Plans:
    """The plan names (cheapest first), the plan without a subscription, and price lookup keys.

    A lookup key equal to a plan's name maps to that plan; `extra_keys` adds more
    (AIAS_STRIPE_PRICE_PLANS, e.g. `pro_yearly=pro`).
    """

    names: tuple[str, ...]
    default: str
    extra_keys: Mapping[str, str]

    @classmethod
    def build(cls, names: Sequence[str], default: str, extra: str) -> Plans:
        """Parses `key=plan,key=plan`; ValueError names the first bad entry."""
        keys: dict[str, str] = {}
        for entry in filter(None, (part.strip() for part in extra.split(","))):
            key, sep, plan = (part.strip() for part in entry.partition("="))
            if not sep or not key or not plan:
                raise ValueError(f"entry {entry!r} is not lookup_key=plan")
            if plan not in names:
                raise ValueError(f"entry {entry!r} names no plan; plans are {', '.join(names)}")
            keys[key] = plan
        return cls(tuple(names), default, keys)

    def plan_for(self, lookup_key: str) -> str | None:
        if lookup_key in self.extra_keys:
            return self.extra_keys[lookup_key]
        return lookup_key if lookup_key in self.names else None

    def best(self, plans: Iterable[str]) -> str:
        """The most expensive of `plans`, or the default plan when there is none."""
        ranked = [plan for plan in plans if plan in self.names]
        return max(ranked, key=self.names.index, default=self.default)

    def decided_by(self, subscriptions: Iterable[tuple[str, str]]) -> str:
        """The plan that (status, plan) pairs grant together: the best one still granted."""
        return self.best(plan for status, plan in subscriptions if status in GRANTING_STATUSES)

    def current(self, snapshots: Sequence[SubscriptionSnapshot]) -> SubscriptionSnapshot | None:
        """The subscription that decides the plan, else the first (Stripe lists newest first)."""
        granting = [
            (self.names.index(plan), snapshot)
            for snapshot in snapshots
            if snapshot.grants_plan and (plan := self.plan_for(snapshot.price_lookup_key))
        ]
        if granting:
            return max(granting, key=lambda ranked: ranked[0])[1]
        return snapshots[0] if snapshots else None


def _lookup_key(item: Mapping[str, Any]) -> str:
    price = item.get("price")
    key = price.get("lookup_key") if isinstance(price, dict) else None
    return key if isinstance(key, str) else ""


def _id_of(value: Any) -> str:
    """An object id whether Stripe sent the id or the expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def _time(value: Any) -> datetime | None:
    """A Unix timestamp as a datetime; None when it is not one."""
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None
