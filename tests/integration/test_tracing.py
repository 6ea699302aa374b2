"""One webhook's trace, followed from the gateway's access log line to the worker's step spans."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from aias.core.clients import internal_channel
from aias.core.context import TENANT_ID
from aias.core.localdb import LocalDatabase
from aias.core.logging import JsonFormatter
from aias.core.tracing import REQUEST_ID_ATTRIBUTE
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc
from gateway.server import serving
from gateway.settings import GatewaySettings
from services.execution import main as execution_main
from services.execution import worker_main
from services.execution.worker import WorkerConfig
from services.tenancy import main as tenancy_main
from tests.conftest import DASHBOARD_SECRET, INTERNAL_TOKEN, server_settings
from tests.integration.servers import running
from tests.tracing import in_trace, recorded_spans

# A caller's own trace: the gateway's span continues it, and so does everything after.
CLIENT_TRACE_ID = uuid.uuid4().hex
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{uuid.uuid4().hex[:16]}-01"


class _Lines(logging.Handler):
    """Keeps the JSON lines the processes would write, formatted when logged (in context)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@contextmanager
def captured(*names: str) -> Iterator[_Lines]:
    handler = _Lines()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


@dataclass
class Stack:
    """Tenancy, execution, a worker and the gateway, built traced by the production factories."""

    gateway_url: str
    tenancy: tenancy_grpc.TenancyServiceStub
    execution: pb_grpc.ExecutionServiceStub


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


@pytest.fixture
async def stack(database: LocalDatabase, spans: InMemorySpanExporter) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as stack:
        tenancy = await stack.enter_async_context(
            running(
                await tenancy_main.build_server(
                    tenancy_main.TenancySettings(server_settings("tenancy"), database.app_url)
                )
            )
        )
        execution = await stack.enter_async_context(
            running(
                await execution_main.build_server(
                    execution_main.ExecutionSettings(
                        server_settings("execution"),
                        database.app_url,
                        tenancy,
                        "http://gateway.test",
                        entitlements_ttl=300.0,
                        max_attempts=2,
                    )
                )
            )
        )
        worker = worker_main.WorkerSettings(
            server=server_settings("execution-worker"),
            database_url=database.app_url,
            artifacts_addr="127.0.0.1:1",  # no step here uploads an artifact
            tenancy_addr=tenancy,
            worker=WorkerConfig(worker_id=f"trace-{uuid.uuid4().hex[:8]}", poll_interval=0.2),
            step_processes=1,
            step_memory_bytes=256 * 2**20,
            nice=0,
        )
        await stack.enter_async_context(running(await worker_main.build_server(worker)))
        gateway = GatewaySettings(
            host="127.0.0.1",
            port=0,
            internal_token=INTERNAL_TOKEN,
            admin_token="test-admin-token",
            dashboard_secret=DASHBOARD_SECRET,
            backends={
                "tenancy": tenancy,
                "execution": execution,
                "artifacts": "127.0.0.1:1",
                "billing": "127.0.0.1:1",
            },
            log_level="INFO",
            ready_file=None,
            grace_seconds=1.0,
        )
        port = await stack.enter_async_context(serving(gateway))
        channels = [internal_channel(address, INTERNAL_TOKEN) for address in (tenancy, execution)]
        for channel in channels:
            stack.push_async_callback(channel.close)
        yield Stack(
            f"http://127.0.0.1:{port}",
            tenancy_grpc.TenancyServiceStub(channels[0]),
            pb_grpc.ExecutionServiceStub(channels[1]),
        )


def _step(step_id: str, expression: str) -> pb.Step:
    made = pb.Step(id=step_id, type="transform")
    made.config.update({"expression": expression})
    return made


