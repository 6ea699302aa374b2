"""Wakes the streams that follow runs (WatchRun) when PostgreSQL says a run changed."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

from aias.core.db import follow_notifications

# Sent at commit, with the run's id, by triggers on runs (status, attempt, cancellation) and
# step_logs (insert); see migration execution_0003.
CHANNEL = "aias_run_events"


class RunEvents:
    """One LISTEN connection per execution process; each notice wakes the streams of its run.

    The connection opens with the first stream, so a process nobody follows runs through gets
    no notices. A stream re-reads the run from the database when woken (in its tenant's
    transaction, under RLS), so a notice carries nothing but the run's id.
    """

    def __init__(self, listen_url: str) -> None:
        self._listen_url = listen_url
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None
        self.closed = False

    @contextlib.contextmanager
    def follow(self, run_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever the run may have changed, and whenever notices may have been
        missed (the connection was opened or re-opened)."""
        if self._listener is None:
            self._listener = asyncio.create_task(
                follow_notifications(
                    self._listen_url, CHANNEL, on_notify=self._notice, on_connect=self._wake_all
                ),
                name="run-events",
            )
        key, changed = str(run_id), asyncio.Event()
        self._waiting.setdefault(key, set()).add(changed)
        try:
            yield changed
        finally:
            waiting = self._waiting[key]
            waiting.discard(changed)
            if not waiting:
                del self._waiting[key]

    async def close(self) -> None:
        """Wakes every stream to end (they see `closed`), then stops listening."""
        self.closed = True
        self._wake_all()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    def _notice(self, run_id: str) -> None:
        for changed in self._waiting.get(run_id, ()):
            changed.set()

    def _wake_all(self) -> None:
        for waiting in self._waiting.values():
            for changed in waiting:
                changed.set()
