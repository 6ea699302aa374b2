"""Tracing settings and helpers, trace ids in log lines, and the new metrics, without I/O."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from aias.core.db import PoolMetrics, create_engine
from aias.core.entitlements import PLANS, plan_limit, quota_exceeded
from aias.core.errors import InvalidArgument, PermissionDenied
from aias.core.grpc_server import RpcMetrics
from aias.core.logging import JsonFormatter
from aias.core.settings import Env, SettingsError, TracingSettings
from aias.core.tracing import (
    client_interceptors,
    configure_tracing,
    context_from,
    current_traceparent,
    server_interceptors,
    tracing_enabled,
)
from aias.services.execution.metrics import UNKNOWN_PLAN, RunMetrics, WebhookMetrics
from tests.tracing import recorded_spans


def _tracing(**environ: str) -> TracingSettings:
    env = Env(environ)
    settings = TracingSettings.from_env(env)
    env.check()
    return settings


def test_tracing_is_off_unless_an_exporter_or_an_endpoint_is_set() -> None:
    assert not _tracing().enabled
    assert _tracing(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4317").exporter == "otlp"
    assert _tracing(OTEL_TRACES_EXPORTER="console").exporter == "console"
    assert not _tracing(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4317", OTEL_TRACES_EXPORTER="none"
    ).enabled
    assert not _tracing(OTEL_TRACES_EXPORTER="otlp", OTEL_SDK_DISABLED="true").enabled
    settings = _tracing(OTEL_TRACES_EXPORTER="otlp", OTEL_SERVICE_NAME="edge", AIAS_TRACE_SQL="1")
    assert (settings.service_name, settings.sql) == ("edge", True)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_a_tracing_setting_this_build_cannot_honour_is_refused_by_name(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        _tracing(**environ)


def test_without_a_provider_nothing_is_instrumented_or_carried() -> None:
    assert configure_tracing("execution", TracingSettings()) is None
    assert not tracing_enabled()
    assert server_interceptors() == []
    assert list(client_interceptors()) == []
    assert current_traceparent() is None
    assert context_from(None) is None


def _line(formatter: JsonFormatter, message: str) -> dict[str, str]:
    record = logging.LogRecord("x", logging.INFO, "", 0, message, None, None)
    parsed: dict[str, str] = json.loads(formatter.format(record))
    return parsed


def test_log_lines_carry_the_current_spans_ids_and_a_stored_traceparent_continues_it() -> None:
    formatter = JsonFormatter("execution")
    assert "trace_id" not in _line(formatter, "outside")
    with recorded_spans() as spans:
        assert tracing_enabled()
        assert len(server_interceptors()) == 1
        assert len(list(client_interceptors())) == 4
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("request") as span:
            line = _line(formatter, "inside")
            stored = current_traceparent()
        ids = span.get_span_context()
        assert line["trace_id"] == f"{ids.trace_id:032x}"
        assert line["span_id"] == f"{ids.span_id:016x}"
        assert stored is not None
        # The flags say sampled (and, with newer SDKs, a random trace id).
        assert stored.startswith(f"00-{ids.trace_id:032x}-{ids.span_id:016x}-")
        # What the worker does with a run's stored context: a child in the same trace.
        with tracer.start_as_current_span("run", context=context_from(stored)):
            pass
        run = spans.get_finished_spans()[-1]
        assert run.parent is not None
        assert run.parent.span_id == ids.span_id
    assert not tracing_enabled()  # nothing leaks into the next test


def test_refusals_are_counted_by_limit_and_reason_and_other_errors_are_not() -> None:
    metrics = RpcMetrics(CollectorRegistry())
    metrics.refused(plan_limit("workflows", 5, "free", "too many workflows"))
    metrics.refused(quota_exceeded("runs_per_month", 1000, "free", "no runs left", None))
    metrics.refused(quota_exceeded("runs_per_month", 1000, "free", "no runs left", 3.0))
    metrics.refused(InvalidArgument("INVALID_ID", "not a UUID"))
    # A limit name the code does not know still gets a bounded label.
    metrics.refused(PermissionDenied("PLAN_LIMIT", "?", {"limit": uuid.uuid4().hex}))

    def refused(limit: str, reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "aias_entitlement_refusals_total", {"limit": limit, "reason": reason}
        )

    assert refused("workflows", "PLAN_LIMIT") == 1
    assert refused("runs_per_month", "QUOTA_EXCEEDED") == 2
    assert refused("other", "PLAN_LIMIT") == 1
    samples = [
        sample
        for family in metrics.registry.collect()
        if family.name == "aias_entitlement_refusals"
        for sample in family.samples
        if sample.name.endswith("_total")
    ]
    assert len(samples) == 3


def test_worker_metrics_move_with_steps_lease_losses_and_the_queue_by_plan() -> None:
    registry = CollectorRegistry()
    metrics = RunMetrics(registry)
    metrics.step("transform", "succeeded", 0.02)
    metrics.step("transform", "failed", 0.5)
    metrics.lease_lost()
    metrics.queue(7, 12.0, {"pro": (5, 12.0), UNKNOWN_PLAN: (2, 3.0)})

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    steps = "aias_step_duration_seconds_count"
    assert value(steps, type="transform", status="succeeded") == 1
    assert value(steps, type="transform", status="failed") == 1
    assert value("aias_step_duration_seconds_bucket", type="transform", status="failed", le="0.5")
    assert value("aias_run_lease_losses_total") == 1
    assert value("aias_run_queue_depth") == 7
    assert value("aias_run_queue_depth_by_plan", plan="pro") == 5
    assert value("aias_run_queue_oldest_age_by_plan_seconds", plan=UNKNOWN_PLAN) == 3.0
    # The queue drained: every plan reads 0, none keeps its last value.
    metrics.queue(0, 0.0, {})
    assert {value("aias_run_queue_depth_by_plan", plan=plan) for plan in PLANS} == {0.0}
    assert value("aias_run_queue_depth_by_plan", plan="pro") == 0


def test_webhook_deliveries_are_counted_by_outcome_and_reason() -> None:
    registry = CollectorRegistry()
    metrics = WebhookMetrics(registry)
    metrics.accepted("RUN_QUEUED")
    metrics.accepted("RUN_QUEUED")
    metrics.refused("ENDPOINT_NOT_FOUND")
    name = "aias_webhook_deliveries_total"
    assert registry.get_sample_value(name, {"outcome": "accepted", "reason": "RUN_QUEUED"}) == 2
    assert (
        registry.get_sample_value(name, {"outcome": "refused", "reason": "ENDPOINT_NOT_FOUND"}) == 1
    )


async def test_pool_gauges_read_the_engines_pool_at_scrape_time() -> None:
    engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", name="tests", max_connections=6
    )
    registry = CollectorRegistry()
    registry.register(PoolMetrics(engine))
    assert registry.get_sample_value("aias_db_pool_max_connections") == 6
    assert registry.get_sample_value("aias_db_pool_checked_out_connections") == 0
    assert registry.get_sample_value("aias_db_pool_open_connections") == 0
    await engine.dispose()
