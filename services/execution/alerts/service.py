"""Alert use cases: destinations, the delivery record, and raising alerts (by RPC and on quota)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aias.core import signing
from aias.core.db import Database, parse_uuid
from aias.core.errors import FailedPrecondition, NotFound
from aias.core.pagination import decode_token, next_page_token, page_size
from aias.core.stored import storable_json
from aias.services.execution.alerts.domain import (
    MAX_DESTINATIONS,
    NEAR_PERCENT,
    QUOTA_EXCEEDED,
    QUOTA_NEAR,
    check_dedupe_key,
    check_event_type,
    rfc3339,
    validate_events,
    validate_url,
)
from aias.services.execution.alerts.models import (
    AlertAttemptRow,
    AlertDestinationRow,
    AlertEventRow,
)
from aias.services.execution.alerts.repository import AlertRepository
from aias.services.execution.service import Page
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb

log = logging.getLogger(__name__)

DESTINATION_DELETED = "DESTINATION_DELETED: the destination was deleted before the alert went out"


@dataclass(frozen=True)
class DeliveryView:
    """An alert on its way to one destination, with every attempt so far."""

    event: AlertEventRow
    attempts: list[AlertAttemptRow]


def _not_found(destination_id: uuid.UUID) -> NotFound:
    return NotFound(
        "ALERT_DESTINATION_NOT_FOUND", f"alert destination {destination_id} does not exist"
    )


class AlertService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_destination(
        self, tenant_id: uuid.UUID, url: str, events: list[str]
    ) -> tuple[AlertDestinationRow, str]:
        """The destination and its signing secret (`whsec_...`), which only this answer shows.

        The key is stored as is, not hashed: every alert is signed with it.
        """
        url, events = validate_url(url), validate_events(events)
        secret, key = signing.generate_secret()
        async with self._db.tenant(tenant_id) as session:
            repo = AlertRepository(session)
            count = await repo.count_destinations(tenant_id)
            if count >= MAX_DESTINATIONS:
                raise FailedPrecondition(
                    "TOO_MANY_ALERT_DESTINATIONS",
                    f"the tenant has {count} alert destinations, the most a tenant may have; "
                    "delete one first",
                )
            row = AlertDestinationRow(
                id=uuid.uuid4(), tenant_id=tenant_id, url=url, events=events, signing_key=key
            )
            await repo.add(row)
        return row, secret

    async def list_destinations(
        self, tenant_id: uuid.UUID, size: int, token: str
    ) -> Page[AlertDestinationRow]:
        limit, cursor = page_size(size), decode_token(token)
        async with self._db.tenant(tenant_id) as session:
            rows = await AlertRepository(session).destinations(cursor, limit + 1)
        return Page(rows[:limit], next_page_token(rows, limit))

    async def delete_destination(self, tenant_id: uuid.UUID, destination_id: str) -> None:
        """Soft-deletes the destination and gives up its pending alerts; the record stays."""
        did = parse_uuid(destination_id, "destination_id")
        async with self._db.tenant(tenant_id) as session:
            repo = AlertRepository(session)
            row = await repo.destination(did, for_update=True)
            if row is None:
                raise _not_found(did)
            row.delete_time = datetime.now(UTC)
            await repo.give_up_pending(did, DESTINATION_DELETED)

    async def list_deliveries(
        self, tenant_id: uuid.UUID, destination_id: str, size: int, token: str
    ) -> Page[DeliveryView]:
        did = parse_uuid(destination_id, "destination_id") if destination_id else None
        scope = str(did or "")
        limit, cursor = page_size(size), decode_token(token, scope)
        async with self._db.tenant(tenant_id) as session:
            repo = AlertRepository(session)
            rows = await repo.deliveries(did, cursor, limit + 1)
            attempts = await repo.attempts_of([row.id for row in rows[:limit]])
        views = [DeliveryView(row, attempts[row.id]) for row in rows[:limit]]
        return Page(views, next_page_token(rows, limit, scope))

    async def raise_alert(
        self, tenant_id: uuid.UUID, event_type: str, data: dict[str, Any], dedupe_key: str = ""
    ) -> int:
        """Queues the alert for each destination subscribed to it; returns how many.

        A destination that has an alert with `dedupe_key` already gets no second one.
        """
        check_event_type(event_type, "event_type")
        key = check_dedupe_key(dedupe_key)
        # Kept as jsonb, which holds no NUL (data may quote what a customer typed).
        payload = {**storable_json(data), "tenant_id": str(tenant_id)}
        async with self._db.tenant(tenant_id) as session:
            queued = await AlertRepository(session).queue(tenant_id, event_type, payload, key)
        if queued:
            log.info(
                "alert raised",
                extra={"tenant_id": str(tenant_id), "event_type": event_type, "queued": queued},
            )
        return queued


class QuotaAlerts:
    """Raises quota.near and quota.exceeded from the run reservations execution makes.

    quota.near once the month's reserved runs reach NEAR_PERCENT of the limit; quota.exceeded at
    the first run refused for the quota. Each once per tenant and period: the period's start is
    the dedupe key, and this process remembers what it raised so that the runs after a threshold
    cost no database write.
    """

    def __init__(self, alerts: AlertService) -> None:
        self._alerts = alerts
        # Per tenant: the period seen last and the event types raised in it (one entry each).
        self._raised: dict[uuid.UUID, tuple[datetime, set[str]]] = {}

    async def runs_reserved(
        self, tenant_id: uuid.UUID, reply: tenancy_pb.ReserveUsageResponse
    ) -> None:
        """Called with every answer tenancy gives to a reservation of runs."""
        if not reply.HasField("limit") or reply.limit <= 0:
            return
        crossed = []
        if reply.used * 100 >= reply.limit * NEAR_PERCENT:
            crossed.append(QUOTA_NEAR)
        if reply.granted == 0:
            crossed.append(QUOTA_EXCEEDED)
        period_start = reply.period_start_time.ToDatetime(tzinfo=UTC)
        period, raised = self._raised.get(tenant_id, (period_start, set()))
        if period != period_start:
            raised = set()
        self._raised[tenant_id] = (period_start, raised)
        for event_type in crossed:
            if event_type in raised:
                continue
            raised.add(event_type)
            data = {
                "limit": "runs_per_month",
                "limit_value": reply.limit,
                "used": reply.used,
                "plan": reply.plan,
                "period_start_time": rfc3339(period_start),
                "period_end_time": rfc3339(reply.period_end_time.ToDatetime(tzinfo=UTC)),
            }
            # In a transaction of its own: a webhook refused for the quota rolls its own back.
            try:
                await self._alerts.raise_alert(
                    tenant_id, event_type, data, f"{event_type}:{data['period_start_time']}"
                )
            except Exception:
                # The ingest goes on; the tenant's next reservation tries again.
                raised.discard(event_type)
                log.exception("raising a quota alert failed", extra={"tenant_id": str(tenant_id)})
