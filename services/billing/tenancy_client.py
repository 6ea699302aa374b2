"""Billing's calls to tenancy: read a tenant, and set its plan with the deciding event's time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from aias.core.errors import NotFound, Unavailable
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class TenantView:
    name: str
    plan: str


class TenancyClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float = 5.0) -> None:
        self._stub = pb_grpc.TenancyServiceStub(channel)
        self._timeout = timeout_seconds

    async def tenant(self, tenant_id: uuid.UUID) -> TenantView:
        try:
            reply = await self._stub.GetTenant(
                pb.GetTenantRequest(tenant_id=str(tenant_id)), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise _failure(error, tenant_id) from None
        return TenantView(reply.tenant.name, reply.tenant.plan)

    async def set_plan(self, tenant_id: uuid.UUID, plan: str, event_time: datetime) -> bool:
        """Sets the plan unless tenancy saw a newer change; False when it kept that one."""
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(event_time)
        try:
            reply = await self._stub.SetPlan(
                pb.SetPlanRequest(tenant_id=str(tenant_id), plan=plan, event_time=stamp),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _failure(error, tenant_id) from None
        return bool(reply.applied)


def _failure(error: grpc.aio.AioRpcError, tenant_id: uuid.UUID) -> NotFound | Unavailable:
    if error.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound("TENANT_NOT_FOUND", f"tenant {tenant_id} does not exist")
    return Unavailable(
        "TENANCY_UNAVAILABLE",
        f"the tenancy service did not answer ({error.code().name}); retry shortly",
    )
