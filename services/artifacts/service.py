"""Artifact use cases; each owns its transaction and its blob handle."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

from aias.core.context import run_id_var
from aias.core.db import Database, parse_uuid
from aias.core.entitlements import (
    EntitlementsCache,
    TenantEntitlements,
    UsageClient,
    quota_exceeded,
)
from aias.core.errors import AlreadyExists, NotFound, Unavailable
from aias.core.pagination import decode_token, next_page_token, page_size
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from services.artifacts.blobstore import BlobMissing, BlobReader, BlobStore
from services.artifacts.domain import (
    DOWNLOAD_CHUNK_BYTES,
    Artifact,
    UploadSpec,
    check_chunk,
    kept_for,
    validate_upload,
)
from services.artifacts.repository import ArtifactRepository
from services.artifacts.runs import RunOwners

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    artifacts: list[Artifact]
    next_page_token: str


@dataclass(frozen=True)
class Download:
    """An artifact whose blob is open: its size is checked before the first byte is sent."""

    artifact: Artifact
    _reader: BlobReader

    def chunks(self) -> AsyncIterator[bytes]:
        return self._reader.chunks(DOWNLOAD_CHUNK_BYTES)


class ArtifactsService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        entitlements: EntitlementsCache,
        usage: UsageClient,
        runs: RunOwners,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._entitlements = entitlements
        self._usage = usage
        self._runs = runs

    async def upload(
        self, tenant_id: uuid.UUID, spec: UploadSpec, chunks: AsyncIterable[bytes]
    ) -> Artifact:
        """Stores the content, then records it; a retry with the same content returns the first.

        New content is counted against the plan's storage quota before it becomes visible, so
        an upload over the quota stores nothing; content the tenant already has costs nothing.
        """
        new = validate_upload(spec)
        run_id_var.set(str(new.run_id))
        await self._runs.check(tenant_id, new.run_id)
        entitlements = await self._entitlements.get(tenant_id)
        new = replace(
            new, retention=kept_for(new.retention, entitlements.limits.artifact_retention_days)
        )
        reserved = 0
        async with self._blobs.writer(tenant_id) as writer:
            async for chunk in chunks:
                await writer.write(check_chunk(chunk))
            written = writer.written()
            if written.size and not await self._blobs.exists(tenant_id, written):
                reserved = await self._reserve_storage(entitlements, written.size)
            try:
                blob = await writer.commit()
            except BaseException:
                await self._usage.release(
                    tenant_id, tenancy_pb.METRIC_ARTIFACT_STORAGE_BYTES, reserved
                )
                raise
        # The blob is committed before the row, so a row never names a missing blob; a failure
        # in between leaves an unreferenced blob that the same upload's retry reuses.
        async with self._db.tenant(tenant_id) as session:
            repo = ArtifactRepository(session)
            stored = await repo.add_if_absent(tenant_id, new, blob)
            if stored is None:
                stored = await repo.by_identity(new.run_id, new.step_id, new.name)
        if stored is None:
            # The conflicting row was deleted (by retention) between the insert and the read.
            raise Unavailable("ARTIFACT_CONFLICT_RACE", "the upload raced a deletion; retry it")
        if stored.sha256 != blob.sha256:
            raise AlreadyExists(
                "ARTIFACT_EXISTS",
                f"run {new.run_id} step {new.step_id!r} already has an artifact named "
                f"{new.name!r} with different content",
                {"artifact_id": str(stored.id)},
            )
        log.info(
            "artifact stored",
            extra={"artifact_id": str(stored.id), "size_bytes": blob.size, "sha256": blob.sha256},
        )
        return stored

    async def _reserve_storage(self, entitlements: TenantEntitlements, size: int) -> int:
        reply = await self._usage.reserve(
            entitlements.tenant_id,
            tenancy_pb.METRIC_ARTIFACT_STORAGE_BYTES,
            size,
            partial=False,
        )
        if reply.granted == 0:
            raise quota_exceeded(
                "artifact_storage_bytes",
                reply.limit,
                entitlements.plan,
                f"storing {size} more bytes would exceed the storage quota "
                f"({reply.used} bytes used)",
                None,
            )
        return int(reply.granted)

    async def get_artifact(self, tenant_id: uuid.UUID, artifact_id: str) -> Artifact:
        aid = parse_uuid(artifact_id, "artifact_id")
        async with self._db.tenant(tenant_id) as session:
            artifact = await ArtifactRepository(session).get(aid)
        if artifact is None:
            raise NotFound("ARTIFACT_NOT_FOUND", f"artifact {aid} does not exist")
        return artifact

    async def list_artifacts(
        self, tenant_id: uuid.UUID, run_id: str, requested_size: int, page_token: str
    ) -> Page:
        run = parse_uuid(run_id, "run_id") if run_id else None
        size = page_size(requested_size)
        after = decode_token(page_token, str(run or ""))
        async with self._db.tenant(tenant_id) as session:
            # One extra row says whether another page follows without a COUNT.
            found = await ArtifactRepository(session).page(tenant_id, run, after, size + 1)
        return Page(found[:size], next_page_token(found, size, str(run or "")))

    @asynccontextmanager
    async def download(self, tenant_id: uuid.UUID, artifact_id: str) -> AsyncIterator[Download]:
        """Opens the artifact's blob; a lost or torn blob is reported before any byte is sent."""
        artifact = await self.get_artifact(tenant_id, artifact_id)
        run_id_var.set(str(artifact.run_id))
        async with AsyncExitStack() as stack:
            try:
                reader = await stack.enter_async_context(
                    self._blobs.reader(tenant_id, artifact.sha256)
                )
            except BlobMissing:
                log.error("artifact blob is missing", extra=_blob_fields(artifact))
                raise _unavailable(artifact) from None
            if reader.size != artifact.size_bytes:
                log.error(
                    "artifact blob has the wrong size",
                    extra={**_blob_fields(artifact), "blob_size": reader.size},
                )
                raise _unavailable(artifact)
            yield Download(artifact, reader)


def _blob_fields(artifact: Artifact) -> dict[str, str]:
    return {"artifact_id": str(artifact.id), "sha256": artifact.sha256}


def _unavailable(artifact: Artifact) -> Unavailable:
    return Unavailable("BLOB_MISSING", f"the content of artifact {artifact.id} is not available")
