"""gRPC protocol layer of billing: proto <-> domain, nothing else."""

from __future__ import annotations

import grpc

from aias.billing.v1 import billing_service_pb2 as pb
from aias.billing.v1 import billing_service_pb2_grpc as pb_grpc
from services.billing.service import BillingService


class BillingServicer(pb_grpc.BillingServiceServicer):
    def __init__(self, service: BillingService) -> None:
        self._service = service

    async def HandleStripeEvent(
        self, request: pb.HandleStripeEventRequest, context: grpc.aio.ServicerContext
    ) -> pb.HandleStripeEventResponse:
        event, duplicate = await self._service.handle_event(
            request.http_body.data, request.stripe_signature
        )
        return pb.HandleStripeEventResponse(
            event_id=event.id, event_type=event.type, duplicate=duplicate
        )

    async def GetBillingStatus(
        self, request: pb.GetBillingStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBillingStatusResponse:
        return pb.GetBillingStatusResponse(configured=self._service.configured)
