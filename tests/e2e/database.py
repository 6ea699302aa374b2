"""The end-to-end suites' databases: each its own embedded server, read back as superuser."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine

from aias.core.localdb import LocalDatabase, prepare


@contextmanager
def fresh_database() -> Iterator[LocalDatabase]:
    """A migrated database on its own embedded server: a suite's workers then claim only the
    runs its own tests queue.

    The data folder is outside pytest's temporary tree, which pytest resets to mode 0700
    whenever another pytest starts, locking the server's system account out of it.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="aias-e2e-pg-"))
    local = prepare(data_dir, None, None, embedded_port=0)
    try:
        yield local
    finally:
        local.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def superuser(database: LocalDatabase) -> Iterator[Engine]:
    """The database as its superuser, which row-level security does not filter: what the tests
    check was stored, across tenants and schemas."""
    engine = create_engine(database.superuser_url())
    try:
        yield engine
    finally:
        engine.dispose()
