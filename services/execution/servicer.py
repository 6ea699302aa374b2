"""gRPC protocol layer of execution: proto <-> domain, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime

import grpc
from google.protobuf import json_format, timestamp_pb2

from aias.core.context import HTTP_CODE, require_tenant
from aias.core.errors import InvalidArgument
from aias.core.protoconv import struct, timestamp
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from services.execution.domain import RunStatus, StepDefinition, StepStatus
from services.execution.models import RunRow, StepLogRow, WebhookEndpointRow
from services.execution.service import ExecutionService, WorkflowView

RUN_STATUS = {status: pb.RunStatus.Value(f"RUN_STATUS_{status.name}") for status in RunStatus}
RUN_STATUS_OF = {number: status for status, number in RUN_STATUS.items()}
STEP_STATUS = {status: pb.StepStatus.Value(f"STEP_STATUS_{status.name}") for status in StepStatus}


def workflow_pb(view: WorkflowView) -> pb.Workflow:
    row = view.row
    return pb.Workflow(
        id=str(row.id),
        name=row.name,
        version=row.current_version,
        enabled=row.enabled,
        steps=[pb.Step(id=s.id, type=s.type, config=struct(s.config)) for s in view.steps],
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
    )


def endpoint_pb(row: WebhookEndpointRow, url: str = "") -> pb.WebhookEndpoint:
    return pb.WebhookEndpoint(
        id=str(row.id),
        tenant_id=str(row.tenant_id),
        workflow_id=str(row.workflow_id),
        name=row.name,
        enabled=row.enabled,
        url=url,
        create_time=timestamp(row.create_time),
    )


def run_pb(row: RunRow) -> pb.Run:
    return pb.Run(
        id=str(row.id),
        workflow_id=str(row.workflow_id),
        workflow_version=row.workflow_version,
        status=RUN_STATUS[RunStatus(row.status)],
        attempt=row.attempt,
        error=row.error,
        create_time=timestamp(row.create_time),
        start_time=timestamp(row.start_time),
        end_time=timestamp(row.end_time),
        retry_of=str(row.retry_of or ""),
        cancel_requested=row.cancel_requested,
    )


def run_statuses(numbers: Iterable[pb.RunStatus.ValueType]) -> list[RunStatus]:
    """The statuses a list filter names; RUN_STATUS_UNSPECIFIED names none and is refused."""
    statuses = []
    for number in numbers:
        status = RUN_STATUS_OF.get(number)
        if status is None:
            raise InvalidArgument("INVALID_STATUS", f"status {number} is not a run status")
        statuses.append(status)
    return statuses


def optional_time(message: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return message.ToDatetime(tzinfo=UTC) if present else None


def step_log_pb(row: StepLogRow) -> pb.StepLog:
    return pb.StepLog(
        step_id=row.step_id,
        type=row.type,
        status=STEP_STATUS[StepStatus(row.status)],
        attempt=row.attempt,
        start_time=timestamp(row.start_time),
        end_time=timestamp(row.end_time),
        duration_ms=row.duration_ms,
        message=row.message,
        output_bytes=row.output_bytes,
        output_sha256=row.output_sha256,
        error=row.error,
    )


class ExecutionServicer(pb_grpc.ExecutionServiceServicer):
    def __init__(self, service: ExecutionService) -> None:
        self._service = service

    async def CreateWorkflow(
        self, request: pb.CreateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateWorkflowResponse:
        steps = [
            StepDefinition(s.id, s.type, json_format.MessageToDict(s.config)) for s in request.steps
        ]
        enabled = request.enabled if request.HasField("enabled") else True
        view = await self._service.create_workflow(require_tenant(), request.name, steps, enabled)
        await context.send_initial_metadata(((HTTP_CODE, "201"),))
        return pb.CreateWorkflowResponse(workflow=workflow_pb(view))

    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetWorkflowResponse:
        view = await self._service.get_workflow(require_tenant(), request.workflow_id)
        return pb.GetWorkflowResponse(workflow=workflow_pb(view))

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkflowsResponse:
        page = await self._service.list_workflows(
            require_tenant(), request.page_size, request.page_token
        )
        return pb.ListWorkflowsResponse(
            workflows=[workflow_pb(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateWebhookEndpointResponse:
        row, secret, url = await self._service.create_endpoint(
            require_tenant(), request.workflow_id, request.name
        )
        await context.send_initial_metadata(((HTTP_CODE, "201"),))
        return pb.CreateWebhookEndpointResponse(
            webhook_endpoint=endpoint_pb(row, url), secret=secret
        )

    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookEndpointsResponse:
        page = await self._service.list_endpoints(
            require_tenant(), request.tenant_id, request.page_size, request.page_token
        )
        return pb.ListWebhookEndpointsResponse(
            webhook_endpoints=[endpoint_pb(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def TriggerWebhook(
        self, request: pb.TriggerWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.TriggerWebhookResponse:
        run, created = await self._service.trigger(
            request.tenant_id,
            request.secret,
            request.http_body.data,
            request.http_body.content_type,
            request.idempotency_key,
        )
        # 202: the run is queued; a repeated idempotency key gets 200 and the first run.
        await context.send_initial_metadata(((HTTP_CODE, "202" if created else "200"),))
        return pb.TriggerWebhookResponse(
            run_id=str(run.id), status=RUN_STATUS[RunStatus(run.status)]
        )

    async def AdmitWebhook(
        self, request: pb.AdmitWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdmitWebhookResponse:
        limit = await self._service.admit(request.tenant_id, request.secret)
        return pb.AdmitWebhookResponse(max_body_bytes=limit)

    async def GetRun(
        self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRunResponse:
        return pb.GetRunResponse(
            run=run_pb(await self._service.get_run(require_tenant(), request.run_id))
        )

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsResponse:
        page = await self._service.list_runs(
            require_tenant(),
            request.workflow_id,
            run_statuses(request.status),
            optional_time(request.create_time_after, request.HasField("create_time_after")),
            optional_time(request.create_time_before, request.HasField("create_time_before")),
            request.page_size,
            request.page_token,
        )
        return pb.ListRunsResponse(
            runs=[run_pb(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def ListRunLogs(
        self, request: pb.ListRunLogsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunLogsResponse:
        rows = await self._service.run_logs(require_tenant(), request.run_id)
        return pb.ListRunLogsResponse(steps=[step_log_pb(r) for r in rows])

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelRunResponse:
        run, at_once = await self._service.cancel_run(require_tenant(), request.run_id)
        # 202: a worker holds the run and stops it at its next step boundary.
        await context.send_initial_metadata(((HTTP_CODE, "200" if at_once else "202"),))
        return pb.CancelRunResponse(run=run_pb(run))

    async def RetryRun(
        self, request: pb.RetryRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.RetryRunResponse:
        run = await self._service.retry_run(require_tenant(), request.run_id)
        await context.send_initial_metadata(((HTTP_CODE, "202"),))
        return pb.RetryRunResponse(run=run_pb(run))

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRunResponse]:
        async for event in self._service.watch_run(require_tenant(), request.run_id):
            if isinstance(event, RunRow):
                yield pb.WatchRunResponse(run=run_pb(event))
            else:
                yield pb.WatchRunResponse(step=step_log_pb(event))
