"""Billing's call to execution: raise a tenant's billing.past_due alert."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from aias.core.errors import Unavailable
from aias.core.protoconv import struct
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc

# The event type of the alert, as tenants subscribe their destinations to it.
PAST_DUE_ALERT = "billing.past_due"


class ExecutionClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float = 5.0) -> None:
        self._stub = pb_grpc.ExecutionServiceStub(channel)
        self._timeout = timeout_seconds

    async def raise_past_due(
        self, tenant_id: uuid.UUID, data: dict[str, Any], dedupe_key: str
    ) -> int:
        """Queues the alert for the tenant's subscribed destinations; raising it again with the
        same key adds nothing. Returns how many deliveries were queued."""
        request = pb.RaiseAlertRequest(
            tenant_id=str(tenant_id),
            event_type=PAST_DUE_ALERT,
            data=struct(data),
            dedupe_key=dedupe_key,
        )
        try:
            reply = await self._stub.RaiseAlert(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise Unavailable(
                "EXECUTION_UNAVAILABLE",
                f"the execution service did not take the alert ({error.code().name}); it is "
                "raised again with the next delivery",
            ) from None
        return int(reply.delivery_count)
