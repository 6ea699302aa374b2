"""The artifacts schema's migrations on a database that already holds artifacts."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from tests.integration.conftest import alembic_config


def _as_tenant(connection: Connection, tenant: uuid.UUID) -> None:
    connection.execute(text("SELECT set_config('aias.tenant_id', :t, true)"), {"t": str(tenant)})


def _forget_inline_content(owner: Connection) -> None:
    """Other tests' blobs kept in rows, dropped (in the rolled-back transaction), so the
    schema can go back below 0003."""
    owner.execute(text("ALTER TABLE artifacts.blobs NO FORCE ROW LEVEL SECURITY"))
    owner.execute(text("UPDATE artifacts.blobs SET content = NULL"))
    owner.execute(text("ALTER TABLE artifacts.blobs FORCE ROW LEVEL SECURITY"))


def _blob_columns(owner: Connection) -> set[str]:
    return set(
        owner.execute(
            text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'artifacts' AND table_name = 'blobs'"
            )
        ).scalars()
    )


def test_existing_artifacts_get_blob_rows_counting_them(owner: Connection) -> None:
    _forget_inline_content(owner)
    command.downgrade(alembic_config(owner, "artifacts"), "artifacts_0001")
    a, b = uuid.uuid4(), uuid.uuid4()
    rows = [(a, "1" * 64, 10), (a, "1" * 64, 10), (a, "2" * 64, 20), (b, "1" * 64, 10)]
    for tenant, sha256, size in rows:
        _as_tenant(owner, tenant)
        owner.execute(
            text(
                "INSERT INTO artifacts.artifacts (id, tenant_id, run_id, step_id, name, "
                "media_type, size_bytes, sha256) VALUES (:id, :t, :run, 's', :name, "
                "'text/plain', :size, :sha)"
            ),
            {
                "id": uuid.uuid4(),
                "t": tenant,
                "run": uuid.uuid4(),
                "name": "n",
                "size": size,
                "sha": sha256,
            },
        )

    command.upgrade(alembic_config(owner, "artifacts"), "head")

    counted = {}
    for tenant in (a, b):
        _as_tenant(owner, tenant)
        counted[tenant] = {
            (row.sha256, row.size_bytes, row.refcount, row.unreferenced_time)
            for row in owner.execute(text("SELECT * FROM artifacts.blobs"))
        }
    assert counted == {
        a: {("1" * 64, 10, 2, None), ("2" * 64, 20, 1, None)},
        b: {("1" * 64, 10, 1, None)},
    }
    forced = owner.execute(
        text("SELECT relforcerowsecurity FROM pg_class WHERE oid = 'artifacts.artifacts'::regclass")
    ).scalar()
    assert forced is True


def test_blobs_kept_in_rows_block_going_back_below_0003(owner: Connection) -> None:
    _forget_inline_content(owner)
    tenant = uuid.uuid4()
    _as_tenant(owner, tenant)
    owner.execute(
        text(
            "INSERT INTO artifacts.blobs (tenant_id, sha256, size_bytes, content) "
            "VALUES (:t, :sha, 2, '\\x7b7d')"
        ),
        {"t": tenant, "sha": "3" * 64},
    )

    with pytest.raises(DBAPIError, match="AIAS_ARTIFACTS_INLINE_BYTES"):
        command.downgrade(alembic_config(owner, "artifacts"), "artifacts_0002_blobs")


def test_0003_goes_back_without_blobs_kept_in_rows(owner: Connection) -> None:
    _forget_inline_content(owner)
    command.downgrade(alembic_config(owner, "artifacts"), "artifacts_0002_blobs")
    assert "content" not in _blob_columns(owner)
    forced = owner.execute(
        text("SELECT relforcerowsecurity FROM pg_class WHERE oid = 'artifacts.blobs'::regclass")
    ).scalar()
    assert forced is True

    command.upgrade(alembic_config(owner, "artifacts"), "head")
    assert "content" in _blob_columns(owner)
