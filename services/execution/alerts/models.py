"""SQLAlchemy models of the alert tables in the `execution` schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Identity, LargeBinary, String, func
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from aias.services.execution.models import TIMESTAMP, Base


class AlertDestinationRow(Base):
    """A URL a tenant's alerts of some event types are posted to."""

    __tablename__ = "alert_destinations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    url: Mapped[str]
    events: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    # The Standard Webhooks key alerts are signed with. Kept as is, not hashed: signing needs it.
    signing_key: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    # Soft deletion: the deliveries made to it keep pointing at it.
    delete_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)


class AlertEventRow(Base):
    """One alert on its way to one destination (the outbox); its id is the `webhook-id`."""

    __tablename__ = "alert_events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    destination_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("execution.alert_destinations.id"))
    event_type: Mapped[str] = mapped_column(String(32))
    # The body's `data`; the type and the time it was raised complete the body.
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Raising an alert with a key a destination has already is a no-op for that destination.
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    # Also the claim's lease: a sender pushes it ahead while it holds the alert.
    next_attempt_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    last_attempt_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    last_http_status: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str] = mapped_column(default="")


class AlertAttemptRow(Base):
    """One try to deliver an alert and what became of it."""

    __tablename__ = "alert_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("execution.alert_events.id"))
    attempt: Mapped[int]
    attempt_time: Mapped[datetime] = mapped_column(TIMESTAMP)
    http_status: Mapped[int]
    error: Mapped[str]
    duration_ms: Mapped[int] = mapped_column(BigInteger)
