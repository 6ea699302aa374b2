"""The gateway app over HTTP against fake gRPC backends served in-process on ephemeral ports."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import ClientPayloadError, ClientSession
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from google.api import httpbody_pb2
from pytest_aiohttp import AiohttpClient

from aias.artifacts.v1 import artifacts_service_pb2 as artifacts_pb
from aias.artifacts.v1 import artifacts_service_pb2_grpc as artifacts_grpc
from aias.core.errors import (
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from aias.core.grpc_server import BuiltServer, Registration, build_grpc_server, serve_batch
from aias.execution.v1 import execution_service_pb2 as execution_pb
from aias.execution.v1 import execution_service_pb2_grpc as execution_grpc
from aias.gateway.app import ENTITLEMENT_CHANGES, init_app
from aias.gateway.ingress import MAX_BODY_BYTES
from aias.gateway.proxy import ADMISSION_BODY_BYTES
from aias.gateway.server import serving
from aias.gateway.settings import GatewaySettings
from aias.services.execution.servicer import TRIGGER_WEBHOOK
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc
from tests.conftest import DASHBOARD_SECRET, INTERNAL_TOKEN, server_settings

ADMIN_TOKEN = "operator-token-for-tests"
API_KEY = "aias_test_key"
TENANT_ID = "7d0c5f8e-3b1a-4c7e-9a51-2f4f8e0d6b11"
CONTENT = os.urandom(200_000)
# How long a test gateway may take to open tenancy's change stream. 5 s once ran out while the
# suite shared two cores with a benchmark; a gateway ready sooner is not waited for longer.
CONNECT_SECONDS = 30
Metadata = dict[str, str]


def _metadata(context: grpc.aio.ServicerContext) -> Metadata:
    return {
        key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
    }


class FakeTenancy(tenancy_grpc.TenancyServiceServicer):
    def __init__(self) -> None:
        self.seen: list[Metadata] = []
        self.key_lookups = 0

    async def AuthenticateApiKey(
        self, request: tenancy_pb.AuthenticateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> tenancy_pb.AuthenticateApiKeyResponse:
        self.key_lookups += 1
        if request.api_key != API_KEY:
            raise Unauthenticated("INVALID_API_KEY", "the API key is not valid")
        return tenancy_pb.AuthenticateApiKeyResponse(
            tenant_id=TENANT_ID, principal="key:k1", role=tenancy_pb.ROLE_ADMIN
        )

    async def WatchEntitlements(
        self, request: tenancy_pb.WatchEntitlementsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tenancy_pb.WatchEntitlementsResponse]:
        """Like tenancy: a reset first, then notices as they come (none here)."""
        yield tenancy_pb.WatchEntitlementsResponse(reset=True)
        await asyncio.Event().wait()

    async def CreateTenant(
        self, request: tenancy_pb.CreateTenantRequest, context: grpc.aio.ServicerContext
    ) -> tenancy_pb.CreateTenantResponse:
        self.seen.append(_metadata(context))
        await context.send_initial_metadata((("x-http-code", "201"),))
        tenant = tenancy_pb.Tenant(
            id=TENANT_ID,
            name=request.name,
            plan=request.plan or "free",
            status=tenancy_pb.TENANT_STATUS_ACTIVE,
        )
        tenant.create_time.FromSeconds(1714557600)
        return tenancy_pb.CreateTenantResponse(tenant=tenant, admin_key="aias_new_key")

    async def GetCurrentTenant(
        self, request: tenancy_pb.GetCurrentTenantRequest, context: grpc.aio.ServicerContext
    ) -> tenancy_pb.GetCurrentTenantResponse:
        self.seen.append(_metadata(context))
        return tenancy_pb.GetCurrentTenantResponse(
            tenant=tenancy_pb.Tenant(id=TENANT_ID, name="Acme", plan="free"),
            limits=tenancy_pb.Limits(runs_per_month=1000),
        )


class FakeExecution(execution_grpc.ExecutionServiceServicer):
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.seen: list[Metadata] = []
        # The number of calls in each TriggerWebhooks batch.
        self.batches: list[int] = []
        # Calls for run "held" or secret "held" wait for this; "slow" ones take a second.
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        # Set when the watch of run "held" ends: the gateway cancelled it.
        self.watch_ended = asyncio.Event()

    async def CreateWorkflow(
        self, request: execution_pb.CreateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.CreateWorkflowResponse:
        self.requests.append(request)
        await context.send_initial_metadata((("x-http-code", "201"),))
        workflow = execution_pb.Workflow(
            id="wf-1", name=request.name, version=1, enabled=True, steps=request.steps
        )
        workflow.create_time.FromSeconds(1714557600)
        workflow.update_time.FromSeconds(1714557600)
        return execution_pb.CreateWorkflowResponse(workflow=workflow)

    async def AdmitWebhook(
        self, request: execution_pb.AdmitWebhookRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.AdmitWebhookResponse:
        """Like execution: unknown URLs and disabled workflows are refused before the body."""
        if request.secret.startswith("unknown"):
            raise NotFound("WEBHOOK_ENDPOINT_NOT_FOUND", "no such webhook endpoint")
        if request.secret == "disabled":
            raise FailedPrecondition(
                "WORKFLOW_DISABLED", "the workflow is disabled", {"http_status": "409"}
            )
        return execution_pb.AdmitWebhookResponse(
            max_body_bytes=16 if request.secret == "tiny" else 0
        )

    async def TriggerWebhook(
        self, request: execution_pb.TriggerWebhookRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.TriggerWebhookResponse:
        self.requests.append(request)
        self.seen.append(_metadata(context))
        await self._delay(request.secret)
        if request.secret.startswith("unknown"):
            raise NotFound("WEBHOOK_ENDPOINT_NOT_FOUND", "no such webhook endpoint")
        if request.secret == "disabled":
            raise FailedPrecondition(
                "WORKFLOW_DISABLED", "the workflow is disabled", {"http_status": "409"}
            )
        if request.secret == "busy":
            raise ResourceExhausted(
                "QUOTA_EXCEEDED", "the monthly run quota is used up", {"retry_after_seconds": "60"}
            )
        # 202 is the route's success status, as for the real servicer.
        return execution_pb.TriggerWebhookResponse(
            run_id="run-1", status=execution_pb.RUN_STATUS_QUEUED
        )

    async def TriggerWebhooks(
        self, request: execution_pb.TriggerWebhooksRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.TriggerWebhooksResponse:
        self.batches.append(len(request.calls))
        outcomes = await serve_batch(
            TRIGGER_WEBHOOK, request.calls, self.TriggerWebhook, execution_pb.TriggerWebhookOutcome
        )
        return execution_pb.TriggerWebhooksResponse(outcomes=outcomes)

    async def GetRun(
        self, request: execution_pb.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.GetRunResponse:
        self.requests.append(request)
        self.seen.append(_metadata(context))
        await self._delay(request.run_id)
        run = execution_pb.Run(id=request.run_id, status=execution_pb.RUN_STATUS_QUEUED)
        run.create_time.FromSeconds(1714557600)
        return execution_pb.GetRunResponse(run=run)

    async def WatchRun(
        self, request: execution_pb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[execution_pb.WatchRunResponse]:
        """Like execution: the run, its steps as they are logged, the run again as it ends.

        Run "missing" does not exist; "broken" fails after its first event; "held" waits after
        its first event until the call is cancelled.
        """
        if request.run_id == "missing":
            raise NotFound("RUN_NOT_FOUND", "run missing does not exist")
        run = execution_pb.Run(id=request.run_id, status=execution_pb.RUN_STATUS_RUNNING)
        yield execution_pb.WatchRunResponse(run=run)
        if request.run_id == "broken":
            raise Unavailable("DATABASE_UNAVAILABLE", "the database cannot be reached")
        if request.run_id == "held":
            try:
                await asyncio.Event().wait()
            finally:
                self.watch_ended.set()
        step = execution_pb.StepLog(step_id="shape", status=execution_pb.STEP_STATUS_SUCCEEDED)
        yield execution_pb.WatchRunResponse(step=step)
        run.status = execution_pb.RUN_STATUS_SUCCEEDED
        yield execution_pb.WatchRunResponse(run=run)

    async def _delay(self, name: str) -> None:
        self.arrived.set()
        if name == "held":
            await self.release.wait()
        elif name == "slow":
            await asyncio.sleep(1)


class FakeArtifacts(artifacts_grpc.ArtifactsServiceServicer):
    async def GetArtifact(
        self, request: artifacts_pb.GetArtifactRequest, context: grpc.aio.ServicerContext
    ) -> artifacts_pb.GetArtifactResponse:
        raise NotFound("ARTIFACT_NOT_FOUND", f"artifact {request.artifact_id} does not exist")

    async def DownloadArtifact(
        self, request: artifacts_pb.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        if request.artifact_id not in ("a1", "broken"):
            raise NotFound("ARTIFACT_NOT_FOUND", "no such artifact")
        await context.send_initial_metadata(
            (
                ("x-http-header-content-length", str(len(CONTENT))),
                ("x-http-header-etag", f'"{hashlib.sha256(CONTENT).hexdigest()}"'),
            )
        )
        for start in range(0, len(CONTENT), 65536):
            if request.artifact_id == "broken" and start > 0:
                raise Unavailable("BLOB_STORE_UNAVAILABLE", "the blob store went away")
            yield httpbody_pb2.HttpBody(
                content_type="text/csv", data=CONTENT[start : start + 65536]
            )


@dataclass
class Fakes:
    tenancy: FakeTenancy = field(default_factory=FakeTenancy)
    execution: FakeExecution = field(default_factory=FakeExecution)
    artifacts: FakeArtifacts = field(default_factory=FakeArtifacts)
    servers: dict[str, BuiltServer] = field(default_factory=dict)

    @property
    def addresses(self) -> dict[str, str]:
        return {name: f"127.0.0.1:{server.port}" for name, server in self.servers.items()}


def _server(name: str, service: str, add: Any) -> BuiltServer:
    return build_grpc_server(server_settings(name, grace_seconds=0.0), [Registration(service, add)])


@asynccontextmanager
async def running_fakes(given: Fakes | None = None) -> AsyncIterator[Fakes]:
    """Four fake backends (`given`, or the plain ones) behind the real server factory, which
    checks the internal credential."""
    fakes = given or Fakes()
    fakes.servers = {
        "tenancy": _server(
            "tenancy",
            "aias.tenancy.v1.TenancyService",
            lambda s: tenancy_grpc.add_TenancyServiceServicer_to_server(fakes.tenancy, s),
        ),
        "execution": _server(
            "execution",
            "aias.execution.v1.ExecutionService",
            lambda s: execution_grpc.add_ExecutionServiceServicer_to_server(fakes.execution, s),
        ),
        "artifacts": _server(
            "artifacts",
            "aias.artifacts.v1.ArtifactsService",
            lambda s: artifacts_grpc.add_ArtifactsServiceServicer_to_server(fakes.artifacts, s),
        ),
        # Serves health only, so its routes meet a server that lacks the method.
        "billing": build_grpc_server(server_settings("billing", grace_seconds=0.0), []),
    }
    for server in fakes.servers.values():
        await server.start()
    yield fakes
    for server in fakes.servers.values():
        await server.stop(0)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with running_fakes() as running:
        yield running


def gateway_settings(
    addresses: dict[str, str], internal_token: str = INTERNAL_TOKEN, **limits: Any
) -> GatewaySettings:
    """Settings for a gateway on an ephemeral port; `limits` overrides the ingest limits."""
    return GatewaySettings(
        host="127.0.0.1",
        port=0,
        internal_token=internal_token,
        admin_token=ADMIN_TOKEN,
        dashboard_secret=DASHBOARD_SECRET,
        backends=addresses,
        log_level="INFO",
        ready_file=None,
        grace_seconds=1.0,
        **limits,
    )


Client = TestClient[Request, Application]


@pytest.fixture
async def client(fakes: Fakes, aiohttp_client: AiohttpClient) -> Client:
    started = await aiohttp_client(init_app(gateway_settings(fakes.addresses)))
    # The change stream's first notice resets the key cache; let it arrive before the test.
    await asyncio.wait_for(started.app[ENTITLEMENT_CHANGES].connected.wait(), CONNECT_SECONDS)
    return started


def _key(token: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _json_key() -> dict[str, str]:
    """The key, for a raw body sent as JSON (aiohttp labels raw bytes octet-stream)."""
    return {**_key(), "Content-Type": "application/json"}


async def _error(response: Any, status: int, reason: str) -> dict[str, Any]:
    assert response.status == status
    body = await response.json()
    error: dict[str, Any] = body["error"]
    assert error["code"] == status
    assert error["reason"] == reason
    assert error["request_id"] == response.headers["X-Request-ID"]
    return error


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer", "Bearer a b"])
async def test_tenant_route_without_a_bearer_key_is_401(client: Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = await client.get("/api/tenants/me", headers=headers)

    error = await _error(response, 401, "MISSING_CREDENTIALS")
    assert error["status"] == "UNAUTHENTICATED"
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_a_wrong_internal_token_is_a_500_not_the_clients_401(
    fakes: Fakes, aiohttp_client: AiohttpClient
) -> None:
    client = await aiohttp_client(
        init_app(gateway_settings(fakes.addresses, internal_token="stale"))
    )
    response = await client.get("/api/tenants/me", headers=_key())

    error = await _error(response, 500, "GATEWAY_MISCONFIGURED")
    assert "token" not in error["message"]


async def test_unknown_api_key_is_401_with_tenancy_reason(client: Client, fakes: Fakes) -> None:
    response = await client.get("/api/tenants/me", headers=_key("aias_wrong"))

    await _error(response, 401, "INVALID_API_KEY")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert fakes.tenancy.seen == []


async def test_api_key_caller_reaches_the_backend_as_its_tenant(
    client: Client, fakes: Fakes
) -> None:
    headers = {**_key(), "X-Request-ID": "req-from-client-1"}
    first = await client.get("/api/tenants/me", headers=headers)
    second = await client.get("/api/tenants/me", headers=_key())

    assert first.status == 200
    assert first.headers["X-Request-ID"] == "req-from-client-1"
    assert (await first.json())["tenant"]["id"] == TENANT_ID
    assert (await first.json())["limits"]["runs_per_month"] == 1000
    seen = fakes.tenancy.seen[0]
    assert seen["x-aias-tenant-id"] == TENANT_ID
    assert seen["x-aias-principal"] == "key:k1"
    assert seen["x-aias-role"] == "admin"
    assert seen["x-request-id"] == "req-from-client-1"
    assert seen["authorization"] == f"Bearer {INTERNAL_TOKEN}"
    assert second.status == 200
    assert (
        fakes.tenancy.seen[1]["x-request-id"]
        == second.headers["X-Request-ID"]
        != "req-from-client-1"
    )
    assert fakes.tenancy.key_lookups == 1, "a resolved key is cached for a few seconds"


async def test_operator_route_needs_the_admin_token(client: Client, fakes: Fakes) -> None:
    refused = await client.post("/api/tenants", json={"name": "Acme"}, headers=_key())
    created = await client.post(
        "/api/tenants", json={"name": "Acme", "plan": "pro"}, headers=_key(ADMIN_TOKEN)
    )

    await _error(refused, 401, "INVALID_OPERATOR_TOKEN")
    assert created.status == 201
    assert await created.json() == {
        "tenant": {
            "id": TENANT_ID,
            "name": "Acme",
            "plan": "pro",
            "status": "active",
            "create_time": "2024-05-01T10:00:00Z",
            "plan_change_time": None,
            "limit_overrides": {},
            "allowed_step_types_override": None,
        },
        "admin_key": "aias_new_key",
    }
    assert fakes.tenancy.seen[-1]["x-aias-principal"] == "operator"
    assert fakes.tenancy.seen[-1]["x-aias-role"] == "operator"
    assert fakes.tenancy.key_lookups == 0


# --- request and response mapping ---------------------------------------------------------


async def test_post_with_body_star_answers_201_from_metadata(client: Client, fakes: Fakes) -> None:
    steps = [
        {"id": "shape", "type": "transform", "config": {"expression": "{order: id}"}},
        {"id": "save", "type": "artifact", "config": {"name": "s.json", "format": "json"}},
    ]
    response = await client.post(
        "/api/workflows", json={"name": "orders", "steps": steps}, headers=_key()
    )

    assert response.status == 201
    assert response.headers["Content-Type"].startswith("application/json")
    assert await response.json() == {
        "workflow": {
            "id": "wf-1",
            "name": "orders",
            "version": 1,
            "enabled": True,
            "steps": steps,
            "create_time": "2024-05-01T10:00:00Z",
            "update_time": "2024-05-01T10:00:00Z",
        }
    }
    received = fakes.execution.requests[0]
    assert received.steps[1].config["format"] == "json"
    assert not received.HasField("enabled")


async def test_invalid_json_and_unknown_fields_are_400(client: Client) -> None:
    broken = await client.post(
        "/api/workflows", data=b'{"name": ', headers={**_key(), "Content-Type": "application/json"}
    )
    unknown = await client.post("/api/workflows", json={"name": "x", "stepz": []}, headers=_key())
    query = await client.get("/api/runs?colour=red", headers=_key())

    await _error(broken, 400, "INVALID_JSON")
    assert "stepz" in (await _error(unknown, 400, "UNKNOWN_FIELD"))["message"]
    assert (await _error(query, 400, "UNKNOWN_QUERY_PARAMETER"))["status"] == "INVALID_ARGUMENT"


async def test_webhook_hands_the_raw_body_and_headers_to_execution(
    client: Client, fakes: Fakes
) -> None:
    raw = b"id,total\n1,9.5\n"
    response = await client.post(
        f"/api/webhooks/{TENANT_ID}/s3cret",
        data=raw,
        headers={"Content-Type": "text/csv", "Idempotency-Key": "idem-1", "User-Agent": "shop/1"},
    )

    assert response.status == 202
    assert await response.json() == {"run_id": "run-1", "status": "queued"}
    request = fakes.execution.requests[0]
    assert (request.tenant_id, request.secret) == (TENANT_ID, "s3cret")
    assert (request.http_body.data, request.http_body.content_type) == (raw, "text/csv")
    assert request.idempotency_key == "idem-1"
    seen = fakes.execution.seen[0]
    assert seen["grpcgateway-idempotency-key"] == "idem-1"
    assert seen["grpcgateway-content-type"] == "text/csv"
    assert seen["grpcgateway-user-agent"] == "shop/1"
    assert "x-aias-tenant-id" not in seen


async def test_body_over_the_gateway_limit_is_413(client: Client, fakes: Fakes) -> None:
    response = await client.post(
        f"/api/webhooks/{TENANT_ID}/s", data=io.BytesIO(b"x" * (9 * 1024 * 1024))
    )

    assert (await _error(response, 413, "PAYLOAD_TOO_LARGE"))["status"] == "RESOURCE_EXHAUSTED"
    assert fakes.execution.requests == []


async def test_backend_error_info_decides_status_reason_and_headers(client: Client) -> None:
    disabled = await client.post(f"/api/webhooks/{TENANT_ID}/disabled", data=b"{}")
    busy = await client.post(f"/api/webhooks/{TENANT_ID}/busy", data=b"{}")
    missing = await client.get("/api/artifacts/a9", headers=_key())

    error = await _error(disabled, 409, "WORKFLOW_DISABLED")
    assert (error["status"], error["message"]) == (
        "FAILED_PRECONDITION",
        "the workflow is disabled",
    )
    error = await _error(busy, 429, "QUOTA_EXCEEDED")
    assert busy.headers["Retry-After"] == "60"
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "60s"} in (
        error["details"]
    )
    error = await _error(missing, 404, "ARTIFACT_NOT_FOUND")
    assert error == {
        "code": 404,
        "status": "NOT_FOUND",
        "message": "artifact a9 does not exist",
        "reason": "ARTIFACT_NOT_FOUND",
        "request_id": missing.headers["X-Request-ID"],
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ARTIFACT_NOT_FOUND",
                "domain": "aias.dev",
            }
        ],
    }


async def test_method_the_backend_lacks_is_501(client: Client) -> None:
    response = await client.post("/api/stripe/webhook", data=b"{}")

    assert (await _error(response, 501, "UNIMPLEMENTED"))["status"] == "UNIMPLEMENTED"


async def test_method_the_backends_servicer_inherits_unimplemented_is_501(client: Client) -> None:
    # FakeExecution keeps the generated base class's ListAlertDeliveries, which raises
    # NotImplementedError: the caller gets UNIMPLEMENTED, not an internal error.
    response = await client.get("/api/alert-deliveries", headers=_key())

    error = await _error(response, 501, "UNIMPLEMENTED")
    assert error["message"] == "this server does not implement the method called"


async def test_download_streams_the_exact_bytes_with_headers_from_metadata(client: Client) -> None:
    response = await client.get("/api/artifacts/a1/download", headers=_key())

    assert response.status == 200
    assert await response.read() == CONTENT
    assert response.headers["Content-Type"] == "text/csv"
    assert response.headers["Content-Length"] == str(len(CONTENT))
    assert response.headers["ETag"] == f'"{hashlib.sha256(CONTENT).hexdigest()}"'


async def test_download_failing_midway_is_never_a_complete_response(client: Client) -> None:
    response = await client.get("/api/artifacts/broken/download", headers=_key())

    assert response.status == 200
    # The client must learn the body is incomplete, not wait for bytes that never come.
    async with asyncio.timeout(5):
        with pytest.raises(ClientPayloadError):
            await response.read()


async def test_download_error_before_the_first_chunk_gets_the_error_body(client: Client) -> None:
    response = await client.get("/api/artifacts/zz/download", headers=_key())

    await _error(response, 404, "ARTIFACT_NOT_FOUND")


def _event_names(items: list[dict[str, Any]]) -> list[str]:
    return [item["run"]["status"] if item["run"] else item["step"]["step_id"] for item in items]


async def test_a_json_stream_is_newline_delimited_json(client: Client) -> None:
    response = await client.get("/api/runs/r1/events", headers=_key())

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = (await response.read()).decode().splitlines()
    assert _event_names([json.loads(line) for line in lines]) == ["running", "shape", "succeeded"]


async def test_a_json_stream_is_server_sent_events_when_asked(client: Client) -> None:
    headers = {**_key(), "Accept": "text/event-stream"}
    response = await client.get("/api/runs/r1/events", headers=headers)

    assert response.headers["Content-Type"] == "text/event-stream"
    events = (await response.read()).decode().split("\n\n")
    assert events[-1] == ""
    assert all(event.startswith("data: ") for event in events[:-1])
    items = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert _event_names(items) == ["running", "shape", "succeeded"]


async def test_a_stream_failing_before_its_first_message_is_an_error_response(
    client: Client,
) -> None:
    response = await client.get("/api/runs/missing/events", headers=_key())

    await _error(response, 404, "RUN_NOT_FOUND")


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
async def test_a_stream_failing_midway_ends_with_an_error_item(client: Client, accept: str) -> None:
    response = await client.get("/api/runs/broken/events", headers={**_key(), "Accept": accept})

    assert response.status == 200
    body = (await response.read()).decode()
    items = [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.strip()]
    assert _event_names(items[:1]) == ["running"]
    error = items[1]["error"]
    assert {key: value for key, value in error.items() if key != "details"} == {
        "code": 503,
        "status": "UNAVAILABLE",
        "message": "the database cannot be reached",
        "reason": "DATABASE_UNAVAILABLE",
        "request_id": response.headers["X-Request-ID"],
    }
    assert error["details"][0]["reason"] == "DATABASE_UNAVAILABLE"


async def test_a_client_going_away_cancels_the_streaming_rpc(fakes: Fakes) -> None:
    # The production server, whose handlers are not cancelled when their client goes away
    # (aiohttp's test server's are): the stream itself notices.
    async with (
        serving(gateway_settings(fakes.addresses)) as port,
        ClientSession(f"http://127.0.0.1:{port}") as http,
    ):
        response = await http.get("/api/runs/held/events", headers=_key())
        first = json.loads(await response.content.readline())
        assert first["run"]["status"] == "running"

        response.close()

        await asyncio.wait_for(fakes.execution.watch_ended.wait(), 5)


async def test_unset_message_fields_are_null(client: Client) -> None:
    response = await client.get("/api/runs/r1", headers=_key())

    run = (await response.json())["run"]
    assert (run["status"], run["start_time"], run["end_time"], run["error"]) == (
        "queued",
        None,
        None,
        "",
    )


# --- routing ----------------------------------------------------------------------------------


async def test_known_path_with_wrong_method_is_405_with_allow(client: Client) -> None:
    response = await client.delete("/api/workflows", headers=_key())
    health = await client.post("/healthz")

    await _error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["Allow"] == "GET, HEAD, POST"
    await _error(health, 405, "METHOD_NOT_ALLOWED")
    assert health.headers["Allow"] == "GET, HEAD"


async def test_unknown_path_is_404_in_the_error_shape(client: Client) -> None:
    response = await client.get("/api/nothing-here")

    assert (await _error(response, 404, "ROUTE_NOT_FOUND"))["status"] == "NOT_FOUND"


async def test_a_down_backend_is_503(fakes: Fakes, aiohttp_client: AiohttpClient) -> None:
    await fakes.servers["execution"].stop(0)
    client = await aiohttp_client(init_app(gateway_settings(fakes.addresses)))

    response = await client.get("/api/runs/r1", headers=_key())

    error = await _error(response, 503, "BACKEND_UNAVAILABLE")
    assert "execution" in error["message"]


async def test_webhooks_that_arrive_together_go_in_batches_with_their_own_answers(
    client: Client, fakes: Fakes
) -> None:
    secrets = ["ok", "unknown-1", "busy", "disabled", "ok"] * 8

    responses = await asyncio.gather(
        *(client.post(f"/api/webhooks/{TENANT_ID}/{secret}", data=b"{}") for secret in secrets)
    )

    expected = {"ok": 202, "unknown-1": 404, "busy": 429, "disabled": 409}
    assert [r.status for r in responses] == [expected[secret] for secret in secrets]
    for secret, response in zip(secrets, responses, strict=True):
        if secret == "busy":
            await _error(response, 429, "QUOTA_EXCEEDED")
            assert response.headers["Retry-After"] == "60"
    # Every delivery was served once, in fewer calls than deliveries, each with its request id.
    assert sum(fakes.execution.batches) == len(secrets)
    assert len(fakes.execution.batches) < len(secrets)
    ids = {seen["x-request-id"] for seen in fakes.execution.seen}
    assert ids == {response.headers["X-Request-ID"] for response in responses}


async def test_webhooks_go_one_call_each_when_batches_are_off(
    fakes: Fakes, aiohttp_client: AiohttpClient
) -> None:
    settings = gateway_settings(fakes.addresses, batch_max_calls=1)
    client = await aiohttp_client(init_app(settings))

    responses = await asyncio.gather(
        *(client.post(f"/api/webhooks/{TENANT_ID}/ok", data=b"{}") for _ in range(10))
    )

    assert [r.status for r in responses] == [202] * 10
    assert fakes.execution.batches == []
    assert len(fakes.execution.requests) == 10


class OlderExecution(FakeExecution):
    """An execution service from before batches: it inherits TriggerWebhooks unimplemented."""

    async def TriggerWebhooks(
        self, request: execution_pb.TriggerWebhooksRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.TriggerWebhooksResponse:
        raise NotImplementedError  # what the generated base class does


async def test_webhooks_go_one_by_one_to_a_backend_without_the_batch_rpc(
    aiohttp_client: AiohttpClient,
) -> None:
    # Like every fake here, it implements only the methods the tests call.
    older = OlderExecution()  # type: ignore[abstract]
    async with running_fakes(Fakes(execution=older)) as fakes:
        client = await aiohttp_client(init_app(gateway_settings(fakes.addresses)))

        first = await asyncio.gather(
            *(client.post(f"/api/webhooks/{TENANT_ID}/ok", data=b"{}") for _ in range(10))
        )
        later = await client.post(f"/api/webhooks/{TENANT_ID}/unknown-2", data=b"{}")

        assert [r.status for r in first] == [202] * 10
        await _error(later, 404, "WEBHOOK_ENDPOINT_NOT_FOUND")
        assert len(fakes.execution.requests) == 11


async def test_a_down_backend_is_503_for_every_webhook_of_a_batch(
    fakes: Fakes, aiohttp_client: AiohttpClient
) -> None:
    await fakes.servers["execution"].stop(0)
    client = await aiohttp_client(init_app(gateway_settings(fakes.addresses)))

    responses = await asyncio.gather(
        *(client.post(f"/api/webhooks/{TENANT_ID}/ok", data=b"{}") for _ in range(10))
    )

    for response in responses:
        await _error(response, 503, "BACKEND_UNAVAILABLE")
        assert response.headers["Retry-After"] == "1"


# --- hostile input ------------------------------------------------------------------------


def _workflow(config_json: str) -> bytes:
    """A workflow body whose step config holds `config_json` at depth 5 (body, steps, step,
    config, value)."""
    step = '{"id": "s", "type": "transform", "config": {"v": ' + config_json + "}}"
    return ('{"name": "w", "steps": [' + step + "]}").encode()


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("NaN", "NaN is not a JSON number"),
        ("-Infinity", "-Infinity is not a JSON number"),
        ("1e400", "the number 1e400 is beyond the range of a double"),
        ("9" * 5000, "is beyond the range of a double"),
        ("[" * 10_000 + "]" * 10_000, "nests deeper than 32 levels"),
        ("[" * 29 + "]" * 29, "nests deeper than 32 levels"),
    ],
    ids=["nan", "infinity", "1e400", "5000-digits", "10000-deep", "33-deep"],
)
async def test_json_the_gateway_cannot_hold_is_400_invalid_json(
    client: Client, fakes: Fakes, config: str, problem: str
) -> None:
    response = await client.post("/api/workflows", data=_workflow(config), headers=_json_key())

    error = await _error(response, 400, "INVALID_JSON")
    assert problem in error["message"]
    assert len(error["message"]) < 200, "the client's input is quoted, not echoed whole"
    assert fakes.execution.requests == []


async def test_json_nested_32_deep_and_nul_characters_pass(client: Client, fakes: Fakes) -> None:
    deep = await client.post(
        "/api/workflows", data=_workflow("[" * 28 + "]" * 28), headers=_json_key()
    )
    nul = await client.post("/api/workflows", json={"name": "a\u0000b"}, headers=_key())

    assert (deep.status, nul.status) == (201, 201)
    assert fakes.execution.requests[1].name == "a\u0000b"


async def test_integers_beyond_the_field_name_the_field(client: Client) -> None:
    huge = await client.get("/api/runs?page_size=" + "9" * 5000, headers=_key())
    wide = await client.get(f"/api/runs?page_size={2**40}", headers=_key())

    for response in (huge, wide):
        error = await _error(response, 400, "INVALID_FIELD_VALUE")
        assert error["message"].startswith("page_size: ")
        assert len(error["message"]) < 200


@pytest.mark.parametrize(
    "body",
    [b'{"\\ud800": 1}', b'{"name": "\\udfff"}', b'{"name": "x", "' + b"k" * 100_000 + b'": 1}'],
    ids=["surrogate-key", "surrogate-value", "100k-key"],
)
async def test_unencodable_or_huge_keys_are_400_with_a_short_message(
    client: Client, body: bytes
) -> None:
    response = await client.post("/api/workflows", data=body, headers=_json_key())

    assert response.status == 400
    assert len((await response.json())["error"]["message"]) < 200


async def test_headers_the_gateway_copies_must_be_short_printable_ascii(
    client: Client, fakes: Fakes
) -> None:
    webhook = f"/api/webhooks/{TENANT_ID}/s"
    key = await client.post(webhook, data=b"{}", headers={"Idempotency-Key": "clé"})
    long_type = await client.post(webhook, data=b"{}", headers={"Content-Type": "a/" + "b" * 254})
    authorization = await client.get("/api/tenants/me", headers={"Authorization": "Bearer clé"})

    assert "Idempotency-Key" in (await _error(key, 400, "INVALID_HEADER"))["message"]
    assert "255" in (await _error(long_type, 400, "INVALID_HEADER"))["message"]
    await _error(authorization, 401, "MALFORMED_CREDENTIALS")
    assert fakes.execution.requests == []
    assert fakes.tenancy.key_lookups == 0


async def test_unknown_paths_are_quoted_not_echoed(client: Client) -> None:
    response = await client.get("/api/" + "x" * 5000)

    error = await _error(response, 404, "ROUTE_NOT_FOUND")
    assert len(error["message"]) < 100


async def test_past_max_inflight_requests_get_503_overloaded(
    fakes: Fakes, aiohttp_client: AiohttpClient
) -> None:
    client = await aiohttp_client(init_app(gateway_settings(fakes.addresses, max_inflight=1)))
    held = asyncio.create_task(client.get("/api/runs/held", headers=_key()))
    await fakes.execution.arrived.wait()

    refused = await client.get("/healthz")
    fakes.execution.release.set()

    await _error(refused, 503, "OVERLOADED")
    assert refused.headers["Retry-After"] == "1"
    assert (await held).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_bodies_wait_for_memory_and_get_503_when_none_frees_up(
    fakes: Fakes, aiohttp_client: AiohttpClient
) -> None:
    settings = gateway_settings(
        fakes.addresses, body_buffer_bytes=MAX_BODY_BYTES, body_timeout_seconds=0.5
    )
    client = await aiohttp_client(init_app(settings))
    webhook = f"/api/webhooks/{TENANT_ID}"
    # A chunked body is reserved at the limit, so it holds the whole budget.
    held = asyncio.create_task(client.post(f"{webhook}/held", data=_chunks(b"{}")))
    await fakes.execution.arrived.wait()

    refused = await client.post(f"{webhook}/s", data=b"{}")
    waiting = asyncio.create_task(client.post(f"{webhook}/s", data=b"{}"))
    await asyncio.sleep(0.1)
    fakes.execution.release.set()

    await _error(refused, 503, "OVERLOADED")
    assert refused.headers["Retry-After"] == "1"
    assert ((await held).status, (await waiting).status) == (202, 202)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


# --- operations -----------------------------------------------------------------------------


async def test_healthz_and_readyz_when_every_backend_serves(client: Client) -> None:
    health = await client.get("/healthz")
    ready = await client.get("/readyz")

    assert (health.status, await health.json()) == (200, {"status": "ok"})
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "backends": dict.fromkeys(("tenancy", "execution", "artifacts", "billing"), "SERVING"),
    }


async def test_readyz_is_503_when_a_backend_is_down(client: Client, fakes: Fakes) -> None:
    await fakes.servers["billing"].stop(0)

    response = await client.get("/readyz")

    assert response.status == 503
    body = await response.json()
    assert body["status"] == "not_ready"
    assert body["backends"]["billing"] == "UNAVAILABLE"
    assert body["backends"]["tenancy"] == "SERVING"


async def test_metrics_count_requests_by_route_template(client: Client) -> None:
    await client.get("/api/runs/r1", headers=_key())
    await client.get("/api/runs/r2", headers=_key())
    await client.get("/api/nothing")

    text = await (await client.get("/metrics")).text()

    assert 'http_requests_total{method="GET",route="/api/runs/{run_id}",status="200"} 2.0' in text
    assert 'http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert (
        'http_request_duration_seconds_count{method="GET",route="/api/runs/{run_id}"} 2.0' in text
    )


async def test_main_reports_the_bound_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        "AIAS_GATEWAY_HOST": "127.0.0.1",
        "AIAS_GATEWAY_PORT": "0",
        "AIAS_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "AIAS_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIAS_DASHBOARD_SECRET": DASHBOARD_SECRET,
        "AIAS_READY_FILE": str(ready),
        **{
            f"AIAS_{name}_ADDR": "127.0.0.1:9"
            for name in ("TENANCY", "EXECUTION", "ARTIFACTS", "BILLING")
        },
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aias.gateway.main", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        for _ in range(200):
            if ready.exists():
                break
            await asyncio.sleep(0.05)
        port = json.loads(ready.read_text())["port"]
        assert port > 0
        async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    messages = [json.loads(line)["message"] for line in stderr.decode().splitlines()]
    assert messages[-1] == "stopped"


async def test_main_fails_fast_on_missing_settings() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIAS_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aias.gateway.main", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 10)

    assert process.returncode == 1
    assert "AIAS_ADMIN_TOKEN is required" in stderr.decode()
    assert "AIAS_TENANCY_ADDR is required" in stderr.decode()


async def test_admission_refuses_before_the_body_and_bounds_it(
    client: Client, fakes: Fakes
) -> None:
    large = b"x" * (ADMISSION_BODY_BYTES + 1)
    unknown = await client.post(f"/api/webhooks/{TENANT_ID}/unknown-1", data=large)
    await _error(unknown, 404, "WEBHOOK_ENDPOINT_NOT_FOUND")
    too_big = await client.post(f"/api/webhooks/{TENANT_ID}/tiny", data=large)
    body = await _error(too_big, 413, "PAYLOAD_TOO_LARGE")
    assert "this endpoint accepts (16 bytes)" in body["message"]
    assert fakes.execution.requests == [], "nothing reached TriggerWebhook"
    # A small body is read at once: the webhook call itself makes the admission's checks.
    small = await client.post(f"/api/webhooks/{TENANT_ID}/tiny", data=b"x" * 16)
    assert small.status == 202
    assert len(fakes.execution.requests) == 1


async def test_a_json_route_refuses_other_media_types_with_415(client: Client) -> None:
    form = await client.post("/api/workflows", data={"name": "x"}, headers=_key())
    body = await _error(form, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "application/x-www-form-urlencoded" in body["message"]
    undeclared = await client.post(
        "/api/workflows", data=b'{"name": "x"}', headers={**_key(), "Content-Type": ""}
    )
    assert undeclared.status == 201, "no Content-Type with a JSON body is taken as JSON"
    problem_json = await client.post(
        "/api/workflows",
        data=b'{"name": "x"}',
        headers={**_key(), "Content-Type": "application/merge-patch+json; charset=utf-8"},
    )
    assert problem_json.status == 201


async def test_trace_context_is_forwarded_and_client_metadata_is_not(
    client: Client, fakes: Fakes
) -> None:
    response = await client.get(
        "/api/runs/r1",
        headers={
            **_key(),
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "vendor=x",
            "X-Aias-Tenant-Id": "00000000-0000-0000-0000-000000000000",
            "X-Aias-Role": "owner",
            "Cookie": "session=s3cret",
        },
    )
    assert response.status == 200
    seen = fakes.execution.seen[-1]
    assert seen["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert seen["tracestate"] == "vendor=x"
    assert seen["x-aias-tenant-id"] == TENANT_ID, "the key's tenant, not the client's claim"
    assert seen["x-aias-role"] == "admin"
    assert "cookie" not in seen
    assert seen["authorization"] == f"Bearer {INTERNAL_TOKEN}", "never the client's credential"
