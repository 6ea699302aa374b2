"""Queries of the `tenancy` schema; the caller's transaction decides when to commit."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aias.core.pagination import PageCursor, newest_first
from aias.services.tenancy.models import ApiKeyRow, MemberRow, TenantRow, UsageRow


class TenancyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, row: TenantRow | ApiKeyRow | MemberRow) -> None:
        self._session.add(row)
        await self._session.flush()
        await self._session.refresh(row)

    async def tenant(self, tenant_id: uuid.UUID, *, lock: bool = False) -> TenantRow | None:
        query = select(TenantRow).where(TenantRow.id == tenant_id)
        if lock:
            query = query.with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def tenants(self, cursor: PageCursor | None, limit: int) -> list[TenantRow]:
        query = newest_first(select(TenantRow), TenantRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())

    async def active_key(self, key_id: uuid.UUID) -> ApiKeyRow | None:
        return (
            await self._session.execute(
                select(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.revoke_time.is_(None))
            )
        ).scalar_one_or_none()

    async def active_keys(self, cursor: PageCursor | None, limit: int) -> list[ApiKeyRow]:
        query = select(ApiKeyRow).where(ApiKeyRow.revoke_time.is_(None))
        return list(
            (await self._session.execute(newest_first(query, ApiKeyRow, cursor, limit))).scalars()
        )

    async def count_active_keys(self, role: str) -> int:
        query = select(func.count()).where(ApiKeyRow.role == role, ApiKeyRow.revoke_time.is_(None))
        return int((await self._session.execute(query)).scalar_one())

    async def touch_key(self, key_id: uuid.UUID) -> None:
        await self._session.execute(
            update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_time=func.now())
        )

    async def revoke_key(self, key_id: uuid.UUID) -> None:
        await self._session.execute(
            update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(revoke_time=func.now())
        )

    async def revoke_member_keys(self, member_id: uuid.UUID) -> None:
        await self._session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.member_id == member_id, ApiKeyRow.revoke_time.is_(None))
            .values(revoke_time=func.now())
        )

    async def member(self, member_id: uuid.UUID) -> MemberRow | None:
        return await self._session.get(MemberRow, member_id)

    async def member_by_email(self, email: str) -> MemberRow | None:
        query = select(MemberRow).where(MemberRow.email == email)
        return (await self._session.execute(query)).scalar_one_or_none()

    async def members(self, cursor: PageCursor | None, limit: int) -> list[MemberRow]:
        query = newest_first(select(MemberRow), MemberRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())

    async def count_members(self, role: str) -> int:
        query = select(func.count()).where(MemberRow.role == role)
        return int((await self._session.execute(query)).scalar_one())

    async def delete(self, row: MemberRow | TenantRow) -> None:
        await self._session.delete(row)
        await self._session.flush()

    async def usage(self, tenant_id: uuid.UUID, metric: str, period_start: datetime) -> int:
        query = select(UsageRow.value).where(
            UsageRow.tenant_id == tenant_id,
            UsageRow.metric == metric,
            UsageRow.period_start == period_start,
        )
        return int((await self._session.execute(query)).scalar_one_or_none() or 0)

    async def lock_usage(self, tenant_id: uuid.UUID, metric: str, period_start: datetime) -> int:
        """The counter's value, locked until the transaction ends (created at 0 when new)."""
        await self._session.execute(
            insert(UsageRow)
            .values(tenant_id=tenant_id, metric=metric, period_start=period_start, value=0)
            .on_conflict_do_nothing()
        )
        query = (
            select(UsageRow.value)
            .where(
                UsageRow.tenant_id == tenant_id,
                UsageRow.metric == metric,
                UsageRow.period_start == period_start,
            )
            .with_for_update()
        )
        return int((await self._session.execute(query)).scalar_one())

    async def set_usage(
        self, tenant_id: uuid.UUID, metric: str, period_start: datetime, value: int
    ) -> None:
        await self._session.execute(
            update(UsageRow)
            .where(
                UsageRow.tenant_id == tenant_id,
                UsageRow.metric == metric,
                UsageRow.period_start == period_start,
            )
            .values(value=value)
        )
