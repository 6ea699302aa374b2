"""The artifacts schema's 0002 migration on a database that already holds artifacts."""

from __future__ import annotations

import uuid

from alembic import command
from sqlalchemy import Connection, text

from tests.integration.conftest import alembic_config


def _as_tenant(connection: Connection, tenant: uuid.UUID) -> None:
    connection.execute(text("SELECT set_config('aias.tenant_id', :t, true)"), {"t": str(tenant)})


def test_existing_artifacts_get_blob_rows_counting_them(owner: Connection) -> None:
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
