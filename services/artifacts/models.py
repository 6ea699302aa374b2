"""SQLAlchemy models of the `artifacts` schema."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, LargeBinary, MetaData, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    metadata = MetaData(schema="artifacts")


class ArtifactRow(Base):
    __tablename__ = "artifacts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID]
    run_id: Mapped[uuid.UUID]
    # None for artifacts stored before the workflow was recorded.
    workflow_id: Mapped[uuid.UUID | None]
    step_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    expire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BlobRow(Base):
    """One stored content per tenant and digest, with how many artifacts name it."""

    __tablename__ = "blobs"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    refcount: Mapped[int] = mapped_column(server_default="0")
    create_time: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    unreferenced_time: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # BLAKE3 of the content (hex), which whole reads are checked against; None for blobs
    # stored before it was recorded (those are checked against the SHA-256).
    blake3: Mapped[str | None] = mapped_column(String(64))
    # Content small enough to be kept in the row (see ArtifactsService.store); loaded only
    # when asked for.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
