"""Queries of the `billing` schema; the caller's transaction decides when to commit."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, exists, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aias.core.pagination import PageCursor, newest_first
from aias.services.billing.domain import (
    GRANTING_STATUSES,
    Outcome,
    StripeEvent,
    SubscriptionSnapshot,
)
from aias.services.billing.models import CustomerRow, DeliveryRow, StripeEventRow, SubscriptionRow

# Serialises linking a customer with recording its events while it is still unlinked, so no
# event of a customer being linked slips between the two.
_LOCK_CUSTOMER = text("SELECT pg_advisory_xact_lock(hashtextextended(:customer, 0))")


class BillingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    # -- events -------------------------------------------------------------------------------

    async def record_event(self, event: StripeEvent) -> bool:
        """Records an event id once; False when it was already recorded.

        A concurrent transaction inserting the same id makes this wait for its outcome, so of
        two simultaneous deliveries exactly one sees True.
        """
        result = await self._session.execute(
            insert(StripeEventRow)
            .values(
                id=event.id,
                type=event.type,
                created=event.created,
                payload=event.payload,
                customer_id=event.customer_id or None,
            )
            .on_conflict_do_nothing(index_elements=[StripeEventRow.id])
            .returning(StripeEventRow.id)
        )
        return result.scalar_one_or_none() is not None

    async def earlier_events(
        self, customer_id: str, types: Collection[str], but: str
    ) -> list[StripeEventRow]:
        """A customer's recorded events of `types` other than `but`, oldest first."""
        query = (
            select(StripeEventRow)
            .where(
                StripeEventRow.customer_id == customer_id,
                StripeEventRow.type.in_(types),
                StripeEventRow.id != but,
            )
            .order_by(StripeEventRow.created, StripeEventRow.receive_time)
        )
        return list((await self._session.execute(query)).scalars())

    # -- customers ----------------------------------------------------------------------------

    async def lock_customer(self, customer_id: str) -> None:
        await self._session.execute(_LOCK_CUSTOMER, {"customer": customer_id})

    async def tenant_of_customer(self, customer_id: str) -> uuid.UUID | None:
        query = select(CustomerRow.tenant_id).where(CustomerRow.id == customer_id)
        return (await self._session.execute(query)).scalar_one_or_none()

    async def customers(self) -> list[tuple[str, uuid.UUID]]:
        """Every (customer, tenant) the transaction may see, oldest link first."""
        query = select(CustomerRow.id, CustomerRow.tenant_id).order_by(CustomerRow.create_time)
        return [(row.id, row.tenant_id) for row in await self._session.execute(query)]

    async def customer_of_tenant(
        self, tenant_id: uuid.UUID, *, lock: bool = False
    ) -> CustomerRow | None:
        query = select(CustomerRow).where(CustomerRow.tenant_id == tenant_id)
        if lock:
            query = query.with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def link_customer(self, customer_id: str, tenant_id: uuid.UUID) -> bool:
        """Links a customer to a tenant; False when the customer or the tenant had a link."""
        result = await self._session.execute(
            insert(CustomerRow)
            .values(id=customer_id, tenant_id=tenant_id)
            .on_conflict_do_nothing()
            .returning(CustomerRow.id)
        )
        return result.scalar_one_or_none() is not None

    async def mark_synced(self, tenant_id: uuid.UUID, revision: int) -> None:
        await self._session.execute(
            update(CustomerRow)
            .where(CustomerRow.tenant_id == tenant_id)
            .values(synced_revision=func.greatest(CustomerRow.synced_revision, revision))
        )

    # -- subscriptions ------------------------------------------------------------------------

    async def save_subscription(
        self,
        tenant_id: uuid.UUID,
        snapshot: SubscriptionSnapshot,
        plan: str,
        past_due: bool,
        event_time: datetime,
    ) -> bool:
        """Stores a snapshot unless the stored one comes from a newer event; True if stored."""
        values = {
            "tenant_id": tenant_id,
            "customer_id": snapshot.customer_id,
            "status": snapshot.status,
            "plan": plan,
            "price_lookup_key": snapshot.price_lookup_key,
            "current_period_end": snapshot.current_period_end,
            "cancel_at_period_end": snapshot.cancel_at_period_end,
            "past_due": past_due,
            "last_event_time": event_time,
        }
        row = insert(SubscriptionRow).values(id=snapshot.id, **values)
        upsert = row.on_conflict_do_update(
            index_elements=[SubscriptionRow.id],
            set_={**values, "update_time": func.now()},
            where=SubscriptionRow.last_event_time <= row.excluded.last_event_time,
        ).returning(SubscriptionRow.id)
        return (await self._session.execute(upsert)).scalar_one_or_none() is not None

    async def past_due_of(self, subscription_id: str) -> bool | None:
        """The stored past-due flag; None when the subscription is not known."""
        query = select(SubscriptionRow.past_due).where(SubscriptionRow.id == subscription_id)
        return (await self._session.execute(query)).scalar_one_or_none()

    async def subscriptions(self, tenant_id: uuid.UUID) -> list[SubscriptionRow]:
        """A tenant's subscriptions, newest news first, as the database has them now."""
        query = (
            select(SubscriptionRow)
            .where(SubscriptionRow.tenant_id == tenant_id)
            .order_by(SubscriptionRow.last_event_time.desc(), SubscriptionRow.id)
            # Upserts above bypass the session's identity map; reload what it holds.
            .execution_options(populate_existing=True)
        )
        return list((await self._session.execute(query)).scalars())

    async def past_due_now(self, tenant_id: uuid.UUID) -> bool:
        """Whether a subscription that grants the tenant a plan is past due, as stored now."""
        query = select(
            exists().where(
                SubscriptionRow.tenant_id == tenant_id,
                SubscriptionRow.past_due.is_(True),
                SubscriptionRow.status.in_(GRANTING_STATUSES),
            )
        )
        return bool((await self._session.execute(query)).scalar_one())

    async def clear_past_due_alert(self, tenant_id: uuid.UUID, key: str) -> None:
        """Clears the waiting alert, unless a newer one replaced it meanwhile."""
        await self._session.execute(
            update(CustomerRow)
            .where(CustomerRow.tenant_id == tenant_id, CustomerRow.past_due_alert == key)
            .values(past_due_alert=None)
        )

    async def set_past_due(
        self, subscription_id: str, past_due: bool, event_time: datetime
    ) -> bool:
        """Sets the flag unless a newer event already spoke; True if it was set."""
        result = await self._session.execute(
            update(SubscriptionRow)
            .where(
                SubscriptionRow.id == subscription_id,
                SubscriptionRow.last_event_time <= event_time,
            )
            .values(past_due=past_due, last_event_time=event_time, update_time=func.now())
            .returning(SubscriptionRow.id)
        )
        return result.scalar_one_or_none() is not None

    async def end_other_subscriptions(
        self, tenant_id: uuid.UUID, keep: Collection[str], event_time: datetime
    ) -> None:
        """Marks subscriptions Stripe no longer lists as canceled."""
        await self._session.execute(
            update(SubscriptionRow)
            .where(SubscriptionRow.tenant_id == tenant_id, SubscriptionRow.id.not_in(keep))
            .values(status="canceled", past_due=False, last_event_time=event_time)
        )

    # -- deliveries ---------------------------------------------------------------------------

    async def add_delivery(
        self,
        tenant_id: uuid.UUID | None,
        event_id: str,
        event_type: str,
        outcome: Outcome,
        error: str,
    ) -> uuid.UUID:
        row = DeliveryRow(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            event_id=event_id,
            event_type=event_type,
            outcome=outcome.value,
            error=error,
        )
        self._session.add(row)
        await self._session.flush()
        return row.id

    async def note_delivery_error(self, delivery_id: uuid.UUID, error: str) -> None:
        await self._session.execute(
            update(DeliveryRow).where(DeliveryRow.id == delivery_id).values(error=error)
        )

    async def prune_rejected(self, keep: int) -> None:
        """Deletes all but the newest `keep` rejected deliveries: anyone can send those."""
        rejected = (
            DeliveryRow.outcome == Outcome.REJECTED.value,
            DeliveryRow.tenant_id.is_(None),
        )
        oldest_kept = (
            await self._session.execute(
                select(DeliveryRow.create_time, DeliveryRow.id)
                .where(*rejected)
                .order_by(DeliveryRow.create_time.desc(), DeliveryRow.id.desc())
                .offset(keep - 1)
                .limit(1)
            )
        ).first()
        if oldest_kept is None:
            return
        await self._session.execute(
            delete(DeliveryRow).where(
                *rejected,
                tuple_(DeliveryRow.create_time, DeliveryRow.id)
                < tuple_(oldest_kept.create_time, oldest_kept.id),
            )
        )

    async def deliveries(
        self, tenant_id: uuid.UUID | None, cursor: PageCursor | None, limit: int
    ) -> list[DeliveryRow]:
        """One tenant's deliveries, or (None) all the transaction may see; newest first."""
        query = select(DeliveryRow)
        if tenant_id is not None:
            query = query.where(DeliveryRow.tenant_id == tenant_id)
        query = newest_first(query, DeliveryRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())
