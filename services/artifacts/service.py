"""Artifact use cases; each owns its transaction and its blob handle."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Protocol, TypeVar

import blake3

from aias.core.context import run_id_var
from aias.core.db import Database, SystemPath, parse_uuid
from aias.core.entitlements import EntitlementsCache, TenantEntitlements, UsageClient
from aias.core.errors import AlreadyExists, DataLoss, NotFound, Unavailable
from aias.core.pagination import decode_token, next_page_token, page_size
from aias.services.artifacts.blobstore import (
    BlobMissing,
    BlobReader,
    BlobStore,
    ContentDigests,
    Digest,
    InlineBlob,
    StoredBlob,
)
from aias.services.artifacts.domain import (
    DEFAULT_INLINE_BYTES,
    DOWNLOAD_CHUNK_BYTES,
    MAX_INLINE_BYTES,
    UPLOAD_READ_AHEAD,
    Answer,
    Artifact,
    Chunk,
    DownloadPlan,
    DownloadRequest,
    NewArtifact,
    UploadSpec,
    check_chunk,
    check_content,
    check_workflow,
    kept_for,
    plan_download,
    validate_upload,
)
from aias.services.artifacts.metrics import ArtifactMetrics
from aias.services.artifacts.quota import StorageQuota
from aias.services.artifacts.repository import ArtifactRepository, SweepRepository
from aias.services.artifacts.runs import RunOwners
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    artifacts: list[Artifact]
    next_page_token: str


@dataclass(frozen=True)
class Swept:
    """One sweeper batch: how many rows it found, and how many of them it deleted."""

    found: int
    deleted: int


@dataclass(frozen=True)
class Download:
    """An artifact, what to send of it, and its open blob (None when nothing is sent)."""

    artifact: Artifact
    plan: DownloadPlan
    _reader: BlobReader | None
    # The blob's BLAKE3, which a whole read is checked against; None for blobs recorded
    # before it was kept, checked against their SHA-256.
    _blake3: str | None
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
        digest: Digest | None = None
        if window.length == self.artifact.size_bytes:
            digest = blake3.blake3() if self._blake3 else hashlib.sha256()
        expected = self._blake3 or self.artifact.sha256
        # The store hashes each chunk as it reads it, off the event loop, so reading and
        # hashing the next chunk overlap with sending this one.
        source = aiter(
            self._reader.chunks(DOWNLOAD_CHUNK_BYTES, window.offset, window.length, digest)
        )

        async def pull() -> bytes:
            return await anext(source, b"")

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
            if digest is not None and digest.hexdigest() != expected:
                self._fail(
                    "digest", {"digest_read": digest.hexdigest(), "digest_expected": expected}
                )
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
        storage: StorageQuota | None = None,
        inline_bytes: int = DEFAULT_INLINE_BYTES,
    ) -> None:
        self._inline_bytes = inline_bytes
        self._metrics = metrics
        self._storage = storage or StorageQuota(usage)
        self._db = db
        self._blobs = blobs
        self._entitlements = entitlements
        self._usage = usage
        self._runs = runs

    async def upload(
        self, tenant_id: uuid.UUID, spec: UploadSpec, chunks: AsyncIterable[Chunk]
    ) -> Artifact:
        """Stores the content, then records it; a retry with the same content returns the first.

        Content is stored once per tenant: a `blobs` row per digest counts the artifacts that
        name it, and its bytes count against the plan's storage quota while that count is above
        zero. Content new to the tenant (or no longer named by any artifact) is reserved at
        tenancy before it becomes visible, so an upload over the quota stores nothing.
        """
        return await self._store(tenant_id, spec, _read_ahead(chunks, UPLOAD_READ_AHEAD))

    async def store(self, tenant_id: uuid.UUID, spec: UploadSpec, content: bytes) -> Artifact:
        """`upload` of content that came in one message.

        Content up to `inline_bytes` is kept in its blob's database row, written in the
        transaction that adds the artifact: no file, no fsync, one transaction. Larger content
        goes to the blob store like a stream's.
        """
        content = check_content(content)
        if len(content) > self._inline_bytes:
            return await self._store(tenant_id, spec, _one(content))
        new, workflow_id, entitlements = await self._admit(tenant_id, spec)
        blob = ContentDigests.of(content)
        async with self._storage.uploading(tenant_id):
            stored = await self._reference(
                tenant_id,
                entitlements,
                new,
                workflow_id,
                blob,
                lock=lambda repo: repo.lock_inline_blob(tenant_id, blob, content),
            )
        return _stored(new, blob, stored)

    async def _admit(
        self, tenant_id: uuid.UUID, spec: UploadSpec
    ) -> tuple[NewArtifact, uuid.UUID, TenantEntitlements]:
        """The upload checked: its fields, its run (the tenant's, of its workflow) and the
        retention its plan allows."""
        new = validate_upload(spec)
        run_id_var.set(str(new.run_id))
        workflow_id = check_workflow(
            new,
            await self._runs.workflow_of(tenant_id, new.run_id, new.workflow_id, new.run_ticket),
        )
        entitlements = await self._entitlements.get(tenant_id)
        new = replace(
            new, retention=kept_for(new.retention, entitlements.limits.artifact_retention_days)
        )
        return new, workflow_id, entitlements

    async def _store(
        self, tenant_id: uuid.UUID, spec: UploadSpec, chunks: AsyncIterator[Chunk]
    ) -> Artifact:
        new, workflow_id, entitlements = await self._admit(tenant_id, spec)
        async with self._storage.uploading(tenant_id), self._blobs.writer(tenant_id) as writer:
            async for chunk in chunks:
                await writer.write(check_chunk(chunk))
            written = writer.written()
            # The blob row is committed, its grace period restarted, before the file can
            # exist, so a file left behind by a failure below is one the sweeper knows of.
            async with self._db.tenant(tenant_id) as session:
                await ArtifactRepository(session).record_blob(tenant_id, written)
            stored = await self._reference(
                tenant_id,
                entitlements,
                new,
                workflow_id,
                written,
                lock=lambda repo: _locked_refcount(repo, tenant_id, written),
                place=writer.commit,
            )
        return _stored(new, written, stored)

    async def _reference(
        self,
        tenant_id: uuid.UUID,
        entitlements: TenantEntitlements,
        new: NewArtifact,
        workflow_id: uuid.UUID,
        blob: StoredBlob,
        lock: Callable[[ArtifactRepository], Awaitable[int]],
        place: Callable[[], Awaitable[StoredBlob]] | None = None,
    ) -> Artifact | None:
        """Adds the artifact and one more reference to its blob, in one transaction: the
        blob's row is locked (`lock`, returning how many artifacts name it), the content's
        bytes reserved if nothing names it yet, and the content put in place (`place`).

        The row lock orders this upload with the sweeper and with other uploads of the same
        content: the sweeper deletes content only under this lock with the count at zero, and
        the content is put in place (or found there) under it before the count rises, so a
        blob the sweeper is freeing is stored again by the upload that waited for it, never
        lost. Returns the artifact, or the one already stored under its run, step and name
        (None if that one was deleted meanwhile).
        """
        reserved, referenced = 0, False
        try:
            async with self._db.tenant(tenant_id) as session:
                repo = ArtifactRepository(session)
                if await lock(repo) == 0 and blob.size:
                    reserved = await self._storage.reserve(entitlements, blob.size)
                if place is not None:
                    await place()
                stored = await repo.add_referenced(tenant_id, new, workflow_id, blob)
                if stored is not None:
                    referenced = True
                else:
                    stored = await repo.by_identity(new.run_id, new.step_id, new.name)
        except BaseException:
            self._storage.give_back(tenant_id, reserved)
            raise
        if not referenced:
            # An artifact of this run, step and name existed already: nothing new names the
            # content, so what was reserved for it goes back.
            self._storage.give_back(tenant_id, reserved)
        return stored

    async def delete_artifact(self, tenant_id: uuid.UUID, artifact_id: str) -> None:
        """Deletes an artifact; its content goes when no other artifact names it, and its
        bytes stop counting against the quota at once."""
        aid = parse_uuid(artifact_id, "artifact_id")
        async with self._db.tenant(tenant_id) as session:
            repo = ArtifactRepository(session)
            artifact = await repo.get(aid)
            removed, freed = (
                await _remove(repo, [(aid, artifact.sha256)], expired_only=False)
                if artifact is not None
                else (0, 0)
            )
        if not removed:
            raise NotFound("ARTIFACT_NOT_FOUND", f"artifact {aid} does not exist")
        await self._release(tenant_id, freed)
        log.info("artifact deleted", extra={"artifact_id": str(aid)})

    async def delete_expired(self, batch: int) -> Swept:
        """Deletes up to `batch` artifacts past their expiry, of every tenant, each tenant in
        its own transaction."""
        async with self._db.system(SystemPath.ARTIFACT_RETENTION) as session:
            due = await SweepRepository(session).expired(batch)
        deleted = 0
        for tenant_id, found in _by_tenant(due).items():
            try:
                async with self._db.tenant(tenant_id) as session:
                    removed, freed = await _remove(
                        ArtifactRepository(session),
                        [(item.id, item.sha256) for item in found],
                        expired_only=True,
                    )
            except Exception:
                log.exception("deleting expired artifacts failed", extra={"tenant": str(tenant_id)})
                continue
            await self._release(tenant_id, freed)
            deleted += removed
            if removed:
                log.info(
                    "expired artifacts deleted", extra={"tenant": str(tenant_id), "count": removed}
                )
        return Swept(len(due), deleted)

    async def free_unreferenced(self, batch: int, grace: timedelta) -> Swept:
        """Deletes up to `batch` blobs no artifact has named for `grace`, of every tenant."""
        async with self._db.system(SystemPath.ARTIFACT_RETENTION) as session:
            found = await SweepRepository(session).unreferenced(grace, batch)
        deleted = 0
        for tenant_id, blobs in _by_tenant(found).items():
            try:
                async with self._db.tenant(tenant_id) as session:
                    repo = ArtifactRepository(session)
                    # Locked with the count at zero: an upload of the same content waits for
                    # this transaction and then stores the file again (see `upload`).
                    digests = await repo.lock_unreferenced([b.sha256 for b in blobs], grace)
                    for sha256 in digests:
                        await self._blobs.delete(tenant_id, sha256)
                    await repo.delete_blobs(digests)
            except Exception:
                log.exception("freeing unreferenced blobs failed", extra={"tenant": str(tenant_id)})
                continue
            deleted += len(digests)
            if digests:
                log.info("blobs freed", extra={"tenant": str(tenant_id), "count": len(digests)})
        return Swept(len(found), deleted)

    async def _release(self, tenant_id: uuid.UUID, amount: int) -> None:
        await self._usage.release(tenant_id, tenancy_pb.METRIC_ARTIFACT_STORAGE_BYTES, amount)

    async def get_artifact(self, tenant_id: uuid.UUID, artifact_id: str) -> Artifact:
        aid = parse_uuid(artifact_id, "artifact_id")
        async with self._db.tenant(tenant_id) as session:
            return _found(await ArtifactRepository(session).get(aid), aid)

    async def list_artifacts(
        self,
        tenant_id: uuid.UUID,
        run_id: str,
        workflow_id: str,
        requested_size: int,
        page_token: str,
    ) -> Page:
        run = parse_uuid(run_id, "run_id") if run_id else None
        workflow = parse_uuid(workflow_id, "workflow_id") if workflow_id else None
        size = page_size(requested_size)
        scope = f"{run or ''}/{workflow or ''}"
        after = decode_token(page_token, scope)
        async with self._db.tenant(tenant_id) as session:
            # One extra row says whether another page follows without a COUNT.
            found = await ArtifactRepository(session).page(
                tenant_id, run, workflow, after, size + 1
            )
        return Page(found[:size], next_page_token(found, size, scope))

    @asynccontextmanager
    async def download(
        self, tenant_id: uuid.UUID, artifact_id: str, request: DownloadRequest
    ) -> AsyncIterator[Download]:
        """Decides what to send, then opens the blob unless nothing is sent (304).

        A lost or torn blob is reported before any byte is sent.
        """
        aid = parse_uuid(artifact_id, "artifact_id")
        # The metadata, the blob's BLAKE3 and, for content small enough to be kept in its row,
        # the content: one transaction.
        async with self._db.tenant(tenant_id) as session:
            repo = ArtifactRepository(session)
            artifact = _found(await repo.get(aid), aid)
            run_id_var.set(str(artifact.run_id))
            plan = plan_download(request, artifact.size_bytes, artifact.sha256)
            blob = None
            if plan.answer is not Answer.NOT_MODIFIED:
                blob = await repo.blob_for_reading(
                    artifact.sha256, with_content=artifact.size_bytes <= MAX_INLINE_BYTES
                )
        if blob is None:
            yield Download(artifact, plan, None, None, self._metrics)
            return
        if blob.content is not None:
            yield Download(artifact, plan, InlineBlob(blob.content), blob.blake3, self._metrics)
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
            yield Download(artifact, plan, reader, blob.blake3, self._metrics)


async def _read_ahead(chunks: AsyncIterable[Chunk], depth: int) -> AsyncIterator[Chunk]:
    """The same chunks, with up to `depth` more received while the current one is stored.

    Receiving (gRPC) and storing (hashing, writing) then overlap instead of taking turns.
    """
    queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue(depth)

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


async def _one(content: bytes) -> AsyncIterator[Chunk]:
    yield content


def _found(artifact: Artifact | None, aid: uuid.UUID) -> Artifact:
    if artifact is None:
        raise NotFound("ARTIFACT_NOT_FOUND", f"artifact {aid} does not exist")
    return artifact


def _stored(new: NewArtifact, blob: StoredBlob, stored: Artifact | None) -> Artifact:
    """The upload's artifact; an error when its run, step and name hold other content."""
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


async def _locked_refcount(repo: ArtifactRepository, tenant_id: uuid.UUID, blob: StoredBlob) -> int:
    """Locks the blob's row, made again if the sweeper deleted it since it was last seen;
    returns how many artifacts name it."""
    while (refcount := (await repo.lock_blobs([blob.sha256])).get(blob.sha256)) is None:
        await repo.add_blob_if_absent(tenant_id, blob)
    return refcount


async def _remove(
    repo: ArtifactRepository, artifacts: list[tuple[uuid.UUID, str]], *, expired_only: bool
) -> tuple[int, int]:
    """Deletes artifacts (id, digest) and counts their blobs down, blobs locked first like every
    writer does; returns how many went and the bytes of content no artifact names any more."""
    if not artifacts:
        return 0, 0
    await repo.lock_blobs([sha256 for _, sha256 in artifacts])
    removed = await repo.delete([aid for aid, _ in artifacts], expired_only=expired_only)
    return len(removed), await repo.dereference(Counter(removed))


class _OfTenant(Protocol):
    @property
    def tenant_id(self) -> uuid.UUID: ...


_Item = TypeVar("_Item", bound=_OfTenant)


def _by_tenant(items: list[_Item]) -> dict[uuid.UUID, list[_Item]]:
    grouped: dict[uuid.UUID, list[_Item]] = defaultdict(list)
    for item in items:
        grouped[item.tenant_id].append(item)
    return grouped


def _blob_fields(artifact: Artifact) -> dict[str, str]:
    return {"artifact_id": str(artifact.id), "sha256": artifact.sha256}


def _unavailable(artifact: Artifact) -> Unavailable:
    return Unavailable("BLOB_MISSING", f"the content of artifact {artifact.id} is not available")
