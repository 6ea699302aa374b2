"""Webhook URLs resolved to their endpoint and workflow, cached until the database says otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from aias.core.cache import CoherentCache
from aias.core.db import Database, follow_notifications
from aias.services.execution.repository import ExecutionRepository, WebhookTarget

CHANNEL = "aias_webhook_targets"


class WebhookTargets:
    """The endpoint and workflow a (tenant, secret hash) opens.

    Every change to an endpoint or a workflow sends a notice at commit (a trigger on both
    tables); each process drops that tenant's entries, so a disabled or deleted endpoint stops
    at once everywhere. Unknown secrets are not cached: made-up URLs cannot fill the cache.
    """

    def __init__(
        self, db: Database, listen_url: str, ttl: float = 300.0, max_entries: int = 100_000
    ) -> None:
        self._db = db
        self._listen_url = listen_url
        self._cache: CoherentCache[tuple[uuid.UUID, bytes], uuid.UUID, WebhookTarget | None] = (
            CoherentCache(lambda key: key[0], ttl, max_entries)
        )
        self._follower: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._follower = asyncio.create_task(
            follow_notifications(
                self._listen_url, CHANNEL, on_notify=self._forget, on_connect=self._cache.clear
            ),
            name="webhook-target-notices",
        )

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower

    def _forget(self, tenant_id: str) -> None:
        with contextlib.suppress(ValueError):
            self.forget(uuid.UUID(tenant_id))

    def forget(self, tenant_id: uuid.UUID) -> None:
        """Drops a tenant's entries; the process that made a change need not wait for the notice."""
        self._cache.forget(tenant_id)

    async def resolve(self, tenant_id: uuid.UUID, secret_hash: bytes) -> WebhookTarget | None:
        key = (tenant_id, secret_hash)
        found = await self._cache.get(key, lambda: self._load(tenant_id, secret_hash))
        if found is None:
            self._cache.forget_key(key)
        return found

    async def _load(self, tenant_id: uuid.UUID, secret_hash: bytes) -> WebhookTarget | None:
        async with self._db.tenant(tenant_id) as session:
            return await ExecutionRepository(session).webhook_target(secret_hash)
