"""SQLAlchemy models of the `billing` schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Integer, MetaData, String, Text, Uuid, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TIMESTAMP = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(schema="billing")


class StripeEventRow(Base):
    """Every Stripe event id processed, once. Not tenant-scoped: an event is recorded before
    (and whether or not) it maps to a tenant."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(TIMESTAMP)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    receive_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    # The customer the event is about, so linking a customer can replay what came before.
    customer_id: Mapped[str | None] = mapped_column(String(255))


class CustomerRow(Base):
    """A tenant's Stripe customer, and the plan its subscriptions decide."""

    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    # "" until the subscriptions first decide a plan.
    plan: Mapped[str] = mapped_column(String(64), default="")
    # The time of the newest Stripe state behind `plan`: tenancy's event time for it.
    plan_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    # Bumped on every decision; tenancy has applied the plan when synced_revision caught up.
    plan_revision: Mapped[int] = mapped_column(Integer, default=0)
    synced_revision: Mapped[int] = mapped_column(Integer, default=0)
    # The dedupe key of a billing.past_due alert execution has not taken yet; None when none
    # waits. Set in the transaction that flags the tenant past due, cleared once raised.
    past_due_alert: Mapped[str | None] = mapped_column(String(255))


class SubscriptionRow(Base):
    """A tenant's Stripe subscription as the newest event (or reconcile) showed it."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    customer_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    # "" when the price's lookup key maps to no plan.
    plan: Mapped[str] = mapped_column(String(64))
    price_lookup_key: Mapped[str] = mapped_column(String(255))
    current_period_end: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean)
    past_due: Mapped[bool] = mapped_column(Boolean)
    # Older events than this are out of order and change nothing.
    last_event_time: Mapped[datetime] = mapped_column(TIMESTAMP)
    update_time: Mapped[datetime] = mapped_column(
        TIMESTAMP, server_default=func.now(), onupdate=func.now()
    )


class DeliveryRow(Base):
    """One webhook delivery, whatever became of it, for the diagnostics page."""

    __tablename__ = "deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # None for deliveries that belong to no tenant (rejected, unknown customer).
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(255))
    # When the delivery was received (named for the shared keyset pagination).
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
