"""Fixtures of the integration tier: real servers built by the production factories."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aias.core.clients import internal_channel
from aias.core.localdb import LocalDatabase
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
