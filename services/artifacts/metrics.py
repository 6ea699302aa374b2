"""The artifacts service's own metrics: blobs found corrupt or short while being read."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class ArtifactMetrics:
    """Integrity failures by kind (`digest`: the SHA-256 differs, `length`: bytes are missing)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._corrupt = Counter(
            "aias_artifact_blob_corrupt",
            "Downloads ended with DATA_LOSS because the stored blob is not what was uploaded.",
            ["kind"],
            registry=registry,
        )

    def corrupt(self, kind: str) -> None:
        self._corrupt.labels(kind).inc()
