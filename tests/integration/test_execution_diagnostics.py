"""What the dashboard reads from execution: the integrations catalog and a tenant's run stats."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aias.core.clients import internal_channel
from aias.core.localdb import LocalDatabase
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from services.execution import main as execution_main
from services.execution.steps import STEP_TYPES
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import Tenancy, running


@pytest.fixture(scope="module")
async def execution(
    database: LocalDatabase, tenancy: Tenancy
) -> AsyncIterator[pb_grpc.ExecutionServiceStub]:
    built = await execution_main.build_server(
        execution_main.ExecutionSettings(
            server_settings("execution"),
            database.app_url,
            tenancy.address,
            "http://gateway.test",
            entitlements_ttl=0.0,
            max_attempts=1,
        )
    )
    async with running(built) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        yield pb_grpc.ExecutionServiceStub(channel)
        await channel.close()


async def test_the_catalog_lists_every_step_type_available_ones_first(
    execution: pb_grpc.ExecutionServiceStub,
) -> None:
    reply = await execution.ListIntegrations(
        pb.ListIntegrationsRequest(), metadata=[("x-aias-role", "member")]
    )

    assert {i.type for i in reply.integrations} == set(STEP_TYPES)
    statuses = [i.status for i in reply.integrations]
    assert statuses == sorted(statuses)  # AVAILABLE (1) before COMING_SOON (2)
    by_type = {i.type: i for i in reply.integrations}
    assert by_type["transform"].status == pb.INTEGRATION_STATUS_AVAILABLE
    assert (by_type["slack"].title, by_type["slack"].status) == (
        "Slack message",
        pb.INTEGRATION_STATUS_COMING_SOON,
    )
    assert all(i.description for i in reply.integrations)
