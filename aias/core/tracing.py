"""OpenTelemetry tracing: off unless configured, OTLP when on; helpers every process shares."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from aias.core.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from sqlalchemy.ext.asyncio import AsyncEngine

TRACEPARENT = "traceparent"
# The span attribute that ties a span to the log lines of its request.
REQUEST_ID_ATTRIBUTE = "aias.request_id"
# gRPC methods that get no span: probes would drown the traces, and a watch stream lives as long
# as the process, so its span would never end in a useful way.
_UNTRACED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_UNTRACED_METHOD_PREFIX = "Watch"


def configure_tracing(service: str, settings: TracingSettings) -> TracerProvider | None:
    """Installs the process's tracer provider (once, at start-up); None when tracing is off.

    The caller shuts the provider down when the process stops, which sends what is buffered.
    """
    if not settings.enabled:
        return None
    # The SDK is imported only here: a process that does not trace keeps its ~2 MiB.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.service_name or service})
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings.exporter)))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    # Imported here: the OTLP exporter pulls in its own protobuf modules, needed only when used.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tracing_enabled() -> bool:
    """Whether this process installed a tracer provider; factories add instrumentation only then,
    so a process that does not trace pays nothing per request."""
    sdk = sys.modules.get("opentelemetry.sdk.trace")
    # Without the SDK imported, no SDK provider can be installed.
    return sdk is not None and isinstance(trace.get_tracer_provider(), sdk.TracerProvider)


def _traced(details: Any) -> bool:
    method = details.method
    if isinstance(method, bytes):
        method = method.decode()
    name = str(method)
    if name.startswith(_UNTRACED_PREFIXES):
        return False
    return not name.rpartition("/")[2].startswith(_UNTRACED_METHOD_PREFIX)


def server_interceptors() -> list[Any]:
    """The OpenTelemetry interceptor for a grpc.aio server (a span per RPC), when tracing."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_traced)]  # type: ignore[no-untyped-call]


def client_interceptors() -> Sequence[Any]:
    """OpenTelemetry's grpc.aio client interceptors (a span per call, `traceparent` sent along),
    when tracing."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(filter_=_traced))  # type: ignore[no-untyped-call]


def server_span(method: str, metadata: Mapping[str, str]) -> AbstractContextManager[Any]:
    """The server span of one call of a batch, child of the trace its metadata carries, as
    OpenTelemetry's interceptor makes one per RPC; nothing when not tracing."""
    if not tracing_enabled():
        return nullcontext()
    return trace.get_tracer(__name__).start_as_current_span(
        method, context=propagate.extract(metadata), kind=trace.SpanKind.SERVER
    )


def client_span(method: str, metadata: list[tuple[str, str]]) -> AbstractContextManager[Any]:
    """The client span of one call sent in a batch, its `traceparent` added to `metadata`;
    nothing when not tracing."""
    if not tracing_enabled():
        return nullcontext()
    return _client_span(method, metadata)


@contextmanager
def _client_span(method: str, metadata: list[tuple[str, str]]) -> Iterator[trace.Span]:
    with trace.get_tracer(__name__).start_as_current_span(
        method, kind=trace.SpanKind.CLIENT
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata[:] = [(key, value) for key, value in metadata if key not in carrier]
        metadata.extend(carrier.items())
        yield span


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to carry it where metadata cannot (a queue);
    None outside a trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


def context_from(traceparent: str | None) -> otel_context.Context | None:
    """The context a stored `traceparent` names, to start a span as its child (None: a root)."""
    if not traceparent:
        return None
    return propagate.extract({TRACEPARENT: traceparent})


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in hex, as trace backends show them."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)


def instrument_sql(engine: AsyncEngine) -> None:
    """A span per SQL statement on `engine` (an AsyncEngine), its statement text without values.

    The engine is instrumented on its own: the package's instrumentor would also patch
    SQLAlchemy's `create_engine` for the whole process.
    """
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    # The tracer wants a connection-usage counter; the pool gauges on /metrics say that already.
    usage = get_meter("aias.sql").create_up_down_counter("db.client.connections.usage")
    EngineTracer(trace.get_tracer("aias.sql"), engine.sync_engine, usage)  # type: ignore[no-untyped-call]
