"""SQLAlchemy models of the `tenancy` schema."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, LargeBinary, MetaData, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TIMESTAMP = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(schema="tenancy")


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    plan_change_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    # Limit name -> value (-1 unlimited); only what the operator overrode.
    limit_overrides: Mapped[dict[str, int]] = mapped_column(JSONB, default=dict)
    allowed_step_types: Mapped[list[str] | None] = mapped_column(JSONB)


class MemberRow(Base):
    __tablename__ = "members"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenancy.tenants.id", ondelete="CASCADE")
    )
    email: Mapped[str] = mapped_column(String(254))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenancy.tenants.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(TIMESTAMP, server_default=func.now())
    revoke_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    member_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenancy.members.id", ondelete="SET NULL")
    )
    last_used_time: Mapped[datetime | None] = mapped_column(TIMESTAMP)


class UsageRow(Base):
    """Metered usage of one tenant, metric and period (storage uses one fixed period)."""

    __tablename__ = "usage_counters"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(TIMESTAMP, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
