"""Entitlements from tenancy over gRPC, cached briefly so the webhook path rarely waits on it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc

from aias.core.cache import TtlCache
from aias.core.errors import NotFound, Unavailable
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc


@dataclass(frozen=True)
class TenantLimits:
    active: bool
    max_payload_bytes: int
    runs_per_month: int
    max_concurrent_runs: int


class EntitlementsClient:
    """Asks tenancy for a tenant's limits; a plan change reaches this cache within `ttl` seconds."""

    def __init__(
        self, channel: grpc.aio.Channel, ttl: float = 30.0, max_entries: int = 10_000
    ) -> None:
        self._stub = tenancy_grpc.TenancyServiceStub(channel)
        self._cache: TtlCache[uuid.UUID, TenantLimits] = TtlCache(ttl, max_entries)

    async def limits(self, tenant_id: uuid.UUID) -> TenantLimits:
        if (cached := self._cache.get(tenant_id)) is not None:
            return cached
        try:
            response = await self._stub.GetEntitlements(
                tenancy_pb.GetEntitlementsRequest(tenant_id=str(tenant_id)), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound("TENANT_NOT_FOUND", f"tenant {tenant_id} does not exist") from None
            raise Unavailable(
                "TENANCY_UNAVAILABLE", "the tenancy service did not answer; retry shortly"
            ) from None
        found = response.entitlements
        limits = TenantLimits(
            active=response.status == tenancy_pb.TENANT_STATUS_ACTIVE,
            max_payload_bytes=found.max_payload_bytes,
            runs_per_month=found.runs_per_month,
            max_concurrent_runs=found.max_concurrent_runs,
        )
        self._cache.put(tenant_id, limits)
        return limits
