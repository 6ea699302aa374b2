"""Client channels spread calls over every replica; a server never shares its port."""

from __future__ import annotations

import dataclasses

import pytest

from aias.core.clients import internal_channel
from aias.core.grpc_server import BindError, BuiltServer
from aias.core.localdb import LocalDatabase
from aias.services.tenancy import main as tenancy_main
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as pb_grpc
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import running


async def test_one_channel_round_robins_over_two_replicas(database: LocalDatabase) -> None:
    settings = tenancy_main.TenancySettings(server_settings("tenancy"), database.app_url)
    first = await tenancy_main.build_server(settings)
    second = await tenancy_main.build_server(settings)
    async with running(first) as one, running(second) as two:
        # What `dns:///tenancy:50051` gives when the name resolves to two replicas.
        channel = internal_channel(f"ipv4:{one},{two}", INTERNAL_TOKEN)
        stub = pb_grpc.TenancyServiceStub(channel)
        for _ in range(20):
            await stub.ListPlans(pb.ListPlansRequest())
        await channel.close()

    def served(server: BuiltServer) -> float:
        labels = {
            "grpc_service": "aias.tenancy.v1.TenancyService",
            "grpc_method": "ListPlans",
            "grpc_code": "OK",
        }
        value = server.metrics.registry.get_sample_value("grpc_server_handled_total", labels)
        return float(value or 0)

    assert served(first) + served(second) == 20
    assert min(served(first), served(second)) >= 5, "both replicas get calls"


async def test_a_second_server_on_a_used_port_fails_at_start(database: LocalDatabase) -> None:
    settings = tenancy_main.TenancySettings(server_settings("tenancy"), database.app_url)
    first = await tenancy_main.build_server(settings)
    async with running(first):
        taken = dataclasses.replace(settings.server, port=first.port)
        with pytest.raises(BindError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await tenancy_main.build_server(dataclasses.replace(settings, server=taken))
