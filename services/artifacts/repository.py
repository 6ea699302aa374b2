"""Queries of the `artifacts` schema; the caller's transaction decides when to commit."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aias.core.pagination import PageCursor, newest_first
from services.artifacts.blobstore import StoredBlob
from services.artifacts.domain import Artifact, NewArtifact
from services.artifacts.models import ArtifactRow


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(
        id=row.id,
        tenant_id=row.tenant_id,
        run_id=row.run_id,
        step_id=row.step_id,
        name=row.name,
        media_type=row.media_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        create_time=row.create_time,
        expire_time=row.expire_time,
    )


class ArtifactRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_if_absent(
        self, tenant_id: uuid.UUID, new: NewArtifact, blob: StoredBlob
    ) -> Artifact | None:
        """Inserts the artifact, or returns None when its run, step and name are taken."""
        statement = (
            insert(ArtifactRow)
            .values(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                run_id=new.run_id,
                step_id=new.step_id,
                name=new.name,
                media_type=new.media_type,
                size_bytes=blob.size,
                sha256=blob.sha256,
                # The database clock, like create_time, so expiry is exact whatever the host.
                expire_time=func.now() + new.retention if new.retention else None,
            )
            # The unique constraint arbitrates concurrent uploads; the loser reads the winner.
            .on_conflict_do_nothing(constraint="artifacts_run_step_name")
            .returning(ArtifactRow)
        )
        row = (await self._session.scalars(statement)).one_or_none()
        return _artifact(row) if row else None

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

    async def page(
        self,
        tenant_id: uuid.UUID,
        run_id: uuid.UUID | None,
        after: PageCursor | None,
        limit: int,
    ) -> list[Artifact]:
        """Newest first. RLS already hides other tenants; the tenant filter is for the index."""
        statement = select(ArtifactRow).where(ArtifactRow.tenant_id == tenant_id)
        if run_id is not None:
            statement = statement.where(ArtifactRow.run_id == run_id)
        rows = await self._session.scalars(newest_first(statement, ArtifactRow, after, limit))
        return [_artifact(row) for row in rows]
