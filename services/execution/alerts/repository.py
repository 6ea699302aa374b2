"""Queries of the alert tables; the caller's transaction decides when to commit."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aias.core.pagination import PageCursor, newest_first
from aias.services.execution.alerts.domain import DeliveryState
from aias.services.execution.alerts.models import (
    AlertAttemptRow,
    AlertDestinationRow,
    AlertEventRow,
)


class AlertRepository:
    """One tenant's destinations, alerts and attempts (inside `Database.tenant`)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, *rows: object) -> None:
        """Inserts the rows and reads back their server defaults."""
        self._session.add_all(rows)
        await self._session.flush()
        for row in rows:
            await self._session.refresh(row)

    async def count_destinations(self, tenant_id: uuid.UUID) -> int:
        """How many destinations the tenant has, locked against concurrent creation."""
        await self._session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"count:alert_destinations:{tenant_id}"},
        )
        query = select(func.count()).where(AlertDestinationRow.delete_time.is_(None))
        return int((await self._session.execute(query)).scalar_one())

    async def destination(
        self, destination_id: uuid.UUID, *, for_update: bool = False
    ) -> AlertDestinationRow | None:
        """The destination unless it is deleted; `for_update` locks it until the transaction
        ends."""
        query = select(AlertDestinationRow).where(
            AlertDestinationRow.id == destination_id, AlertDestinationRow.delete_time.is_(None)
        )
        if for_update:
            query = query.with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def destinations(
        self, cursor: PageCursor | None, limit: int
    ) -> list[AlertDestinationRow]:
        live = select(AlertDestinationRow).where(AlertDestinationRow.delete_time.is_(None))
        query = newest_first(live, AlertDestinationRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())

    async def queue(
        self, tenant_id: uuid.UUID, event_type: str, data: dict[str, Any], dedupe_key: str | None
    ) -> int:
        """One pending alert for each live destination subscribed to `event_type`, but none for
        a destination that has `dedupe_key` already; returns how many were queued."""
        subscribed = select(AlertDestinationRow.id).where(
            AlertDestinationRow.delete_time.is_(None),
            AlertDestinationRow.events.any_() == event_type,
        )
        destinations = list((await self._session.execute(subscribed)).scalars())
        if not destinations:
            return 0
        rows = [
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant_id,
                "destination_id": destination_id,
                "event_type": event_type,
                "data": data,
                "dedupe_key": dedupe_key,
            }
            for destination_id in destinations
        ]
        queued = await self._session.execute(
            insert(AlertEventRow)
            .values(rows)
            .on_conflict_do_nothing(constraint="alert_events_dedupe")
            .returning(AlertEventRow.id)
        )
        return len(queued.all())

    async def give_up_pending(self, destination_id: uuid.UUID, error: str) -> None:
        """Fails the destination's alerts that are still waiting to be sent."""
        await self._session.execute(
            update(AlertEventRow)
            .where(
                AlertEventRow.destination_id == destination_id,
                AlertEventRow.state == DeliveryState.PENDING.value,
            )
            .values(state=DeliveryState.FAILED.value, last_error=error)
        )

    async def deliveries(
        self, destination_id: uuid.UUID | None, cursor: PageCursor | None, limit: int
    ) -> list[AlertEventRow]:
        query = select(AlertEventRow)
        if destination_id is not None:
            query = query.where(AlertEventRow.destination_id == destination_id)
        query = newest_first(query, AlertEventRow, cursor, limit)
        return list((await self._session.execute(query)).scalars())

    async def attempts_of(
        self, event_ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, list[AlertAttemptRow]]:
        """The attempts of each alert, oldest first, in one query."""
        found: dict[uuid.UUID, list[AlertAttemptRow]] = {event_id: [] for event_id in event_ids}
        if event_ids:
            query = (
                select(AlertAttemptRow)
                .where(AlertAttemptRow.event_id.in_(list(event_ids)))
                .order_by(AlertAttemptRow.event_id, AlertAttemptRow.attempt, AlertAttemptRow.id)
            )
            for row in (await self._session.execute(query)).scalars():
                found[row.event_id].append(row)
        return found

    async def to_send(
        self, event_id: uuid.UUID
    ) -> tuple[AlertEventRow, AlertDestinationRow] | None:
        """A pending alert and its destination, unless the alert was settled meanwhile."""
        query = (
            select(AlertEventRow, AlertDestinationRow)
            .join(AlertDestinationRow, AlertDestinationRow.id == AlertEventRow.destination_id)
            .where(
                AlertEventRow.id == event_id,
                AlertEventRow.state == DeliveryState.PENDING.value,
            )
        )
        row = (await self._session.execute(query)).one_or_none()
        return (row[0], row[1]) if row is not None else None

    def add_attempt(self, row: AlertAttemptRow) -> None:
        """Adds an attempt, written with the transaction's other changes."""
        self._session.add(row)

    async def locked_event(self, event_id: uuid.UUID) -> AlertEventRow | None:
        query = select(AlertEventRow).where(AlertEventRow.id == event_id).with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()


class OutboxRepository:
    """Every tenant's alerts, on the senders' path (inside `Database.system(ALERT_OUTBOX)`)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim_due(self, limit: int, lease: timedelta) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Takes up to `limit` due alerts (id, tenant), longest-waiting first, for `lease`.

        SKIP LOCKED lets senders claim at once without waiting for each other; pushing the next
        attempt time ahead by the lease keeps the others off them once this transaction commits.
        An alert whose sender died is due again when the lease ends.
        """
        due = (
            select(AlertEventRow.id)
            .where(
                AlertEventRow.state == DeliveryState.PENDING.value,
                AlertEventRow.next_attempt_time <= func.now(),
            )
            .order_by(AlertEventRow.next_attempt_time)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claimed = await self._session.execute(
            update(AlertEventRow)
            .where(AlertEventRow.id.in_(due))
            .values(next_attempt_time=func.now() + lease)
            .returning(AlertEventRow.id, AlertEventRow.tenant_id)
        )
        return [(row.id, row.tenant_id) for row in claimed]

    async def prune(self, older_than: timedelta, batch: int) -> int:
        """Deletes up to `batch` settled alerts (and their attempts) raised before `older_than`
        ago."""
        old = (
            select(AlertEventRow.id)
            .where(
                AlertEventRow.state != DeliveryState.PENDING.value,
                AlertEventRow.create_time < func.now() - older_than,
            )
            .limit(batch)
            # Every sender prunes now and then; each takes rows the others are not deleting.
            .with_for_update(skip_locked=True)
        )
        deleted = await self._session.execute(
            delete(AlertEventRow).where(AlertEventRow.id.in_(old)).returning(AlertEventRow.id)
        )
        return len(deleted.all())
