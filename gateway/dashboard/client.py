"""The RPCs the dashboard reads, each made as the signed-in caller and bounded by a deadline."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from aias.artifacts.v1 import artifacts_service_pb2 as artifacts_pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as artifacts_grpc
from aias.billing.v1 import billing_service_pb2 as billing_pb
from aias.billing.v1 import billing_service_pb2_grpc as billing_grpc
from aias.core.context import Caller
from aias.core.jsonmap import enum_from_json
from aias.execution.v1 import execution_service_pb2 as execution_pb
from aias.execution.v1 import execution_service_pb2_grpc as execution_grpc
from aias.gateway.backends import BackendHealth, Backends
from aias.gateway.errors import from_rpc_error
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc

EXECUTION_SERVICE = execution_pb.DESCRIPTOR.services_by_name["ExecutionService"]
# The most runs, workflows or endpoints one page shows (the RPCs' own maximum).
MAX_PAGE_SIZE = 100


class Stubs:
    """One stub per backend service, over the gateway's one channel to each backend."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.tenancy = tenancy_grpc.TenancyServiceStub(backends.channel("tenancy"))
        self.execution = execution_grpc.ExecutionServiceStub(backends.channel("execution"))
        self.artifacts = artifacts_grpc.ArtifactsServiceStub(backends.channel("artifacts"))
        self.billing = billing_grpc.BillingServiceStub(backends.channel("billing"))


