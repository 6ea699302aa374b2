"""An in-memory tracer provider installed for one test, and removed after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


@contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Installs a provider that keeps every finished span, as a process's start-up would; the
    factories called meanwhile instrument what they build. Afterwards no provider is installed.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        # The API lets a process set its provider once; a test resets it the way OpenTelemetry's
        # own test utilities do, so no later test runs traced.
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        trace._TRACER_PROVIDER = None


def in_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    """The finished spans of one trace (its id in hex, as log lines write it)."""
    wanted = int(trace_id, 16)
    return [
        span
        for span in exporter.get_finished_spans()
        if span.context is not None and span.context.trace_id == wanted
    ]
