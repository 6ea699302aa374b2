"""Fans tenancy's change notices (PostgreSQL NOTIFY at commit) out to every watching service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aias.core.db import follow_notifications

CHANNEL = "aias_entitlements"
# A watcher this far behind gets one "reset" instead: it drops its whole cache.
MAX_PENDING = 1_000
RESET = ""


class ChangeHub:
    """One LISTEN connection per tenancy process; each watcher gets a bounded queue of notices."""

    def __init__(self, listen_url: str) -> None:
        self._listen_url = listen_url
        self._watchers: set[asyncio.Queue[str | None]] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(
            follow_notifications(
                self._listen_url, CHANNEL, on_notify=self._publish, on_connect=self._reset
            ),
            name="entitlement-changes",
        )

    async def close(self) -> None:
        """Ends every watch stream (so a graceful stop need not wait for them) and stops."""
        for queue in self._watchers:
            queue.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _publish(self, tenant_id: str) -> None:
        for queue in self._watchers:
            if queue.qsize() >= MAX_PENDING:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(RESET)
            else:
                queue.put_nowait(tenant_id)

    def _reset(self) -> None:
        # After a (re)connection notices may have been missed: every watcher starts afresh.
        self._publish(RESET)

    async def watch(self) -> AsyncIterator[str]:
        """Tenant ids as they change; RESET first, and whenever notices may have been lost."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            yield RESET
            while (tenant_id := await queue.get()) is not None:
                yield tenant_id
        finally:
            self._watchers.discard(queue)
