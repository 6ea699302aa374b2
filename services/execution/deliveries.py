"""The webhook delivery log: every delivery to a known endpoint, each tenant's kept to its newest N."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from aias.core.db import Database
from aias.core.errors import DomainError, http_status
from aias.services.execution.models import WebhookDeliveryRow
from aias.services.execution.repository import ExecutionRepository

log = logging.getLogger(__name__)

DEFAULT_KEPT = 10_000
PRUNE_BATCH = 1_000
MAX_MESSAGE_CHARS = 500


def delivery_values(
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    status: int,
    reason: str,
    message: str,
    size_bytes: int,
    run_id: uuid.UUID | None,
) -> dict[str, Any]:
    """A new delivery record's columns (a plain dict: the group commit writes it as it is)."""
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "endpoint_id": endpoint_id,
        "http_status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE_CHARS],
        "size_bytes": size_bytes,
        "run_id": run_id,
    }


class DeliveryLog:
    """Records deliveries and keeps each tenant's log at about its newest `kept`.

    An accepted delivery is written in its run's transaction (the caller adds a row made of
    `delivery_values`); a refused one in a small transaction of its own. Pruning is off the request path: after
    every `prune_every` deliveries of a tenant this process recorded, a background task deletes
    what lies beyond the newest `kept`, in batches. A log therefore holds at most `kept` plus
    `prune_every` per execution process (a little more while a prune runs).
    """

    def __init__(self, db: Database, kept: int = DEFAULT_KEPT) -> None:
        self._db = db
        self._kept = kept
        self._prune_every = max(1, min(1_000, kept // 10))
        self._counts: dict[uuid.UUID, int] = {}
        self._pruning: dict[uuid.UUID, asyncio.Task[None]] = {}
        # Tenants whose prune in progress must run once more: more came in while it ran.
        self._again: set[uuid.UUID] = set()

    async def record_refusal(
        self,
        tenant_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        error: DomainError,
        message: str,
        size_bytes: int,
    ) -> None:
        """Writes a refused delivery; a failure to write is logged, never raised over the refusal."""
        row = WebhookDeliveryRow(
            **delivery_values(
                tenant_id,
                endpoint_id,
                http_status(error.code, error.metadata),
                error.reason,
                message,
                size_bytes,
                None,
            )
        )
        try:
            async with self._db.tenant(tenant_id) as session:
                await ExecutionRepository(session).add(row, refresh=False)
        except Exception:
            log.exception("recording a refused webhook delivery failed")
            return
        self.recorded(tenant_id)

    def recorded(self, tenant_id: uuid.UUID) -> None:
        """Counts a committed delivery; every `prune_every`th starts a prune of the tenant's log."""
        count = self._counts.get(tenant_id, 0) + 1
        if count < self._prune_every:
            self._counts[tenant_id] = count
            return
        self._counts.pop(tenant_id, None)
        if tenant_id in self._pruning:
            self._again.add(tenant_id)
        else:
            self._pruning[tenant_id] = asyncio.create_task(
                self._prune(tenant_id), name="webhook-delivery-prune"
            )

    async def _prune(self, tenant_id: uuid.UUID) -> None:
        try:
            while True:
                self._again.discard(tenant_id)
                deleted = PRUNE_BATCH
                while deleted == PRUNE_BATCH:
                    async with self._db.tenant(tenant_id) as session:
                        deleted = await ExecutionRepository(session).prune_deliveries(
                            self._kept, PRUNE_BATCH
                        )
                if tenant_id not in self._again:
                    return
        except Exception:
            log.exception("pruning the webhook delivery log failed")
        finally:
            # No await since the check above: a delivery cannot slip in between.
            self._pruning.pop(tenant_id, None)

    async def close(self) -> None:
        """Stops the prunes in progress; the next ones catch up."""
        tasks = list(self._pruning.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
