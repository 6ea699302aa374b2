"""The retention sweeper: deletes expired artifacts and frees unreferenced blobs, in batches."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter

from aias.core.periodic import Periodic
from aias.services.artifacts.service import ArtifactsService, Swept

# A batch that does not shrink (a tenant's transaction failing) waits for the next interval
# rather than spinning.
MAX_BATCHES_PER_SWEEP = 100


@dataclass(frozen=True)
class SweepConfig:
    # How often the sweeper looks for expired artifacts and unreferenced blobs.
    interval_seconds: float = 300.0
    # Rows one transaction looks at; a full batch means more are waiting, so it goes on at once.
    batch: int = 500
    # How long content nobody names stays before its file is deleted (see `ArtifactsService`).
    blob_grace: timedelta = timedelta(minutes=15)


class SweepMetrics:
    """What this process's sweeper deleted, for dashboards and for noticing it has stopped."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.expired = Counter(
            "aias_artifacts_expired",
            "Artifacts this process's sweeper deleted because their retention ran out.",
            registry=registry,
        )
        self.blobs_freed = Counter(
            "aias_artifact_blobs_freed",
            "Stored contents this process's sweeper deleted because no artifact named them.",
            registry=registry,
        )


class Sweeper:
    """Sweeps every tenant now and then. Any number of artifacts replicas may sweep at once:
    deletions lock their rows, so a row two sweepers find is deleted by one."""

    def __init__(
        self, service: ArtifactsService, config: SweepConfig, metrics: SweepMetrics
    ) -> None:
        self._service = service
        self._config = config
        self._metrics = metrics
        self._periodic = Periodic("artifact-sweeper", self.sweep, config.interval_seconds)

    async def sweep(self) -> tuple[int, int]:
        """One full sweep: expired artifacts first (that may unreference blobs), then blobs;
        returns how many of each were found."""
        expired = await self._drain(
            lambda: self._service.delete_expired(self._config.batch), self._metrics.expired
        )
        freed = await self._drain(
            lambda: self._service.free_unreferenced(self._config.batch, self._config.blob_grace),
            self._metrics.blobs_freed,
        )
        return expired, freed

    async def _drain(self, step: Callable[[], Awaitable[Swept]], deleted: Counter) -> int:
        """Runs batches while they come back full; returns how many rows they found."""
        found = 0
        for _ in range(MAX_BATCHES_PER_SWEEP):
            swept = await step()
            deleted.inc(swept.deleted)
            found += swept.found
            if swept.found < self._config.batch:
                break
        return found

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
