"""Queries of the `tenancy` schema; the caller's transaction decides when to commit."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.tenancy.models import ApiKeyRow, TenantRow


class TenancyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, row: TenantRow | ApiKeyRow) -> None:
        self._session.add(row)
        await self._session.flush()
        await self._session.refresh(row)

    async def tenant(self, tenant_id: uuid.UUID) -> TenantRow | None:
        return await self._session.get(TenantRow, tenant_id)

    async def active_key(self, key_id: uuid.UUID) -> ApiKeyRow | None:
        return (
            await self._session.execute(
                select(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.revoke_time.is_(None))
            )
        ).scalar_one_or_none()
