"""Each gRPC process: reflection lists its service, health is SERVING, no credential fails."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from aias.core.launcher import Stack
from tests.conftest import INTERNAL_TOKEN

SERVICES = {
    "tenancy": "aias.tenancy.v1.TenancyService",
    "execution": "aias.execution.v1.ExecutionService",
    "artifacts": "aias.artifacts.v1.ArtifactsService",
    "billing": "aias.billing.v1.BillingService",
}
# A unary method of each; an empty message is a valid (all-defaults) request for every one.
PROBE = {
    "tenancy": "GetTenant",
    "execution": "GetRun",
    "artifacts": "GetArtifact",
    "billing": "GetBillingStatus",
}
AUTH = (("authorization", f"Bearer {INTERNAL_TOKEN}"),)


async def _reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def request() -> object:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(request(), metadata=AUTH):
        return {service.name for service in response.list_services_response.service}
    return set()


@pytest.mark.parametrize("process", sorted(SERVICES))
async def test_reflection_health_and_credential(stack: Stack, process: str) -> None:
    async with grpc.aio.insecure_channel(stack.address(process)) as channel:
        assert SERVICES[process] in await _reflected_services(channel)
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICES[process]):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        method = channel.unary_unary(
            f"/{SERVICES[process]}/{PROBE[process]}",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await method(empty_pb2.Empty(), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("process", ["execution-worker", "execution-alerts"])
async def test_processes_without_a_service_serve_health(stack: Stack, process: str) -> None:
    async with grpc.aio.insecure_channel(stack.address(process)) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_each_process_exports_rpc_metrics(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.address("tenancy")) as channel:
        method = channel.unary_unary(
            "/aias.tenancy.v1.TenancyService/GetTenant",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await method(empty_pb2.Empty(), metadata=AUTH)  # an empty tenant id is refused
    texts = {}
    async with aiohttp.ClientSession() as http:
        for name, child in stack.children.items():
            if name != "gateway":
                async with http.get(f"http://127.0.0.1:{child.metrics_port}/metrics") as reply:
                    texts[name] = await reply.text()
    assert all("grpc_server_handling_seconds_bucket" in text for text in texts.values())
    assert (
        'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="GetTenant",'
        'grpc_service="aias.tenancy.v1.TenancyService"}' in texts["tenancy"]
    )
