"""Boots real gRPC servers in-process on port 0 with the production factories."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aias.core.grpc_server import BuiltServer, RpcMetrics
from aias.execution.v1 import execution_service_pb2_grpc as execution_grpc
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc


@asynccontextmanager
async def running(built: BuiltServer) -> AsyncIterator[str]:
    """Starts a built server and yields its address; stops it (gracefully) afterwards."""
    await built.start()
    try:
        yield f"127.0.0.1:{built.port}"
    finally:
        await built.stop(1.0)


@dataclass
class Tenancy:
    """A running tenancy server and a stub to it, for tests that need real tenants."""

    address: str
    stub: tenancy_grpc.TenancyServiceStub
    metrics: RpcMetrics

    def handled(self, method: str) -> float:
        """How many calls of a tenancy RPC the server has answered with OK."""
        labels = {
            "grpc_service": "aias.tenancy.v1.TenancyService",
            "grpc_method": method,
            "grpc_code": "OK",
        }
        value = self.metrics.registry.get_sample_value("grpc_server_handled_total", labels)
        return value or 0.0

    async def new_tenant(self, plan: str = "free") -> uuid.UUID:
        reply = await self.stub.CreateTenant(tenancy_pb.CreateTenantRequest(name="t", plan=plan))
        return uuid.UUID(reply.tenant.id)

    async def set_limits(self, tenant_id: uuid.UUID, **limits: int) -> None:
        await self.stub.UpdateTenant(
            tenancy_pb.UpdateTenantRequest(tenant_id=str(tenant_id), limit_overrides=limits)
        )


@dataclass
class Execution:
    """A running execution server and a stub to it."""

    address: str
    stub: execution_grpc.ExecutionServiceStub
