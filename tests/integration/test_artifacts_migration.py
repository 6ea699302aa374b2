"""The artifacts schema's 0002 migration on a database that already holds artifacts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text

from aias.core.localdb import LocalDatabase
from aias.core.migrate import _sync_url, migrations_dir


@pytest.fixture
def owner(database: LocalDatabase) -> Iterator[Connection]:
    """The owner's connection in one transaction that is rolled back, DDL included."""
    engine = create_engine(_sync_url(database.owner_url))
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            yield connection
            # The shared database is left as it was, schema version included.
            transaction.rollback()
    finally:
        engine.dispose()


def _alembic(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir("artifacts")))
    config.attributes["connection"] = connection
    config.attributes["schema"] = "artifacts"
    return config


def _as_tenant(connection: Connection, tenant: uuid.UUID) -> None:
    connection.execute(text("SELECT set_config('aias.tenant_id', :t, true)"), {"t": str(tenant)})


def test_existing_artifacts_get_blob_rows_counting_them(owner: Connection) -> None:
    command.downgrade(_alembic(owner), "artifacts_0001")
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

    command.upgrade(_alembic(owner), "head")

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
