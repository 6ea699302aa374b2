"""SQLAlchemy models of the `execution` schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    LargeBinary,
    MetaData,
    String,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TIMESTAMP = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(schema="execution")


class WorkflowRow(Base):
    __tablename__ = "workflows"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    name: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool]
    current_version: Mapped[int]
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    update_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    # Soft deletion: runs, logs and artifacts keep pointing at the workflow and its versions.
    delete_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)


class WorkflowVersionRow(Base):
    __tablename__ = "workflow_versions"

    workflow_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("execution.workflows.id"), primary_key=True
    )
    version: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())


class WebhookEndpointRow(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    workflow_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("execution.workflows.id"))
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    enabled: Mapped[bool]
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    # The secret a rotation replaced, accepted until its expire time.
    previous_secret_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_expire_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    # The Standard Webhooks key deliveries must be signed with. Kept as is, not hashed: checking
    # an HMAC needs the key itself.
    signing_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    delete_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    workflow_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("execution.workflows.id"))
    workflow_version: Mapped[int]
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("execution.webhook_endpoints.id")
    )
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # SHA-256 of the body, so a repeated idempotency key with another body is told apart.
    payload_sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
    error: Mapped[str] = mapped_column(default="")
    available_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expire_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    start_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    end_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    retry_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("execution.runs.id"))
    # The W3C traceparent of the request that queued the run; the worker's spans continue it.
    traceparent: Mapped[str | None] = mapped_column(String(64))


class StepLogRow(Base):
    __tablename__ = "step_logs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("execution.runs.id"))
    step_index: Mapped[int]
    step_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int]
    start_time: Mapped[datetime] = mapped_column(TIMESTAMP)
    end_time: Mapped[datetime] = mapped_column(TIMESTAMP)
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    message: Mapped[str]
    output_bytes: Mapped[int] = mapped_column(BigInteger)
    output_sha256: Mapped[str] = mapped_column(String(64))
    error: Mapped[str]


class WebhookDeliveryRow(Base):
    """One delivery to an endpoint and what it was answered, for the tenant's diagnostics."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("execution.webhook_endpoints.id"))
    # When the delivery was received (named for the shared keyset pagination).
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    http_status: Mapped[int]
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[uuid.UUID | None]