async def _webhook_url(stack: Stack) -> str:
    reply = await stack.tenancy.CreateTenant(tenancy_pb.CreateTenantRequest(name="t", plan="free"))
    meta = ((TENANT_ID, reply.tenant.id),)
    workflow = await stack.execution.CreateWorkflow(
        pb.CreateWorkflowRequest(
            name="orders", steps=[_step("pick", "order"), _step("total", "sum(items)")]
        ),
        metadata=meta,
    )
    endpoint = await stack.execution.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(workflow_id=workflow.workflow.id, name="shop"),
        metadata=meta,
    )
    return f"{stack.gateway_url}/api/webhooks/{reply.tenant.id}/{endpoint.secret}"


async def _finished(spans: InMemorySpanExporter, trace_id: str, steps: int) -> list[ReadableSpan]:
    """The trace once the worker's run span and its step spans have ended."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = in_trace(spans, trace_id)
        names = [span.name for span in found]
        if "run" in names and sum(name.startswith("step ") for name in names) >= steps:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"the run's spans never ended; trace {trace_id} has {names}")


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{name}: {[span.name for span in spans]}"
    return found[0]


def _parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_a_webhooks_trace_runs_from_the_access_log_to_the_worker_steps(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    url = await _webhook_url(stack)
    with captured("gateway.access", "services.execution.worker") as logs:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url,
                json={"order": {"items": [2, 3]}},
                headers={"traceparent": CLIENT_TRACEPARENT},
            ) as response,
        ):
            assert response.status == 202, await response.text()
            request_id = response.headers["X-Request-ID"]
        access = [line for line in logs.lines if line["logger"] == "gateway.access"]
        assert len(access) == 1
        line = access[0]
        # The line names the request, never its path (the webhook's secret).
        assert line["route"] == "/api/webhooks/{tenant_id}/{secret}"
        assert line["request_id"] == request_id
        trace_id = line["trace_id"]
        # The caller's trace continues through the gateway.
        assert trace_id == CLIENT_TRACE_ID

        found = await _finished(spans, trace_id, steps=2)

    gateway = _one(found, "POST /api/webhooks/{tenant_id}/{secret}")
    assert gateway.kind == SpanKind.SERVER
    assert gateway.attributes is not None
    assert gateway.attributes[REQUEST_ID_ATTRIBUTE] == request_id
    assert gateway.attributes["http.response.status_code"] == 202
    assert line["span_id"] == f"{_span_id(gateway):016x}"
    assert not any(secret in span.name for span in found for secret in [url.rsplit("/", 1)[1]])

    # gateway -> execution over gRPC: a client span in the gateway, a server span in execution.
    rpc = "/aias.execution.v1.ExecutionService/TriggerWebhook"
    servers = [s for s in found if s.name == rpc and s.kind == SpanKind.SERVER]
    clients = [s for s in found if s.name == rpc and s.kind == SpanKind.CLIENT]
    assert len(servers) == 1
    assert len(clients) == 1
    assert _parent_id(clients[0]) == _span_id(gateway)
    assert _parent_id(servers[0]) == _span_id(clients[0])

    # execution -> queue -> worker: the run's span continues the RPC that queued it.
    run = _one(found, "run")
    assert run.kind == SpanKind.CONSUMER
    assert _parent_id(run) == _span_id(servers[0])
    assert run.attributes is not None
    assert run.attributes["aias.run.status"] == "succeeded"
    steps = sorted(
        (span for span in found if span.name == "step transform"),
        key=lambda span: span.start_time or 0,
    )
    assert [s.attributes["aias.step.id"] for s in steps if s.attributes] == ["pick", "total"]
    assert all(_parent_id(step) == _span_id(run) for step in steps)
    assert all(s.attributes and s.attributes["aias.step.status"] == "succeeded" for s in steps)

    # The worker's own log line about the run carries the same trace.
    finished = [line for line in logs.lines if line["message"] == "run finished"]
    assert [line["trace_id"] for line in finished] == [trace_id]
    assert finished[0]["run_id"] == run.attributes["aias.run.id"]