class Reader:
    """Asks the backends as one caller; a failed call raises the GatewayError the API would."""

    def __init__(self, stubs: Stubs, caller: Caller, timeout_seconds: float) -> None:
        self._stubs = stubs
        self._caller = caller
        self._timeout = timeout_seconds

    async def _ask(
        self, backend: str, method: Any, request: Message, caller: Caller | None = None
    ) -> Any:
        try:
            return await method(
                request, metadata=(caller or self._caller).metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, backend) from None

    async def health(self) -> dict[str, BackendHealth]:
        return await self._stubs.backends.check(self._timeout)

    async def current_tenant(self) -> tenancy_pb.GetCurrentTenantResponse:
        request = tenancy_pb.GetCurrentTenantRequest()
        reply: tenancy_pb.GetCurrentTenantResponse = await self._ask(
            "tenancy", self._stubs.tenancy.GetCurrentTenant, request
        )
        return reply

    async def billing_account(self) -> billing_pb.BillingAccount:
        # GetBillingAccount is internal (an internal caller may name any tenant), so the gateway
        # asks it as itself, for the signed-in caller's own tenant only; the page that shows
        # it has already checked the admin role.
        as_gateway = Caller(self._caller.request_id, self._caller.tenant_id, "", "")
        reply: billing_pb.GetBillingAccountResponse = await self._ask(
            "billing",
            self._stubs.billing.GetBillingAccount,
            billing_pb.GetBillingAccountRequest(),
            as_gateway,
        )
        return reply.account

    async def run_stats(self) -> execution_pb.GetRunStatsResponse:
        reply: execution_pb.GetRunStatsResponse = await self._ask(
            "execution", self._stubs.execution.GetRunStats, execution_pb.GetRunStatsRequest()
        )
        return reply

    async def runs(
        self, workflow_id: str, page_size: int, page_token: str, status: str = ""
    ) -> execution_pb.ListRunsResponse:
        request = execution_pb.ListRunsRequest(
            workflow_id=workflow_id, page_size=page_size, page_token=page_token
        )
        if status:
            number = enum_from_json(execution_pb.RunStatus.DESCRIPTOR, status, "status")
            request.status.append(execution_pb.RunStatus.ValueType(number))
        reply: execution_pb.ListRunsResponse = await self._ask(
            "execution", self._stubs.execution.ListRuns, request
        )
        return reply

    async def workflows(self) -> list[execution_pb.Workflow]:
        """The newest workflows, as many as one page holds: the choices of the runs filter."""
        request = execution_pb.ListWorkflowsRequest(page_size=MAX_PAGE_SIZE)
        reply: execution_pb.ListWorkflowsResponse = await self._ask(
            "execution", self._stubs.execution.ListWorkflows, request
        )
        return list(reply.workflows)

    async def webhook_endpoints(self) -> list[execution_pb.WebhookEndpoint]:
        request = execution_pb.ListWebhookEndpointsRequest(page_size=MAX_PAGE_SIZE)
        reply: execution_pb.ListWebhookEndpointsResponse = await self._ask(
            "execution", self._stubs.execution.ListWebhookEndpoints, request
        )
        return list(reply.webhook_endpoints)

    async def webhook_deliveries(self, page_size: int) -> list[execution_pb.WebhookDelivery]:
        """The newest deliveries to the tenant's webhook endpoints, accepted or refused."""
        request = execution_pb.ListWebhookDeliveriesRequest(page_size=page_size)
        reply: execution_pb.ListWebhookDeliveriesResponse = await self._ask(
            "execution", self._stubs.execution.ListWebhookDeliveries, request
        )
        return list(reply.webhook_deliveries)

    async def alert_destinations(self) -> list[execution_pb.AlertDestination]:
        request = execution_pb.ListAlertDestinationsRequest(page_size=MAX_PAGE_SIZE)
        reply: execution_pb.ListAlertDestinationsResponse = await self._ask(
            "execution", self._stubs.execution.ListAlertDestinations, request
        )
        return list(reply.alert_destinations)

    async def alert_deliveries(self, page_size: int) -> list[execution_pb.AlertDelivery]:
        """The newest alerts sent (or being sent) to the tenant's destinations, with attempts."""
        request = execution_pb.ListAlertDeliveriesRequest(page_size=page_size)
        reply: execution_pb.ListAlertDeliveriesResponse = await self._ask(
            "execution", self._stubs.execution.ListAlertDeliveries, request
        )
        return list(reply.alert_deliveries)

    async def run(self, run_id: str) -> execution_pb.Run:
        reply: execution_pb.GetRunResponse = await self._ask(
            "execution", self._stubs.execution.GetRun, execution_pb.GetRunRequest(run_id=run_id)
        )
        return reply.run

    async def run_logs(self, run_id: str) -> list[execution_pb.StepLog]:
        request = execution_pb.ListRunLogsRequest(run_id=run_id)
        reply: execution_pb.ListRunLogsResponse = await self._ask(
            "execution", self._stubs.execution.ListRunLogs, request
        )
        return list(reply.steps)

    async def artifacts(self, run_id: str) -> list[artifacts_pb.Artifact]:
        request = artifacts_pb.ListArtifactsRequest(run_id=run_id, page_size=MAX_PAGE_SIZE)
        reply: artifacts_pb.ListArtifactsResponse = await self._ask(
            "artifacts", self._stubs.artifacts.ListArtifacts, request
        )
        return list(reply.artifacts)

    async def integrations(self) -> list[execution_pb.Integration]:
        request = execution_pb.ListIntegrationsRequest()
        reply: execution_pb.ListIntegrationsResponse = await self._ask(
            "execution", self._stubs.execution.ListIntegrations, request
        )
        return list(reply.integrations)

    async def run_action(self, rpc: str, run_id: str) -> str:
        """Calls an ExecutionService RPC that takes a run's id (cancel, retry) by its name;
        returns the id of the run it answers with (a retry's new run), else the run's own."""
        method = EXECUTION_SERVICE.methods_by_name[rpc]
        request_class = GetMessageClass(method.input_type)
        call = self._stubs.backends.channel("execution").unary_unary(
            f"/{EXECUTION_SERVICE.full_name}/{rpc}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=GetMessageClass(method.output_type).FromString,
        )
        reply = await self._ask("execution", call, request_class(run_id=run_id))
        if "run" in reply.DESCRIPTOR.fields_by_name and reply.HasField("run"):
            return str(reply.run.id)
        return run_id
