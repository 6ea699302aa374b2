"""Builds and runs an asyncio gRPC server: auth, context, errors, metrics, health, reflection."""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
import uvloop
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes.rpc_attributes import RPC_GRPC_STATUS_CODE
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from aias.core import authz
from aias.core.clients import MAX_BATCH_CALLS, STATUS_DETAILS_KEY, STREAM_WINDOW_OPTIONS
from aias.core.context import (
    AUTHORIZATION,
    Caller,
    principal_var,
    request_id_var,
    role_var,
    run_id_var,
    tenant_id_var,
)
from aias.core.db import CONNECTION_ERRORS, Database, PoolMetrics
from aias.core.entitlements import NUMERIC_LIMITS, STEP_TYPES_LIMIT
from aias.core.errors import (
    ERROR_DOMAIN,
    LIMIT,
    RETRY_AFTER_SECONDS,
    DomainError,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    clip,
)
from aias.core.process import (
    DEFAULT_HEAP,
    HeapThresholds,
    heap,
    return_large_buffers_to_the_os,
    wait_for_termination,
    write_ready_file,
)
from aias.core.settings import ServerSettings
from aias.core.tracing import (
    REQUEST_ID_ATTRIBUTE,
    instrument_sql,
    server_interceptors,
    server_span,
    tracing_enabled,
)
from aias.core.version import VERSION_METADATA, package_version

log = logging.getLogger(__name__)

_LIMIT_NAMES = frozenset({*NUMERIC_LIMITS, STEP_TYPES_LIMIT})
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# The probe whose answer carries the process's version, so diagnostics can show it.
HEALTH_CHECK = HEALTH_PREFIX + "Check"


def status_for(error: DomainError) -> grpc.Status:
    """A google.rpc.Status with AIP-193 details, ready for `context.abort_with_status`.

    Always an ErrorInfo; a BadRequest when a field is at fault, a RetryInfo when waiting helps,
    a QuotaFailure when a limit was reached.
    """
    found: list[Message] = [
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    ]
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=clip(error.field), description=clip(error.message, 1024)
        )
        found.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if (retry := error.metadata.get(RETRY_AFTER_SECONDS, "")).isdigit():
        found.append(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(retry)))
        )
    if error.code == "RESOURCE_EXHAUSTED" and (limit := error.metadata.get(LIMIT)):
        quota = error_details_pb2.QuotaFailure.Violation(subject=limit, description=error.message)
        found.append(error_details_pb2.QuotaFailure(violations=[quota]))
    details = []
    for message in found:
        packed = any_pb2.Any()
        packed.Pack(message)
        details.append(packed)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code), message=error.message, details=details
    )
    return rpc_status.to_status(status)


