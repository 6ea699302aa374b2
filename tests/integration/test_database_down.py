"""A service whose database cannot be reached answers 503-able UNAVAILABLE and reports NOT_SERVING."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from aias.core.clients import internal_channel
from aias.core.localdb import LocalDatabase, prepare
from aias.services.tenancy import main as tenancy_main
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as pb_grpc
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import running


def _unreachable(app_url: str) -> str:
    """The application URL pointed at a port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host_part = app_url.rsplit("@", 1)[1].split("/", 1)
    return app_url.rsplit("@", 1)[0] + f"@127.0.0.1:{port}/" + host_part[1]


async def test_database_outage_is_unavailable_with_retry_after_and_not_serving(
    database: LocalDatabase,
) -> None:
    built = await tenancy_main.build_server(
        tenancy_main.TenancySettings(server_settings("tenancy"), _unreachable(database.app_url))
    )
    async with running(built) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.TenancyServiceStub(channel).CreateTenant(
                pb.CreateTenantRequest(name="Acme")
            )
        status = rpc_status.from_call(caught.value)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(info)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (info.reason, info.metadata["retry_after_seconds"]) == ("DATABASE_UNAVAILABLE", "2")
        assert "@" not in (caught.value.details() or ""), "no connection string in the message"
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(50):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the server kept reporting SERVING without its database")
        await channel.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _health(channel: grpc.aio.Channel, wanted: int, within: float = 15.0) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if (await health.Check(health_pb2.HealthCheckRequest(service=""))).status == wanted:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"health did not become {wanted} within {within}s")


async def test_a_restarted_database_is_used_again_without_restarting_the_service() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="aias-pg-restart-"))
    local = await asyncio.to_thread(prepare, data_dir, None, None, embedded_port=_free_port())
    assert local.embedded is not None
    try:
        built = await tenancy_main.build_server(
            tenancy_main.TenancySettings(server_settings("tenancy"), local.app_url)
        )
        async with running(built) as address:
            channel = internal_channel(address, INTERNAL_TOKEN)
            stub = pb_grpc.TenancyServiceStub(channel)
            await stub.CreateTenant(pb.CreateTenantRequest(name="before"))
            await asyncio.to_thread(local.embedded.stop)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateTenant(pb.CreateTenantRequest(name="during"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            await _health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.to_thread(local.embedded.start)
            await _health(channel, health_pb2.HealthCheckResponse.SERVING)
            created = await stub.CreateTenant(pb.CreateTenantRequest(name="after"))
            assert created.tenant.name == "after"
            await channel.close()
    finally:
        await asyncio.to_thread(local.stop)
        shutil.rmtree(data_dir, ignore_errors=True)
