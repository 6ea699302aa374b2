"""A webhook's trace from the gateway's access log to the worker's steps; metrics; the dashboard."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from aias.core.clients import internal_channel
from aias.core.context import TENANT_ID
from aias.core.localdb import LocalDatabase
from aias.core.logging import JsonFormatter
from aias.core.tracing import REQUEST_ID_ATTRIBUTE
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from aias.gateway.server import serving
from aias.gateway.settings import GatewaySettings
from aias.services.execution import main as execution_main
from aias.services.execution import worker_main
from aias.services.execution.worker import WorkerConfig
from aias.services.tenancy import main as tenancy_main
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc
from tests.conftest import DASHBOARD_SECRET, INTERNAL_TOKEN, server_settings
from tests.integration.servers import running
from tests.tracing import in_trace, recorded_spans

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "aias.json"
JSON = {"Content-Type": "application/json"}
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
    """Tenancy, execution, a worker and the gateway, built traced by the production factories,
    with the registries their /metrics ports serve."""

    gateway_url: str
    tenancy: tenancy_grpc.TenancyServiceStub
    execution: pb_grpc.ExecutionServiceStub
    registries: dict[str, CollectorRegistry]

    def value(self, process: str, name: str, **labels: str) -> float:
        return self.registries[process].get_sample_value(name, labels) or 0.0


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


@pytest.fixture
async def stack(database: LocalDatabase, spans: InMemorySpanExporter) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as stack:
        built = {
            "tenancy": await tenancy_main.build_server(
                tenancy_main.TenancySettings(server_settings("tenancy"), database.app_url)
            )
        }
        tenancy = await stack.enter_async_context(running(built["tenancy"]))
        built["execution"] = await execution_main.build_server(
            execution_main.ExecutionSettings(
                server_settings("execution"),
                database.app_url,
                tenancy,
                "http://gateway.test",
                entitlements_ttl=300.0,
                max_attempts=2,
            )
        )
        execution = await stack.enter_async_context(running(built["execution"]))
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
        built["execution-worker"] = await worker_main.build_server(worker)
        await stack.enter_async_context(running(built["execution-worker"]))
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
            {name: server.metrics.registry for name, server in built.items()},
        )


def _step(step_id: str, expression: str) -> pb.Step:
    made = pb.Step(id=step_id, type="transform")
    made.config.update({"expression": expression})
    return made


async def _webhook_url(stack: Stack) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A new tenant's webhook URL (of a two-step workflow), and the metadata that acts for it."""
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
    return f"{stack.gateway_url}/api/webhooks/{reply.tenant.id}/{endpoint.secret}", meta


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


def _lines_of(logs: _Lines, message: str, run_id: object) -> list[dict[str, Any]]:
    return [
        line for line in logs.lines if line["message"] == message and line.get("run_id") == run_id
    ]


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{name}: {[span.name for span in spans]}"
    return found[0]


def _parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


async def test_a_webhooks_trace_runs_from_the_access_log_to_the_worker_steps(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    url, _meta = await _webhook_url(stack)
    with captured("gateway.access", "aias.services.execution.worker") as logs:
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
        run_attributes = _one(found, "run").attributes
        assert run_attributes is not None
        run_id = run_attributes["aias.run.id"]
        # The worker logs the run's end once the outcome is written, just after its span ended;
        # it may also run other tests' leftover runs (the suite's database is shared).
        deadline = time.monotonic() + 10
        while not (finished := _lines_of(logs, "run finished", run_id)):
            assert time.monotonic() < deadline, "the worker never logged the run's end"
            await asyncio.sleep(0.05)

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
    assert [line["trace_id"] for line in finished] == [trace_id]


async def test_metrics_count_deliveries_refusals_runs_steps_and_the_pool(stack: Stack) -> None:
    url, meta = await _webhook_url(stack)
    steps = "aias_step_duration_seconds_count"
    steps_before = stack.value("execution-worker", steps, type="transform", status="succeeded")
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"order": {"items": [1]}}) as response:
            assert response.status == 202
            run_id = (await response.json())["run_id"]
        # Above the free plan's 256 KiB: refused at admission, before the body is read.
        async with http.post(url, data=b" " * 300_000, headers=JSON) as response:
            assert response.status == 413
    deadline = time.monotonic() + 30
    request = pb.GetRunRequest(run_id=run_id)
    while (
        await stack.execution.GetRun(request, metadata=meta)
    ).run.status != pb.RUN_STATUS_SUCCEEDED:
        assert time.monotonic() < deadline, "the run never finished"
        await asyncio.sleep(0.1)

    deliveries = "aias_webhook_deliveries_total"
    assert stack.value("execution", deliveries, outcome="accepted", reason="RUN_QUEUED") == 1
    assert stack.value("execution", deliveries, outcome="refused", reason="PAYLOAD_TOO_LARGE") == 1
    refusals = "aias_entitlement_refusals_total"
    assert (
        stack.value(
            "execution", refusals, limit="webhook_payload_bytes", reason="PAYLOAD_TOO_LARGE"
        )
        == 1
    )
    # Both transform steps, timed (other tests' leftover runs may have run here too).
    assert stack.value("execution-worker", "aias_runs_finished_total", status="succeeded") >= 1
    steps_after = stack.value("execution-worker", steps, type="transform", status="succeeded")
    assert steps_after >= steps_before + 2
    # The default pool: up to 20 connections; all returned once idle.
    assert stack.value("execution", "aias_db_pool_max_connections") == 20
    assert stack.value("execution", "aias_db_pool_open_connections") >= 1
    assert stack.value("execution", "aias_db_pool_checked_out_connections") == 0
    assert stack.value("execution-worker", "aias_db_pool_max_connections") == 2 * 4


def _sample_names(family: Metric) -> set[str]:
    """Every series name a family can show, whether or not it has samples yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
    }.get(family.type, ("",))
    return {family.name + suffix for suffix in suffixes} | {s.name for s in family.samples}


# PromQL's words, which look like names: functions are told apart by their "(".
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}


def _queried_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without)\s*\([^)]*\)", " ", expression)
    return {
        match.group(1)
        for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", bare)
        if not match.group(2) and match.group(1) not in _PROMQL_WORDS
    }


async def test_the_dashboard_queries_only_metrics_the_processes_export(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    families = [family for r in stack.registries.values() for family in r.collect()]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{stack.gateway_url}/metrics") as response,
    ):
        families += text_string_to_metric_families(await response.text())
    exported = set().union(*(_sample_names(family) for family in families))
    queried = {
        name: panel["title"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in _queried_names(target["expr"])
    }
    assert len(queried) >= 10
    missing = {name: title for name, title in queried.items() if name not in exported}
    assert not missing, f"the dashboard queries metrics no process exports: {missing}"
    # Every metric the issue asks for has a panel.
    for wanted in (
        "aias_run_queue_depth_by_plan",
        "aias_run_queue_oldest_age_by_plan_seconds",
        "aias_runs_finished_total",
        "aias_step_duration_seconds_bucket",
        "aias_webhook_deliveries_total",
        "aias_entitlement_refusals_total",
        "aias_run_lease_losses_total",
        "aias_db_pool_checked_out_connections",
    ):
        assert wanted in queried, wanted
