"""Queries of the `artifacts` schema; the caller's transaction decides when to commit."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aias.core.pagination import PageCursor, newest_first
from aias.services.artifacts.blobstore import StoredBlob
from aias.services.artifacts.domain import Artifact, NewArtifact
from aias.services.artifacts.models import ArtifactRow, BlobRow


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(
        id=row.id,
        tenant_id=row.tenant_id,
        run_id=row.run_id,
        workflow_id=row.workflow_id,
        step_id=row.step_id,
        name=row.name,
        media_type=row.media_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        create_time=row.create_time,
        expire_time=row.expire_time,
    )


@dataclass(frozen=True)
class ExpiredArtifact:
    """An artifact past its expiry, as the sweeper finds it."""

    tenant_id: uuid.UUID
    id: uuid.UUID
    sha256: str


@dataclass(frozen=True)
class BlobForReading:
    """A blob's BLAKE3 (None if recorded before it was kept) and its content if its row has it."""

    blake3: str | None
    content: bytes | None


@dataclass(frozen=True)
class UnreferencedBlob:
    """Content no artifact names, as the sweeper finds it."""

    tenant_id: uuid.UUID
    sha256: str


# The upload path's statements, written once: an upload runs four of them, and building them
# with the ORM each time cost more CPU than PostgreSQL spent running them.
_ARTIFACT_COLUMNS = (
    "id, tenant_id, run_id, workflow_id, step_id, name, media_type, size_bytes, sha256, "
    "create_time, expire_time"
)
# A blob recorded before its BLAKE3 was (artifacts_0004) gets it from the next upload of the
# same content: equal SHA-256, equal bytes.
_RECORD_BLOB = text("""
    INSERT INTO artifacts.blobs (tenant_id, sha256, size_bytes, blake3)
    VALUES (:tenant, :sha256, :size, :blake3)
    ON CONFLICT (tenant_id, sha256) DO UPDATE SET
        unreferenced_time = CASE WHEN blobs.refcount = 0 THEN now()
            ELSE blobs.unreferenced_time END,
        blake3 = coalesce(blobs.blake3, excluded.blake3)
    WHERE blobs.refcount = 0 OR blobs.blake3 IS NULL""")
_LOCK_BLOBS = text("""
    SELECT sha256, refcount FROM artifacts.blobs WHERE sha256 = ANY(CAST(:digests AS text[]))
    ORDER BY sha256 FOR UPDATE""")
# Content kept in its row, in the upload's own transaction: the row is made (or, when the content
# was stored before, its copy added) and locked, like `_LOCK_BLOB`'s, before the artifact's.
_LOCK_INLINE_BLOB = text("""
    INSERT INTO artifacts.blobs (tenant_id, sha256, size_bytes, blake3, content)
    VALUES (:tenant, :sha256, :size, :blake3, :content)
    ON CONFLICT (tenant_id, sha256) DO UPDATE SET
        content = coalesce(blobs.content, excluded.content),
        blake3 = coalesce(blobs.blake3, excluded.blake3)
    RETURNING refcount""")
_BLOB_FOR_READING = text("""
    SELECT blake3, CASE WHEN :with_content THEN content END AS content
    FROM artifacts.blobs WHERE sha256 = :sha256""")
# An upload's one blob: with a single value PostgreSQL keeps one plan for the statement, where
# the array's (of a length it cannot know) is planned again on every call.
_LOCK_BLOB = text("SELECT sha256, refcount FROM artifacts.blobs WHERE sha256 = :sha256 FOR UPDATE")
# The artifact, and one more reference to its blob (locked by the caller) when it was added;
# the unique constraint arbitrates concurrent uploads, and the loser reads the winner.
_ADD_ARTIFACT = text(f"""
    WITH added AS (
        INSERT INTO artifacts.artifacts
            (id, tenant_id, run_id, workflow_id, step_id, name, media_type, size_bytes, sha256,
             expire_time)
        VALUES (:id, :tenant, :run, :workflow, :step, :name, :media_type, :size, :sha256,
                -- The database clock, like create_time, so expiry is exact whatever the host.
                now() + CAST(:retention AS interval))
        ON CONFLICT ON CONSTRAINT artifacts_run_step_name DO NOTHING
        RETURNING {_ARTIFACT_COLUMNS}
    ), referenced AS (
        UPDATE artifacts.blobs SET refcount = refcount + 1, unreferenced_time = NULL
        WHERE sha256 = :sha256 AND EXISTS (SELECT 1 FROM added)
    )
    SELECT {_ARTIFACT_COLUMNS} FROM added""")


