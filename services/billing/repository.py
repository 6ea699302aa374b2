"""Queries of the `billing` schema; the caller's transaction decides when to commit."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.domain import VerifiedEvent
from services.billing.models import StripeEventRow


class BillingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record_event(self, event: VerifiedEvent) -> bool:
        """Records an event id once; False when it was already recorded."""
        result = await self._session.execute(
            insert(StripeEventRow)
            .values(id=event.id, type=event.type, created=event.created, payload=event.payload)
            .on_conflict_do_nothing(index_elements=[StripeEventRow.id])
            .returning(StripeEventRow.id)
        )
        return result.scalar_one_or_none() is not None
