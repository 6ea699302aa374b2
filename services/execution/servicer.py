"""gRPC protocol layer of execution: proto <-> domain, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime

import grpc
from google.protobuf import json_format, timestamp_pb2

from aias.core.context import HTTP_CODE, require_tenant
from aias.core.errors import InvalidArgument
from aias.core.grpc_server import serve_batch
from aias.core.protoconv import struct, timestamp, update_paths
from aias.execution.v1 import execution_service_pb2 as pb
from aias.services.execution.alerts.service import AlertService
from aias.services.execution.alerts.servicer import AlertServicer
from aias.services.execution.domain import RunStatus, StepDefinition, StepStatus, steps_from_json
from aias.services.execution.models import (
    RunRow,
    StepLogRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
    WorkflowVersionRow,
)
from aias.services.execution.service import (
    EndpointChanges,
    ExecutionService,
    RunStats,
    WebhookAdmission,
    WebhookCall,
    WorkflowChanges,
    WorkflowView,
)
from aias.services.execution.steps import STEP_TYPES, StepSpec

RUN_STATUS = {status: pb.RunStatus.Value(f"RUN_STATUS_{status.name}") for status in RunStatus}
RUN_STATUS_OF = {number: status for status, number in RUN_STATUS.items()}
STEP_STATUS = {status: pb.StepStatus.Value(f"STEP_STATUS_{status.name}") for status in StepStatus}
WORKFLOW_FIELDS = ("name", "steps", "enabled")
ENDPOINT_FIELDS = ("name", "enabled", "signing_secret", "generate_signing_secret")
# The method each call of a TriggerWebhooks batch is served, measured and authorized as.
TRIGGER_WEBHOOK = "/aias.execution.v1.ExecutionService/TriggerWebhook"


def steps_pb(steps: Iterable[StepDefinition]) -> list[pb.Step]:
    return [pb.Step(id=s.id, type=s.type, config=struct(s.config)) for s in steps]


def steps_of(steps: Iterable[pb.Step]) -> list[StepDefinition]:
    return [StepDefinition(s.id, s.type, json_format.MessageToDict(s.config)) for s in steps]


def integration_pb(spec: StepSpec) -> pb.Integration:
    return pb.Integration(
        type=spec.type,
        title=spec.title,
        description=spec.description,
        status=pb.INTEGRATION_STATUS_AVAILABLE
        if spec.available
        else pb.INTEGRATION_STATUS_COMING_SOON,
    )


def status_counts_pb(counts: dict[str, int]) -> list[pb.RunStatusCount]:
    """Every status, zeros included, in lifecycle order."""
    return [
        pb.RunStatusCount(status=RUN_STATUS[status], count=counts.get(status.value, 0))
        for status in RunStatus
    ]


def run_stats_pb(stats: RunStats) -> pb.GetRunStatsResponse:
    return pb.GetRunStatsResponse(
        last_hour=status_counts_pb(stats.counts.hour),
        last_day=status_counts_pb(stats.counts.day),
        latest_failures=[
            pb.RunFailure(
                run=run_pb(run),
                step_id=step.step_id if step else "",
                step_type=step.type if step else "",
                error=step.error if step else run.error,
            )
            for run, step in stats.failures
        ],
        queued_runs=stats.queue.queued,
        oldest_queued_time=timestamp(stats.queue.oldest_due_time),
        read_time=timestamp(stats.queue.read_time),
    )


def workflow_pb(view: WorkflowView) -> pb.Workflow:
    row = view.row
    return pb.Workflow(
        id=str(row.id),
        name=row.name,
        version=row.current_version,
        enabled=row.enabled,
        steps=steps_pb(view.steps),
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
    )


def version_pb(row: WorkflowVersionRow) -> pb.WorkflowVersion:
    return pb.WorkflowVersion(
        workflow_id=str(row.workflow_id),
        version=row.version,
        steps=steps_pb(steps_from_json(row.steps)),
        create_time=timestamp(row.create_time),
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
        signature_required=row.signing_key is not None,
        previous_secret_expire_time=timestamp(row.previous_secret_expire_time),
    )


def delivery_pb(row: WebhookDeliveryRow) -> pb.WebhookDelivery:
    return pb.WebhookDelivery(
        id=str(row.id),
        endpoint_id=str(row.endpoint_id),
        receive_time=timestamp(row.create_time),
        http_status=row.http_status,
        reason=row.reason,
        message=row.message,
        size_bytes=row.size_bytes,
        run_id=str(row.run_id) if row.run_id else "",
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


class ExecutionServicer(AlertServicer):
    """Every RPC of ExecutionService: the ones below, and the alert RPCs it inherits."""

    def __init__(self, service: ExecutionService, alerts: AlertService) -> None:
        super().__init__(alerts)
        self._service = service

    async def ListIntegrations(
        self, request: pb.ListIntegrationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListIntegrationsResponse:
        # sorted() is stable: within each group the catalog keeps its own order.
        specs = sorted(STEP_TYPES.values(), key=lambda spec: not spec.available)
        return pb.ListIntegrationsResponse(integrations=[integration_pb(s) for s in specs])

    async def GetRunStats(
        self, request: pb.GetRunStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRunStatsResponse:
        stats = await self._service.run_stats(require_tenant(), request.failure_count)
        return run_stats_pb(stats)

    async def CreateWorkflow(
        self, request: pb.CreateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateWorkflowResponse:
        enabled = request.enabled if request.HasField("enabled") else True
        view = await self._service.create_workflow(
            require_tenant(), request.name, steps_of(request.steps), enabled
        )
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

    async def UpdateWorkflow(
        self, request: pb.UpdateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateWorkflowResponse:
        paths = update_paths(request, request.update_mask, WORKFLOW_FIELDS)
        changes = WorkflowChanges(
            name=request.name if "name" in paths else None,
            steps=steps_of(request.steps) if "steps" in paths else None,
            enabled=request.enabled if "enabled" in paths else None,
        )
        view = await self._service.update_workflow(require_tenant(), request.workflow_id, changes)
        return pb.UpdateWorkflowResponse(workflow=workflow_pb(view))

    async def DeleteWorkflow(
        self, request: pb.DeleteWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteWorkflowResponse:
        await self._service.delete_workflow(require_tenant(), request.workflow_id)
        return pb.DeleteWorkflowResponse()

    async def ListWorkflowVersions(
        self, request: pb.ListWorkflowVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkflowVersionsResponse:
        page = await self._service.list_workflow_versions(
            require_tenant(), request.workflow_id, request.page_size, request.page_token
        )
        return pb.ListWorkflowVersionsResponse(
            versions=[version_pb(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateWebhookEndpointResponse:
        row, secret, url, signing_secret = await self._service.create_endpoint(
            require_tenant(),
            request.workflow_id,
            request.name,
            request.signing_secret,
            request.generate_signing_secret,
        )
        await context.send_initial_metadata(((HTTP_CODE, "201"),))
        return pb.CreateWebhookEndpointResponse(
            webhook_endpoint=endpoint_pb(row, url), secret=secret, signing_secret=signing_secret
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

    async def UpdateWebhookEndpoint(
        self, request: pb.UpdateWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateWebhookEndpointResponse:
        paths = update_paths(request, request.update_mask, ENDPOINT_FIELDS)
        changes = EndpointChanges(
            name=request.name if "name" in paths else None,
            enabled=request.enabled if "enabled" in paths else None,
            signing_secret=request.signing_secret if "signing_secret" in paths else None,
            generate_signing_secret="generate_signing_secret" in paths
            and request.generate_signing_secret,
        )
        row, signing_secret = await self._service.update_endpoint(
            require_tenant(), request.endpoint_id, changes
        )
        return pb.UpdateWebhookEndpointResponse(
            webhook_endpoint=endpoint_pb(row), signing_secret=signing_secret
        )

    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteWebhookEndpointResponse:
        await self._service.delete_endpoint(require_tenant(), request.endpoint_id)
        return pb.DeleteWebhookEndpointResponse()

    async def RotateWebhookEndpointSecret(
        self, request: pb.RotateWebhookEndpointSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateWebhookEndpointSecretResponse:
        grace = request.grace_period.ToTimedelta() if request.HasField("grace_period") else None
        row, secret, url = await self._service.rotate_endpoint_secret(
            require_tenant(), request.endpoint_id, grace
        )
        return pb.RotateWebhookEndpointSecretResponse(
            webhook_endpoint=endpoint_pb(row, url), secret=secret
        )

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookDeliveriesResponse:
        page = await self._service.list_deliveries(
            require_tenant(), request.endpoint_id, request.page_size, request.page_token
        )
        return pb.ListWebhookDeliveriesResponse(
            webhook_deliveries=[delivery_pb(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def TriggerWebhook(
        self, request: pb.TriggerWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.TriggerWebhookResponse:
        run = await self._service.trigger(
            WebhookCall(
                tenant=request.tenant_id,
                secret=request.secret,
                body=request.http_body.data,
                content_type=request.http_body.content_type,
                idempotency_key=request.idempotency_key,
                webhook_id=request.webhook_id,
                webhook_timestamp=request.webhook_timestamp,
                webhook_signature=request.webhook_signature,
            )
        )
        # 202 for a new run and for a repeat alike (a repeat is answered as the first one was):
        # the route's `success_status`, so the hot path sends no metadata of its own.
        return pb.TriggerWebhookResponse(
            run_id=str(run.id), status=RUN_STATUS[RunStatus(run.status)]
        )

    async def TriggerWebhooks(
        self, request: pb.TriggerWebhooksRequest, context: grpc.aio.ServicerContext
    ) -> pb.TriggerWebhooksResponse:
        outcomes = await serve_batch(
            TRIGGER_WEBHOOK, request.calls, self.TriggerWebhook, pb.TriggerWebhookOutcome
        )
        return pb.TriggerWebhooksResponse(outcomes=outcomes)

    async def AdmitWebhook(
        self, request: pb.AdmitWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdmitWebhookResponse:
        limit = await self._service.admit(
            WebhookAdmission(
                tenant=request.tenant_id,
                secret=request.secret,
                content_length=request.content_length,
                webhook_id=request.webhook_id,
                webhook_timestamp=request.webhook_timestamp,
                webhook_signature=request.webhook_signature,
            )
        )
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