class ArtifactRepository:
    """One tenant's artifacts and blobs (RLS scopes the session to the tenant).

    Every transaction that changes both locks the blob rows first (in digest order) and the
    artifact rows second, so uploads, deletions and the sweeper never wait on each other in a
    cycle.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_blob_if_absent(self, tenant_id: uuid.UUID, blob: StoredBlob) -> None:
        """Records content about to be stored; unreferenced until an artifact names it."""
        await self._session.execute(
            insert(BlobRow)
            .values(
                tenant_id=tenant_id, sha256=blob.sha256, size_bytes=blob.size, blake3=blob.blake3
            )
            .on_conflict_do_nothing(index_elements=[BlobRow.tenant_id, BlobRow.sha256])
        )

    async def record_blob(self, tenant_id: uuid.UUID, blob: StoredBlob) -> None:
        """Records content about to be stored, or restarts the sweeper's grace period of
        content already recorded that no artifact names; one statement."""
        await self._session.execute(
            _RECORD_BLOB,
            {"tenant": tenant_id, "sha256": blob.sha256, "size": blob.size, "blake3": blob.blake3},
        )

    async def lock_inline_blob(self, tenant_id: uuid.UUID, blob: StoredBlob, content: bytes) -> int:
        """Keeps `content` in the blob's row, made if absent, and locks the row until the
        transaction ends; returns how many artifacts name it."""
        refcount = await self._session.execute(
            _LOCK_INLINE_BLOB,
            {
                "tenant": tenant_id,
                "sha256": blob.sha256,
                "size": blob.size,
                "blake3": blob.blake3,
                "content": content,
            },
        )
        return int(refcount.scalar_one())

    async def blob_for_reading(self, sha256: str, *, with_content: bool) -> BlobForReading:
        """What reading a blob needs from its row: the BLAKE3 to check it against and, when
        asked for (small artifacts), the content the row keeps."""
        row = (
            await self._session.execute(
                _BLOB_FOR_READING, {"sha256": sha256, "with_content": with_content}
            )
        ).first()
        if row is None:
            return BlobForReading(None, None)
        return BlobForReading(row.blake3, None if row.content is None else bytes(row.content))

    async def lock_blobs(self, digests: Sequence[str]) -> dict[str, int]:
        """Locks the blob rows of these digests until the transaction ends; returns how many
        artifacts name each (a digest without a row is left out)."""
        distinct = sorted(set(digests))
        if len(distinct) == 1:
            rows = await self._session.execute(_LOCK_BLOB, {"sha256": distinct[0]})
        else:
            rows = await self._session.execute(_LOCK_BLOBS, {"digests": distinct})
        return {str(sha256): int(refcount) for sha256, refcount in rows}

    async def dereference(self, digests: Counter[str]) -> int:
        """Artifacts naming these blobs (locked by the caller) are gone; returns the bytes of
        the blobs no artifact names any more, which stop counting against the quota."""
        freed = 0
        for sha256, count in sorted(digests.items()):
            row = (
                await self._session.execute(
                    update(BlobRow)
                    .where(BlobRow.sha256 == sha256)
                    .values(refcount=BlobRow.refcount - count)
                    .returning(BlobRow.refcount, BlobRow.size_bytes)
                )
            ).one()
            if row.refcount == 0:
                freed += row.size_bytes
                await self._session.execute(
                    update(BlobRow)
                    .where(BlobRow.sha256 == sha256)
                    .values(unreferenced_time=func.now())
                )
        return freed

    async def lock_unreferenced(self, digests: Sequence[str], grace: timedelta) -> list[str]:
        """Of these blobs, the ones still unreferenced for `grace`, locked; a blob an upload
        holds is skipped (the upload is about to reference it)."""
        rows = await self._session.scalars(
            select(BlobRow.sha256)
            .where(
                BlobRow.sha256.in_(sorted(set(digests))),
                BlobRow.refcount == 0,
                BlobRow.unreferenced_time <= func.now() - grace,
            )
            .order_by(BlobRow.sha256)
            .with_for_update(skip_locked=True)
        )
        return list(rows)

    async def delete_blobs(self, digests: Sequence[str]) -> None:
        await self._session.execute(delete(BlobRow).where(BlobRow.sha256.in_(digests)))

    async def add_referenced(
        self,
        tenant_id: uuid.UUID,
        new: NewArtifact,
        workflow_id: uuid.UUID,
        blob: StoredBlob,
    ) -> Artifact | None:
        """Inserts the artifact and counts one more reference to its blob (locked by the
        caller); returns None, changing nothing, when its run, step and name are taken."""
        row = (
            await self._session.execute(
                _ADD_ARTIFACT,
                {
                    "id": uuid.uuid4(),
                    "tenant": tenant_id,
                    "run": new.run_id,
                    "workflow": workflow_id,
                    "step": new.step_id,
                    "name": new.name,
                    "media_type": new.media_type,
                    "size": blob.size,
                    "sha256": blob.sha256,
                    "retention": new.retention,
                },
            )
        ).one_or_none()
        return Artifact(*row) if row else None

    async def by_identity(self, run_id: uuid.UUID, step_id: str, name: str) -> Artifact | None:
        row = (
            await self._session.scalars(
                select(ArtifactRow).where(
                    ArtifactRow.run_id == run_id,
                    ArtifactRow.step_id == step_id,
                    ArtifactRow.name == name,
                )
            )
        ).one_or_none()
        return _artifact(row) if row else None

    async def get(self, artifact_id: uuid.UUID) -> Artifact | None:
        row = await self._session.get(ArtifactRow, artifact_id)
        return _artifact(row) if row else None

    async def delete(self, artifact_ids: Sequence[uuid.UUID], *, expired_only: bool) -> list[str]:
        """Deletes the artifacts (only those past their expiry when `expired_only`); returns
        the digest of each one deleted."""
        statement = delete(ArtifactRow).where(ArtifactRow.id.in_(artifact_ids))
        if expired_only:
            statement = statement.where(ArtifactRow.expire_time <= func.now())
        return list(await self._session.scalars(statement.returning(ArtifactRow.sha256)))

    async def page(
        self,
        tenant_id: uuid.UUID,
        run_id: uuid.UUID | None,
        workflow_id: uuid.UUID | None,
        after: PageCursor | None,
        limit: int,
    ) -> list[Artifact]:
        """Newest first. RLS already hides other tenants; the tenant filter is for the index."""
        statement = select(ArtifactRow).where(ArtifactRow.tenant_id == tenant_id)
        if run_id is not None:
            statement = statement.where(ArtifactRow.run_id == run_id)
        if workflow_id is not None:
            statement = statement.where(ArtifactRow.workflow_id == workflow_id)
        rows = await self._session.scalars(newest_first(statement, ArtifactRow, after, limit))
        return [_artifact(row) for row in rows]


class SweepRepository:
    """What the sweeper finds across tenants; read-only (`Database.system(ARTIFACT_RETENTION)`)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def expired(self, limit: int) -> list[ExpiredArtifact]:
        """Artifacts past their expiry, longest expired first."""
        rows = await self._session.execute(
            select(ArtifactRow.tenant_id, ArtifactRow.id, ArtifactRow.sha256)
            .where(ArtifactRow.expire_time <= func.now())
            .order_by(ArtifactRow.expire_time)
            .limit(limit)
        )
        return [ExpiredArtifact(row.tenant_id, row.id, row.sha256) for row in rows]

    async def unreferenced(self, grace: timedelta, limit: int) -> list[UnreferencedBlob]:
        """Blobs no artifact has named for at least `grace`, longest unreferenced first."""
        rows = await self._session.execute(
            select(BlobRow.tenant_id, BlobRow.sha256)
            .where(BlobRow.refcount == 0, BlobRow.unreferenced_time <= func.now() - grace)
            .order_by(BlobRow.unreferenced_time)
            .limit(limit)
        )
        return [UnreferencedBlob(row.tenant_id, row.sha256) for row in rows]
