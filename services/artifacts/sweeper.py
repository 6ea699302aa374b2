"""The retention sweeper: deletes expired artifacts and frees unreferenced blobs, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from services.artifacts.service import ArtifactsService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepConfig:
    # How often the sweeper looks for expired artifacts and unreferenced blobs.
    interval_seconds: float = 300.0
    # Rows one transaction looks at; a full batch means more are waiting, so it goes on at once.
    batch: int = 500
    # How long content nobody names stays before its file is deleted (see `ArtifactsService`).
    blob_grace: timedelta = timedelta(minutes=15)


class Sweeper:
    """Sweeps every tenant now and then. Any number of artifacts replicas may sweep at once:
    deletions lock their rows, so a row two sweepers find is deleted by one."""

    def __init__(self, service: ArtifactsService, config: SweepConfig) -> None:
        self._service = service
        self._config = config
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> tuple[int, int]:
        """One full sweep: expired artifacts first (that may unreference blobs), then blobs;
        returns how many of each were found."""
        expired = await self._drain(lambda: self._service.delete_expired(self._config.batch))
        freed = await self._drain(
            lambda: self._service.free_unreferenced(self._config.batch, self._config.blob_grace)
        )
        return expired, freed

    async def _drain(self, step: Callable[[], Awaitable[int]]) -> int:
        total = 0
        while True:
            found = await step()
            total += found
            # A batch the sweep could not shrink (a tenant's transaction failing) waits for the
            # next interval rather than spinning.
            if found < self._config.batch or total >= 100 * self._config.batch:
                return total

    async def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="artifact-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as error:
                log.warning("sweeping artifacts failed", extra={"error": type(error).__name__})
            await asyncio.sleep(self._config.interval_seconds)
