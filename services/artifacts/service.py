"""Artifact use cases; each owns its transaction and its blob handle."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, replace

from aias.core.context import run_id_var
from aias.core.db import Database, parse_uuid
from aias.core.entitlements import (
    EntitlementsCache,
    TenantEntitlements,
    UsageClient,
    quota_exceeded,
)
from aias.core.errors import AlreadyExists, DataLoss, NotFound, Unavailable
from aias.core.pagination import decode_token, next_page_token, page_size
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from services.artifacts.blobstore import BlobMissing, BlobReader, BlobStore
from services.artifacts.domain import (
    DOWNLOAD_CHUNK_BYTES,
    UPLOAD_READ_AHEAD,
    Answer,
    Artifact,
    DownloadPlan,
    DownloadRequest,
    UploadSpec,
    check_chunk,
    kept_for,
    plan_download,
    validate_upload,
)
from services.artifacts.metrics import ArtifactMetrics
from services.artifacts.repository import ArtifactRepository
from services.artifacts.runs import RunOwners

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    artifacts: list[Artifact]
    next_page_token: str


@dataclass(frozen=True)
class Download:
    """An artifact, what to send of it, and its open blob (None when nothing is sent)."""

    artifact: Artifact
    plan: DownloadPlan
    _reader: BlobReader | None
    _metrics: ArtifactMetrics

    async def chunks(self) -> AsyncIterator[bytes]:
        """The planned bytes, read from storage at the window's offset.

        A whole-body read is hashed as it streams and the last chunk is held back until the
        digest matches, so a corrupt blob ends the stream with DATA_LOSS before its final
        byte: the client sees a truncated body, never a complete wrong one. A range cannot be
        checked (the digest covers the whole blob); only its length is.
        """
        window = self.plan.window
        if self._reader is None or window.length == 0:
            return
        digest = hashlib.sha256() if window.length == self.artifact.size_bytes else None
        source = aiter(self._reader.chunks(DOWNLOAD_CHUNK_BYTES, window.offset, window.length))

        async def pull() -> bytes:
            chunk = await anext(source, b"")
            if chunk and digest is not None:
                # Off the event loop, so it overlaps with sending the chunk before.
                await asyncio.to_thread(digest.update, chunk)
            return chunk

        sent = 0
        reading = asyncio.ensure_future(pull())
        try:
            while chunk := await reading:
                sent += len(chunk)
                if sent >= window.length:
                    break
                # The next chunk is read and hashed while this one goes out.
                reading = asyncio.ensure_future(pull())
                yield chunk
            if sent != window.length:
                self._fail("length", {"bytes_read": sent, "bytes_expected": window.length})
            if digest is not None and digest.hexdigest() != self.artifact.sha256:
                self._fail("digest", {"digest_read": digest.hexdigest()})
            yield chunk
        finally:
            reading.cancel()
            with suppress(asyncio.CancelledError):
                await reading

    def _fail(self, kind: str, fields: dict[str, object]) -> None:
        self._metrics.corrupt(kind)
        log.error(
            "artifact blob is corrupt",
            extra={**_blob_fields(self.artifact), "kind": kind, **fields},
        )
        raise DataLoss(
            "BLOB_CORRUPT", f"the stored content of artifact {self.artifact.id} is corrupt"
        )


class ArtifactsService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        entitlements: EntitlementsCache,
        usage: UsageClient,
        runs: RunOwners,
        metrics: ArtifactMetrics,
    ) -> None:
        self._metrics = metrics
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
            async for chunk in _read_ahead(chunks, UPLOAD_READ_AHEAD):
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
    async def download(
        self, tenant_id: uuid.UUID, artifact_id: str, request: DownloadRequest
    ) -> AsyncIterator[Download]:
        """Decides what to send, then opens the blob unless nothing is sent (304).

        A lost or torn blob is reported before any byte is sent.
        """
        artifact = await self.get_artifact(tenant_id, artifact_id)
        run_id_var.set(str(artifact.run_id))
        plan = plan_download(request, artifact.size_bytes, artifact.sha256)
        if plan.answer is Answer.NOT_MODIFIED:
            yield Download(artifact, plan, None, self._metrics)
            return
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
            yield Download(artifact, plan, reader, self._metrics)


async def _read_ahead(chunks: AsyncIterable[bytes], depth: int) -> AsyncIterator[bytes]:
    """The same chunks, with up to `depth` more received while the current one is stored.

    Receiving (gRPC) and storing (hashing, writing) then overlap instead of taking turns.
    """
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(depth)

    async def receive() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
        except Exception as error:
            await queue.put(error)
        else:
            await queue.put(None)

    receiving = asyncio.create_task(receive())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        receiving.cancel()
        with suppress(asyncio.CancelledError):
            await receiving


def _blob_fields(artifact: Artifact) -> dict[str, str]:
    return {"artifact_id": str(artifact.id), "sha256": artifact.sha256}


def _unavailable(artifact: Artifact) -> Unavailable:
    return Unavailable("BLOB_MISSING", f"the content of artifact {artifact.id} is not available")
