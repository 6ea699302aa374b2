"""Shared fixtures: one real PostgreSQL (embedded, or AIAS_TEST_DATABASE_URL) per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aias.core.db import Database, create_engine
from aias.core.localdb import LocalDatabase, prepare
from aias.core.settings import ServerSettings
from tests.s3_server import moto_server

INTERNAL_TOKEN = "test-internal-token"
DASHBOARD_SECRET = "test-dashboard-secret-0123456789abcdef"


def server_settings(service: str, grace_seconds: float = 1.0) -> ServerSettings:
    """Settings for a real server on an ephemeral port, as tests boot them."""
    return ServerSettings(
        service=service,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        internal_token=INTERNAL_TOKEN,
        log_level="INFO",
        ready_file=None,
        grace_seconds=grace_seconds,
    )


@pytest.fixture(scope="session")
def database() -> Iterator[LocalDatabase]:
    """A migrated database; its own embedded server so a local suite on 5432/54329 is untouched.

    The data folder is outside pytest's temporary tree: pytest resets that tree to mode 0700
    whenever another pytest starts, which would lock the server's system account out of it.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="aias-test-pg-"))
    local = prepare(
        data_dir, os.environ.get("AIAS_TEST_DATABASE_URL") or None, None, embedded_port=0
    )
    yield local
    local.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def app_db(database: LocalDatabase) -> AsyncIterator[Database]:
    """A Database connected as the application role (subject to RLS)."""
    db = Database(create_engine(database.app_url, name="tests", max_connections=4))
    yield db
    await db.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One moto S3 server for the session; every test makes its own bucket in it."""
    with moto_server() as endpoint:
        yield endpoint