class RpcMetrics:
    """RPC counters and latency histograms, named as go-grpc-prometheus names them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed, by method and code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "RPC latency, by method.",
            ["grpc_service", "grpc_method"],
            registry=registry,
        )
        self._refusals = Counter(
            "aias_entitlement_refusals",
            "Requests refused by a plan limit or quota, by limit and reason "
            "(PLAN_LIMIT, QUOTA_EXCEEDED).",
            ["limit", "reason"],
            registry=registry,
        )

    def refused(self, error: DomainError) -> None:
        """Counts an error that names the limit it enforces; other errors are not refusals."""
        if (limit := error.metadata.get(LIMIT)) is not None:
            # Limit names come from the code, but a label must stay bounded whatever happens.
            self._refusals.labels(limit if limit in _LIMIT_NAMES else "other", error.reason).inc()

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        service, _, name = method.lstrip("/").partition("/")
        self.handled.labels(service, name, code.name).inc()
        self.latency.labels(service, name).observe(seconds)
        if not method.startswith(HEALTH_PREFIX):  # probes would drown the access log
            # Successes at DEBUG: the gateway's access log already has one line per request, and
            # a line per RPC on the webhook path costs a tenth of its CPU. Failures stay INFO.
            log.log(
                logging.DEBUG if code == grpc.StatusCode.OK else logging.INFO,
                "rpc",
                extra={
                    "method": method,
                    "code": code.name,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )


class _ServingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler: checks the internal credential, sets context, maps errors, measures."""

    def __init__(self, internal_token: str, metrics: RpcMetrics) -> None:
        self._expected = f"Bearer {internal_token}".encode()
        self._metrics = metrics
        # Handlers never change: each method's is wrapped once, on its first call.
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        method: str = details.method
        if (known := self._wrapped.get(method)) is not None:
            return known
        handler = await continuation(details)
        if handler is None:
            return None
        self._wrapped[method] = wrapped = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        public = method.startswith(HEALTH_PREFIX)
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attr, make in kinds:
            behavior = getattr(handler, attr)
            if behavior is None:
                continue
            # Streaming handlers either yield (async generators) or call context.write and
            # return; the second kind (e.g. health's Watch) is wrapped like a unary handler.
            wrapped = (
                self._wrap_stream(method, public, behavior)
                if inspect.isasyncgenfunction(behavior)
                else self._wrap_unary(method, public, behavior)
            )
            return make(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _authorized(self, context: grpc.aio.ServicerContext) -> bool:
        for key, value in context.invocation_metadata() or ():
            if key == AUTHORIZATION and isinstance(value, str):
                return hmac.compare_digest(value.encode(), self._expected)
        return False

    async def _enter(
        self, method: str, public: bool, context: grpc.aio.ServicerContext, batched: bool
    ) -> None:
        # A batched call was let in with its batch, whose call carried the credential.
        if not public and not batched and not self._authorized(context):
            await context.abort_with_status(status_for(_MISSING_CREDENTIAL))
        try:
            caller = Caller.from_metadata(context.invocation_metadata() or ())
        except ValueError as error:
            await context.abort_with_status(
                status_for(InvalidArgument("AMBIGUOUS_CALLER", str(error)))
            )
        request_id_var.set(caller.request_id)
        if (span := trace.get_current_span()).is_recording():
            span.set_attribute(REQUEST_ID_ATTRIBUTE, caller.request_id)
        tenant_id_var.set(caller.tenant_id)
        principal_var.set(caller.principal)
        role_var.set(caller.role)
        run_id_var.set("")
        if not public and (denied := authz.denial(method, caller.role)) is not None:
            await context.abort_with_status(status_for(denied))

    async def _fail(self, error: Exception, context: grpc.aio.ServicerContext) -> None:
        if isinstance(error, NotImplementedError):
            # A method the servicer inherits from its generated base class: a caller's question
            # this server cannot answer, not a failure of it.
            error = _UNIMPLEMENTED
        if isinstance(error, DomainError):
            self._metrics.refused(error)
            await context.abort_with_status(status_for(error))
        if isinstance(error, CONNECTION_ERRORS):
            log.warning("database unreachable", extra={"error": type(error).__name__})
            await context.abort_with_status(status_for(_DATABASE_DOWN))
        log.exception("unhandled error")
        await context.abort_with_status(status_for(_INTERNAL))

    @asynccontextmanager
    async def _serving(
        self, method: str, public: bool, context: grpc.aio.ServicerContext, batched: bool = False
    ) -> AsyncIterator[None]:
        """Around one handler: credential and context first, errors mapped, then measured."""
        started = time.perf_counter()
        fallback = grpc.StatusCode.OK
        _batches.set(self)
        try:
            await self._enter(method, public, context, batched)
            try:
                yield
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await self._fail(error, context)
        except grpc.aio.AbortError:
            fallback = grpc.StatusCode.UNKNOWN
            raise
        finally:
            code = context.code()
            if not isinstance(code, grpc.StatusCode):
                code = fallback
            self._metrics.observe(method, code, time.perf_counter() - started)
            # OpenTelemetry's interceptor sees `abort`, not the `abort_with_status` used here.
            if code != grpc.StatusCode.OK and (span := trace.get_current_span()).is_recording():
                span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
                span.set_status(StatusCode.ERROR, code.name)

    def _wrap_unary(self, method: str, public: bool, behavior: Any) -> Any:
        announce = ((VERSION_METADATA, package_version()),) if method == HEALTH_CHECK else ()

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._serving(method, public, context):
                if announce:
                    await context.send_initial_metadata(announce)
                return await behavior(request, context)

        return wrapper

    async def serve_batched(
        self, method: str, call: Any, behavior: Any, outcome_class: type[_Outcome]
    ) -> _Outcome:
        """One call of a batch, served as `method` would serve it alone (see `serve_batch`)."""
        context = _BatchedCall(call.metadata)
        with server_span(method, call.metadata):
            try:
                async with self._serving(method, False, context, batched=True):
                    response = await behavior(call.request, context)
            except grpc.aio.AbortError:
                return outcome_class(error=context.error)
        return outcome_class(response=response)

    def _wrap_stream(self, method: str, public: bool, behavior: Any) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._serving(method, public, context):
                async for item in behavior(request, context):
                    yield item

        return wrapper


_Outcome = TypeVar("_Outcome", bound=Message)
# The interceptor serving the current RPC, for the batches its handler serves.
_batches: contextvars.ContextVar[_ServingInterceptor] = contextvars.ContextVar("batches")


class _BatchedCall:
    """The servicer context of one call of a batch: its own metadata, and an abort that ends
    only that call, keeping its status for the batch's answer. A batched call sends no metadata
    of its own (the gateway answers it with its route's success status), so a handler served in
    batches must not need `send_initial_metadata`."""

    def __init__(self, metadata: Mapping[str, str]) -> None:
        self._metadata = tuple(metadata.items())
        self._code: grpc.StatusCode | None = None
        self.error = status_pb2.Status()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        self._code = status.code
        for key, value in status.trailing_metadata:
            if key == STATUS_DETAILS_KEY:
                self.error = status_pb2.Status.FromString(value)
        raise grpc.aio.AbortError(status.details)


async def serve_batch(
    method: str,
    calls: Sequence[Any],
    behavior: Callable[[Any, Any], Awaitable[Any]],
    outcome_class: type[_Outcome],
) -> list[_Outcome]:
    """Serves each call of a batch as the unary `method` would serve it alone, all at once.

    Each call (a message with `request` and `metadata`) gets its own context from its metadata
    (request id, caller), the method's role check, its errors mapped to a google.rpc.Status, its
    line in the metrics under `method`, and its span when tracing. The outcomes
    (`outcome_class`: `response` or `error`) come in the calls' order. For the servicer of a
    batch RPC (`aias.api.v1.batch`), with `behavior` the servicer's handler of `method`.
    """
    if len(calls) > MAX_BATCH_CALLS:
        raise InvalidArgument(
            "BATCH_TOO_LARGE", f"a batch holds at most {MAX_BATCH_CALLS} calls, not {len(calls)}"
        )
    serving = _batches.get()
    # A task per call: each sets its own context variables.
    served = [
        asyncio.create_task(serving.serve_batched(method, call, behavior, outcome_class))
        for call in calls
    ]
    return list(await asyncio.gather(*served))


_MISSING_CREDENTIAL = Unauthenticated(
    "MISSING_INTERNAL_CREDENTIAL",
    "this RPC requires the internal service credential "
    "(authorization: Bearer <AIAS_INTERNAL_TOKEN>)",
)
_UNIMPLEMENTED = Unimplemented("UNIMPLEMENTED", "this server does not implement the method called")
_INTERNAL = DomainError("INTERNAL", "an internal error occurred; the request id is in the logs")
_DATABASE_DOWN = Unavailable(
    "DATABASE_UNAVAILABLE",
    "the database cannot be reached; retry shortly",
    {"retry_after_seconds": "2"},
)
# How often a server checks its dependencies (its database) for its health status.
HEALTH_PROBE_SECONDS = 2.0


class BindError(RuntimeError):
    """The server's port is taken (or not allowed); the message says what to change."""


@dataclass
class Registration:
    """One gRPC service to add: its full name and the generated `add_..._to_server` call."""

    name: str
    add: Callable[[grpc.aio.Server], None]


@dataclass
class BuiltServer:
    """A server that is bound but not started, with what `serve` needs to run and stop it."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]
    metrics: RpcMetrics
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run when shutdown begins, before in-flight RPCs are awaited (e.g. to end watch streams).
    on_draining: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Dependencies that must answer for the server to report SERVING (e.g. `Database.ping`).
    probes: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # AIAS_TRACE_SQL: databases added with `add_database` get a span per statement.
    trace_sql: bool = False
    _prober: asyncio.Task[None] | None = None

    def add_database(self, db: Database) -> None:
        """The process's database: health probe, pool gauges on /metrics, SQL spans if asked."""
        self.probes.append(db.ping)
        self.metrics.registry.register(PoolMetrics(db.engine))
        if self.trace_sql and tracing_enabled():
            instrument_sql(db.engine)

    async def start(self) -> None:
        await self.server.start()
        for begin in self.on_start:
            await begin()
        await self._set_health(serving=True)
        if self.probes:
            self._prober = asyncio.create_task(self._probe_forever(), name="health-probes")

    async def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def _probe_forever(self) -> None:
        """NOT_SERVING while a dependency fails, so readiness checks route around this process."""
        serving = True
        while True:
            await asyncio.sleep(HEALTH_PROBE_SECONDS)
            try:
                for probe in self.probes:
                    await probe()
                healthy = True
            except Exception as error:
                healthy = False
                if serving:
                    log.warning("a dependency is down", extra={"error": type(error).__name__})
            if healthy != serving:
                serving = healthy
                await self._set_health(serving=serving)

    async def stop(self, grace: float) -> None:
        """Marks NOT_SERVING, lets in-flight RPCs finish within `grace`, then runs cleanups."""
        if self._prober is not None:
            self._prober.cancel()
        await self.health.enter_graceful_shutdown()
        for drain in self.on_draining:
            await drain()
        await self.server.stop(grace)
        await _rpc_tasks_ended()
        for cleanup in reversed(self.on_stop):
            await cleanup()


# grpc.aio's coroutines that carry one RPC each (its scheduling and its handler's exceptions).
_RPC_COROUTINES = frozenset({"_schedule_rpc_coro", "_handle_exceptions"})
_RPC_UNWIND_SECONDS = 1.0


async def _rpc_tasks_ended() -> None:
    """Waits, up to _RPC_UNWIND_SECONDS, for the tasks of RPCs that ended during the stop.

    `server.stop` returns once gRPC's core is done with every call, while the task of an RPC its
    client cancelled at that moment (a health watch, say) may not have run its cancellation yet.
    Closing the event loop then cancels that task, and grpc.aio reports it as an unhandled
    exception, with a raw traceback on stderr besides the log line.
    """
    current = asyncio.current_task()
    pending = [
        task
        for task in asyncio.all_tasks()
        if task is not current and getattr(task.get_coro(), "__name__", "") in _RPC_COROUTINES
    ]
    if pending:
        await asyncio.wait(pending, timeout=_RPC_UNWIND_SECONDS)


def build_grpc_server(
    settings: ServerSettings,
    services: Sequence[Registration],
    registry: CollectorRegistry | None = None,
) -> BuiltServer:
    """The server with every service, health and reflection, bound to settings.port (0: any).

    `registry` is what its /metrics serves, for a process whose servicers count more than RPCs.
    """
    metrics = RpcMetrics(registry or CollectorRegistry())
    server = grpc.aio.server(
        # Tracing's interceptor first, so the RPC's span is current in ours (its log lines).
        interceptors=[
            *server_interceptors(),
            _ServingInterceptor(settings.internal_token, metrics),
        ],
        options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            # Clients ping every 30 s to keep long streams (entitlement watches) alive through
            # idle proxies; gRPC's default would answer such pings with GOAWAY too_many_pings.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 0),
            # A second server on the same port fails to start instead of silently sharing it.
            ("grpc.so_reuseport", 0),
            *STREAM_WINDOW_OPTIONS,
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = []
    for service in services:
        service.add(server)
        names.append(service.name)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise BindError(
            f"{settings.service} cannot listen on {address}: the port is in use or not allowed; "
            f"stop the other process or set AIAS_{settings.service.upper().replace('-', '_')}_PORT"
        )
    return BuiltServer(
        server, port, health_servicer, names, metrics, trace_sql=settings.tracing.sql
    )


def start_metrics_server(port: int, registry: CollectorRegistry) -> int:
    """Serves /metrics on its own port; returns the bound port (useful when asked for 0)."""
    httpd, _thread = start_http_server(port, registry=registry)
    return int(httpd.server_port)


async def serve(built: BuiltServer, settings: ServerSettings) -> None:
    """Runs a built server until SIGTERM, then shuts down gracefully."""
    await built.start()
    metrics_port = start_metrics_server(settings.metrics_port, built.metrics.registry)
    log.info("serving", extra={"port": built.port, "metrics_port": metrics_port})
    write_ready_file(settings.ready_file, port=built.port, metrics_port=metrics_port)
    heap.after_start()
    await wait_for_termination()
    log.info("shutting down", extra={"grace_seconds": settings.grace_seconds})
    await built.stop(settings.grace_seconds)
    log.info("stopped")


class ProcessSettings(Protocol):
    """What `run_main` needs of a process's settings object."""

    @property
    def server(self) -> ServerSettings: ...


_S = TypeVar("_S", bound=ProcessSettings)


def run_main(
    load: Callable[[], _S],
    build: Callable[[_S], Awaitable[BuiltServer]],
    heap_thresholds: HeapThresholds = DEFAULT_HEAP,
) -> None:
    """The whole of a gRPC process's main: settings, logging, build, serve until SIGTERM."""
    from aias.core.logging import configure_logging
    from aias.core.settings import SettingsError
    from aias.core.tracing import configure_tracing

    try:
        settings = load()
    except SettingsError as error:
        raise SystemExit(str(error)) from None
    configure_logging(settings.server.service, settings.server.log_level)
    return_large_buffers_to_the_os(heap_thresholds)
    # Before the build: the factories add tracing interceptors only when a provider is installed.
    tracer_provider = configure_tracing(settings.server.service, settings.server.tracing)

    async def _run() -> None:
        built = await build(settings)
        await serve(built, settings.server)

    try:
        # uvloop: grpc.aio, psycopg and asyncio's own work take less CPU on it (ingest: -7 %).
        uvloop.run(_run())
    except BindError as error:
        raise SystemExit(str(error)) from None
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # sends the spans still buffered
