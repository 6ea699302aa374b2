"""Queries of the `tenancy` schema; the caller's transaction decides when to commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from aias.core.pagination import PageCursor, newest_first
from aias.services.tenancy.models import ApiKeyRow, MemberRow, TenantRow, UsageRow

# Reservations and releases of usage run for every upload and every block of runs, so their
# statements are written once as SQL (building them with the ORM cost more CPU than running
# them) and take as few round trips as they can.
# The tenant's plan and overrides, and its counter's value locked until the transaction ends,
# in one round trip; `used` is NULL while the tenant has no counter for the metric yet.
_TENANT_AND_LOCKED_USAGE = text("""
    SELECT t.plan, t.limit_overrides, t.allowed_step_types,
           (SELECT u.value FROM tenancy.usage_counters AS u
            WHERE u.tenant_id = t.id AND u.metric = :metric AND u.period_start = :period
            FOR UPDATE) AS used
    FROM tenancy.tenants AS t WHERE t.id = :tenant""")
_ADD_USAGE = text("""
    INSERT INTO tenancy.usage_counters (tenant_id, metric, period_start, value)
    VALUES (:tenant, :metric, :period, 0) ON CONFLICT DO NOTHING""")
_SET_USAGE = text("""
    UPDATE tenancy.usage_counters SET value = :value
    WHERE tenant_id = :tenant AND metric = :metric AND period_start = :period""")
_RELEASE_USAGE = text("""
    UPDATE tenancy.usage_counters SET value = greatest(0, value - :amount)
    WHERE tenant_id = :tenant AND metric = :metric AND period_start = :period
    RETURNING value""")


@dataclass(frozen=True)
class LockedUsage:
    """A counter's value, locked by the transaction, beside what the tenant's limits come from."""

    plan: str
    limit_overrides: dict[str, int] | None
    allowed_step_types: list[str] | None
    used: int


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

    async def lock_usage(
        self, tenant_id: uuid.UUID, metric: str, period_start: datetime
    ) -> LockedUsage | None:
        """The tenant's limits and the counter's value, the counter locked until the transaction
        ends (created at 0 when new); None when there is no such tenant."""
        keys = {"tenant": tenant_id, "metric": metric, "period": period_start}
        row = (await self._session.execute(_TENANT_AND_LOCKED_USAGE, keys)).one_or_none()
        if row is not None and row.used is None:  # the tenant's first use of the metric
            await self._session.execute(_ADD_USAGE, keys)
            row = (await self._session.execute(_TENANT_AND_LOCKED_USAGE, keys)).one()
        if row is None:
            return None
        return LockedUsage(row.plan, row.limit_overrides, row.allowed_step_types, int(row.used))

    async def set_usage(
        self, tenant_id: uuid.UUID, metric: str, period_start: datetime, value: int
    ) -> None:
        keys = {"tenant": tenant_id, "metric": metric, "period": period_start, "value": value}
        await self._session.execute(_SET_USAGE, keys)

    async def release_usage(
        self, tenant_id: uuid.UUID, metric: str, period_start: datetime, amount: int
    ) -> int:
        """Takes `amount` off the counter, down to 0 at most; returns what is left."""
        keys = {"tenant": tenant_id, "metric": metric, "period": period_start, "amount": amount}
        left = (await self._session.execute(_RELEASE_USAGE, keys)).scalar_one_or_none()
        return int(left or 0)
