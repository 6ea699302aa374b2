"""Fixtures of the integration tier: real servers built by the production factories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from alembic.config import Config
from sqlalchemy import Connection, create_engine

from aias.core.clients import internal_channel
from aias.core.localdb import LocalDatabase
from aias.core.migrate import _sync_url, migrations_dir
from aias.execution.v1 import execution_service_pb2_grpc as execution_grpc
from aias.services.execution import main as execution_main
from aias.services.tenancy import main as tenancy_main
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import Execution, Tenancy, running


@pytest.fixture(scope="module")
async def tenancy(database: LocalDatabase) -> AsyncIterator[Tenancy]:
    """A real tenancy server on an ephemeral port: other services ask it for tenants' limits."""
    built = await tenancy_main.build_server(
        tenancy_main.TenancySettings(server_settings("tenancy"), database.app_url)
    )
    async with running(built) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        yield Tenancy(address, tenancy_grpc.TenancyServiceStub(channel), built.metrics)
        await channel.close()


@pytest.fixture(scope="module")
async def execution(database: LocalDatabase, tenancy: Tenancy) -> AsyncIterator[Execution]:
    """A real execution server on an ephemeral port (billing raises its alerts through it)."""
    built = await execution_main.build_server(
        execution_main.ExecutionSettings(
            server_settings("execution"),
            database.app_url,
            tenancy.address,
            "http://gateway.test",
            entitlements_ttl=300.0,
            max_attempts=2,
        )
    )
    async with running(built) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        yield Execution(address, execution_grpc.ExecutionServiceStub(channel))
        await channel.close()


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


def alembic_config(connection: Connection, service: str) -> Config:
    """Alembic on `connection` for one service's schema, to move it between revisions."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir(service)))
    config.attributes["connection"] = connection
    config.attributes["schema"] = service
    return config
