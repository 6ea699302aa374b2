"""Billing use cases; each owns its transaction."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from services.billing.domain import VerifiedEvent, verify
from services.billing.repository import BillingRepository

log = logging.getLogger(__name__)


class BillingService:
    def __init__(self, engine: AsyncEngine, webhook_secret: str, api_key: str) -> None:
        # stripe_events is not tenant-scoped (an event is recorded before it maps to a tenant),
        # so billing uses plain sessions here rather than Database.tenant().
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._webhook_secret = webhook_secret
        self._api_key = api_key

    @property
    def configured(self) -> bool:
        return bool(self._webhook_secret and self._api_key)

    async def handle_event(self, payload: bytes, signature: str) -> tuple[VerifiedEvent, bool]:
        """Verifies and records one delivery; True when the event id was already processed."""
        event = verify(payload, signature, self._webhook_secret)
        async with self._sessions() as session, session.begin():
            new = await BillingRepository(session).record_event(event)
        log.info(
            "stripe event recorded" if new else "duplicate stripe event ignored",
            extra={"event_id": event.id, "event_type": event.type},
        )
        return event, not new
