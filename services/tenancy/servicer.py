"""gRPC protocol layer of tenancy: proto <-> domain, nothing else."""

from __future__ import annotations

import grpc

from aias.core.context import HTTP_CODE, require_tenant
from aias.core.protoconv import timestamp
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as pb_grpc
from services.tenancy.domain import Entitlements, Role, TenantStatus
from services.tenancy.models import TenantRow
from services.tenancy.service import TenancyService

_STATUS = {
    TenantStatus.ACTIVE: pb.TENANT_STATUS_ACTIVE,
    TenantStatus.SUSPENDED: pb.TENANT_STATUS_SUSPENDED,
}
_ROLE = {Role.ADMIN: pb.ROLE_ADMIN, Role.MEMBER: pb.ROLE_MEMBER}


def tenant_pb(row: TenantRow) -> pb.Tenant:
    return pb.Tenant(
        id=str(row.id),
        name=row.name,
        plan=row.plan,
        status=_STATUS.get(TenantStatus(row.status), pb.TENANT_STATUS_UNSPECIFIED),
        create_time=timestamp(row.create_time),
    )


def entitlements_pb(value: Entitlements) -> pb.Entitlements:
    return pb.Entitlements(
        plan=value.plan,
        runs_per_month=value.runs_per_month,
        max_concurrent_runs=value.max_concurrent_runs,
        max_payload_bytes=value.max_payload_bytes,
        webhook_requests_per_minute=value.webhook_requests_per_minute,
        artifact_storage_bytes=value.artifact_storage_bytes,
        artifact_retention_days=value.artifact_retention_days,
    )


class TenancyServicer(pb_grpc.TenancyServiceServicer):
    def __init__(self, service: TenancyService) -> None:
        self._service = service

    async def CreateTenant(
        self, request: pb.CreateTenantRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTenantResponse:
        tenant, key = await self._service.create_tenant(request.name, request.plan)
        await context.send_initial_metadata(((HTTP_CODE, "201"),))
        return pb.CreateTenantResponse(tenant=tenant_pb(tenant), admin_key=key)

    async def GetCurrentTenant(
        self, request: pb.GetCurrentTenantRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCurrentTenantResponse:
        entitlements, tenant = await self._service.entitlements(require_tenant())
        return pb.GetCurrentTenantResponse(
            tenant=tenant_pb(tenant), entitlements=entitlements_pb(entitlements)
        )

    async def GetTenant(
        self, request: pb.GetTenantRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTenantResponse:
        return pb.GetTenantResponse(
            tenant=tenant_pb(await self._service.get_tenant(request.tenant_id))
        )

    async def AuthenticateApiKey(
        self, request: pb.AuthenticateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthenticateApiKeyResponse:
        principal = await self._service.authenticate(request.api_key)
        return pb.AuthenticateApiKeyResponse(
            tenant_id=str(principal.tenant_id),
            principal=principal.principal,
            role=_ROLE[principal.role],
        )

    async def GetEntitlements(
        self, request: pb.GetEntitlementsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEntitlementsResponse:
        entitlements, tenant = await self._service.entitlements(request.tenant_id)
        return pb.GetEntitlementsResponse(
            entitlements=entitlements_pb(entitlements),
            status=_STATUS.get(TenantStatus(tenant.status), pb.TENANT_STATUS_UNSPECIFIED),
        )
