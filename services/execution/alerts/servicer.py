"""gRPC protocol layer of the alert RPCs: proto <-> domain, nothing else."""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from aias.core.context import HTTP_CODE, require_tenant
from aias.core.db import parse_uuid
from aias.core.protoconv import struct, timestamp
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from aias.services.execution.alerts.domain import DeliveryState, envelope
from aias.services.execution.alerts.models import AlertAttemptRow, AlertDestinationRow
from aias.services.execution.alerts.service import AlertService, DeliveryView

DELIVERY_STATE = {
    state: pb.AlertDeliveryState.Value(f"ALERT_DELIVERY_STATE_{state.name}")
    for state in DeliveryState
}


def destination_pb(row: AlertDestinationRow) -> pb.AlertDestination:
    return pb.AlertDestination(
        id=str(row.id), url=row.url, events=row.events, create_time=timestamp(row.create_time)
    )


def attempt_pb(row: AlertAttemptRow) -> pb.AlertAttempt:
    return pb.AlertAttempt(
        attempt=row.attempt,
        attempt_time=timestamp(row.attempt_time),
        http_status=row.http_status,
        error=row.error,
        duration_ms=row.duration_ms,
    )


def delivery_pb(view: DeliveryView) -> pb.AlertDelivery:
    event = view.event
    state = DeliveryState(event.state)
    return pb.AlertDelivery(
        id=str(event.id),
        destination_id=str(event.destination_id),
        event_type=event.event_type,
        state=DELIVERY_STATE[state],
        create_time=timestamp(event.create_time),
        attempt_count=event.attempts,
        last_http_status=event.last_http_status,
        last_error=event.last_error,
        next_attempt_time=timestamp(
            event.next_attempt_time if state == DeliveryState.PENDING else None
        ),
        last_attempt_time=timestamp(event.last_attempt_time),
        payload=struct(envelope(event.event_type, event.create_time, event.data)),
        attempts=[attempt_pb(row) for row in view.attempts],
    )


class AlertServicer(pb_grpc.ExecutionServiceServicer):
    """The alert RPCs of ExecutionService; the execution servicer inherits them."""

    def __init__(self, alerts: AlertService) -> None:
        self._alerts = alerts

    async def CreateAlertDestination(
        self, request: pb.CreateAlertDestinationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateAlertDestinationResponse:
        row, secret = await self._alerts.create_destination(
            require_tenant(), request.url, list(request.events)
        )
        await context.send_initial_metadata(((HTTP_CODE, "201"),))
        return pb.CreateAlertDestinationResponse(
            alert_destination=destination_pb(row), secret=secret
        )

    async def ListAlertDestinations(
        self, request: pb.ListAlertDestinationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAlertDestinationsResponse:
        page = await self._alerts.list_destinations(
            require_tenant(), request.page_size, request.page_token
        )
        return pb.ListAlertDestinationsResponse(
            alert_destinations=[destination_pb(row) for row in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeleteAlertDestination(
        self, request: pb.DeleteAlertDestinationRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteAlertDestinationResponse:
        await self._alerts.delete_destination(require_tenant(), request.destination_id)
        return pb.DeleteAlertDestinationResponse()

    async def ListAlertDeliveries(
        self, request: pb.ListAlertDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAlertDeliveriesResponse:
        page = await self._alerts.list_deliveries(
            require_tenant(), request.destination_id, request.page_size, request.page_token
        )
        return pb.ListAlertDeliveriesResponse(
            alert_deliveries=[delivery_pb(view) for view in page.items],
            next_page_token=page.next_page_token,
        )

    async def RaiseAlert(
        self, request: pb.RaiseAlertRequest, context: grpc.aio.ServicerContext
    ) -> pb.RaiseAlertResponse:
        queued = await self._alerts.raise_alert(
            parse_uuid(request.tenant_id, "tenant_id"),
            request.event_type,
            json_format.MessageToDict(request.data),
            request.dedupe_key,
        )
        return pb.RaiseAlertResponse(delivery_count=queued)
