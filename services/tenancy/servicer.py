"""gRPC protocol layer of tenancy: proto <-> domain, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC

import grpc

from aias.core.context import HTTP_CODE, require_tenant, role_var
from aias.core.entitlements import PLANS, Limits, limits_to_pb
from aias.core.errors import InvalidArgument
from aias.core.protoconv import timestamp
from aias.services.tenancy.changes import RESET, ChangeHub
from aias.services.tenancy.domain import Metric, Role, TenantStatus, key_prefix
from aias.services.tenancy.models import ApiKeyRow, MemberRow, TenantRow
from aias.services.tenancy.service import TenancyService, TenantChange
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as pb_grpc

_STATUS = {
    TenantStatus.ACTIVE: pb.TENANT_STATUS_ACTIVE,
    TenantStatus.SUSPENDED: pb.TENANT_STATUS_SUSPENDED,
}
_STATUS_FROM_PB: dict[int, TenantStatus] = {number: status for status, number in _STATUS.items()}
_ROLE = {Role.OWNER: pb.ROLE_OWNER, Role.ADMIN: pb.ROLE_ADMIN, Role.MEMBER: pb.ROLE_MEMBER}
_ROLE_FROM_PB: dict[int, Role] = {number: role for role, number in _ROLE.items()}
_METRIC: dict[int, Metric] = {
    pb.METRIC_RUNS: Metric.RUNS,
    pb.METRIC_ARTIFACT_STORAGE_BYTES: Metric.ARTIFACT_STORAGE_BYTES,
}
_CREATED = ((HTTP_CODE, "201"),)


def tenant_pb(row: TenantRow) -> pb.Tenant:
    message = pb.Tenant(
        id=str(row.id),
        name=row.name,
        plan=row.plan,
        status=_STATUS.get(TenantStatus(row.status), pb.TENANT_STATUS_UNSPECIFIED),
        create_time=timestamp(row.create_time),
        plan_change_time=timestamp(row.plan_change_time),
        limit_overrides=row.limit_overrides or {},
    )
    if row.allowed_step_types is not None:
        message.allowed_step_types_override.types.extend(row.allowed_step_types)
    return message


def api_key_pb(row: ApiKeyRow) -> pb.ApiKey:
    return pb.ApiKey(
        id=str(row.id),
        prefix=key_prefix(row.tenant_id, row.id),
        name=row.name,
        role=_ROLE[Role(row.role)],
        member_id=str(row.member_id or ""),
        create_time=timestamp(row.create_time),
        last_used_time=timestamp(row.last_used_time),
    )


def member_pb(row: MemberRow) -> pb.Member:
    return pb.Member(
        id=str(row.id),
        email=row.email,
        name=row.name,
        role=_ROLE[Role(row.role)],
        create_time=timestamp(row.create_time),
    )


def entitlements_pb(tenant: TenantRow, limits: Limits) -> pb.Entitlements:
    return pb.Entitlements(
        tenant_id=str(tenant.id),
        plan=tenant.plan,
        status=_STATUS[TenantStatus(tenant.status)],
        limits=limits_to_pb(limits),
    )


def _role(number: int, default: Role = Role.MEMBER) -> Role:
    if number == pb.ROLE_UNSPECIFIED:
        return default
    try:
        return _ROLE_FROM_PB[number]
    except KeyError:
        raise InvalidArgument("INVALID_ROLE", f"role {number} is not a role") from None


def _metric(number: int) -> Metric:
    try:
        return _METRIC[number]
    except KeyError:
        raise InvalidArgument("INVALID_METRIC", f"metric {number} is not a metric") from None


class TenancyServicer(pb_grpc.TenancyServiceServicer):
    def __init__(self, service: TenancyService, changes: ChangeHub) -> None:
        self._service = service
        self._changes = changes

    # -- tenants ----------------------------------------------------------------------------

    async def CreateTenant(
        self, request: pb.CreateTenantRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTenantResponse:
        tenant, key = await self._service.create_tenant(request.name, request.plan)
        await context.send_initial_metadata(_CREATED)
        return pb.CreateTenantResponse(tenant=tenant_pb(tenant), admin_key=key)

    async def ListTenants(
        self, request: pb.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTenantsResponse:
        page = await self._service.list_tenants(request.page_size, request.page_token)
        return pb.ListTenantsResponse(
            tenants=[tenant_pb(t) for t in page.items], next_page_token=page.next_page_token
        )

    async def UpdateTenant(
        self, request: pb.UpdateTenantRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateTenantResponse:
        status = None
        if request.HasField("status"):
            if request.status not in _STATUS_FROM_PB:
                raise InvalidArgument("INVALID_STATUS", "status must be active or suspended")
            status = _STATUS_FROM_PB[request.status]
        change = TenantChange(
            plan=request.plan if request.HasField("plan") else None,
            status=status,
            limit_overrides=dict(request.limit_overrides),
            clear_limit_overrides=tuple(request.clear_limit_overrides),
            allowed_step_types=list(request.allowed_step_types_override.types)
            if request.HasField("allowed_step_types_override")
            else None,
        )
        tenant, limits = await self._service.update_tenant(request.tenant_id, change)
        return pb.UpdateTenantResponse(tenant=tenant_pb(tenant), limits=limits_to_pb(limits))

    async def DeleteTenant(
        self, request: pb.DeleteTenantRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteTenantResponse:
        await self._service.delete_tenant(request.tenant_id)
        return pb.DeleteTenantResponse()

    async def GetCurrentTenant(
        self, request: pb.GetCurrentTenantRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCurrentTenantResponse:
        tenant, limits, usage = await self._service.current(require_tenant())
        role = role_var.get()
        return pb.GetCurrentTenantResponse(
            tenant=tenant_pb(tenant),
            limits=limits_to_pb(limits),
            usage=pb.Usage(
                period_start_time=timestamp(usage.period_start),
                period_end_time=timestamp(usage.period_end),
                runs=usage.runs,
                artifact_storage_bytes=usage.artifact_storage_bytes,
            ),
            role=_ROLE[Role(role)] if role in Role._value2member_map_ else pb.ROLE_UNSPECIFIED,
        )

    async def ListPlans(
        self, request: pb.ListPlansRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPlansResponse:
        return pb.ListPlansResponse(
            plans=[
                pb.Plan(name=name, limits=limits_to_pb(limits)) for name, limits in PLANS.items()
            ]
        )

    async def GetTenant(
        self, request: pb.GetTenantRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTenantResponse:
        return pb.GetTenantResponse(
            tenant=tenant_pb(await self._service.get_tenant(request.tenant_id))
        )

    async def SetPlan(
        self, request: pb.SetPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPlanResponse:
        if not request.HasField("event_time"):
            raise InvalidArgument("EVENT_TIME_REQUIRED", "event_time is required")
        tenant, applied = await self._service.set_plan(
            request.tenant_id, request.plan, request.event_time.ToDatetime(tzinfo=UTC)
        )
        return pb.SetPlanResponse(tenant=tenant_pb(tenant), applied=applied)

    # -- API keys ---------------------------------------------------------------------------

    async def AuthenticateApiKey(
        self, request: pb.AuthenticateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthenticateApiKeyResponse:
        principal = await self._service.authenticate(request.api_key)
        return pb.AuthenticateApiKeyResponse(
            tenant_id=str(principal.tenant_id),
            principal=principal.principal,
            role=_ROLE[principal.role],
        )

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        row, key = await self._service.create_key(
            require_tenant(), request.name, _role(request.role), request.member_id, role_var.get()
        )
        await context.send_initial_metadata(_CREATED)
        return pb.CreateApiKeyResponse(api_key=api_key_pb(row), key=key)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        page = await self._service.list_keys(
            require_tenant(), request.page_size, request.page_token
        )
        return pb.ListApiKeysResponse(
            api_keys=[api_key_pb(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteApiKeyResponse:
        await self._service.revoke_key(require_tenant(), request.key_id, role_var.get())
        return pb.DeleteApiKeyResponse()

    # -- members ----------------------------------------------------------------------------

    async def CreateMember(
        self, request: pb.CreateMemberRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateMemberResponse:
        row = await self._service.create_member(
            require_tenant(), request.email, request.name, _role(request.role), role_var.get()
        )
        await context.send_initial_metadata(_CREATED)
        return pb.CreateMemberResponse(member=member_pb(row))

    async def ListMembers(
        self, request: pb.ListMembersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMembersResponse:
        page = await self._service.list_members(
            require_tenant(), request.page_size, request.page_token
        )
        return pb.ListMembersResponse(
            members=[member_pb(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def UpdateMember(
        self, request: pb.UpdateMemberRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateMemberResponse:
        row = await self._service.update_member(
            require_tenant(),
            request.member_id,
            request.name if request.HasField("name") else None,
            _role(request.role) if request.HasField("role") else None,
            role_var.get(),
        )
        return pb.UpdateMemberResponse(member=member_pb(row))

    async def DeleteMember(
        self, request: pb.DeleteMemberRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteMemberResponse:
        await self._service.delete_member(require_tenant(), request.member_id, role_var.get())
        return pb.DeleteMemberResponse()

    # -- entitlements and usage -------------------------------------------------------------

    async def GetEntitlements(
        self, request: pb.GetEntitlementsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEntitlementsResponse:
        tenant, limits = await self._service.entitlements(request.tenant_id)
        return pb.GetEntitlementsResponse(entitlements=entitlements_pb(tenant, limits))

    async def WatchEntitlements(
        self, request: pb.WatchEntitlementsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        async for tenant_id in self._changes.watch():
            yield pb.WatchEntitlementsResponse(tenant_id=tenant_id, reset=tenant_id == RESET)

    async def ReserveUsage(
        self, request: pb.ReserveUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveUsageResponse:
        found = await self._service.reserve(
            request.tenant_id, _metric(request.metric), request.amount, request.partial
        )
        reply = pb.ReserveUsageResponse(
            granted=found.granted,
            used=found.used,
            period_start_time=timestamp(found.period_start),
            period_end_time=timestamp(found.period_end),
            plan=found.plan,
        )
        if found.limit is not None:
            reply.limit = found.limit
        return reply

    async def ReleaseUsage(
        self, request: pb.ReleaseUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseUsageResponse:
        period = (
            request.period_start_time.ToDatetime(tzinfo=UTC)
            if request.HasField("period_start_time")
            else None
        )
        used = await self._service.release(
            request.tenant_id, _metric(request.metric), request.amount, period
        )
        return pb.ReleaseUsageResponse(used=used)
