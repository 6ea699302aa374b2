"""The app factory: all routes in one place, backends opened in cleanup_ctx, one error mapper."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib.metadata import version

import grpc
from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST

from aias.core.context import request_id_var, tenant_id_var
from aias.core.entitlements import EntitlementsCache
from aias.core.tracing import REQUEST_ID_ATTRIBUTE, tracing_enabled
from aias.gateway.auth import Authenticator
from aias.gateway.backends import BACKENDS, Backends
from aias.gateway.batching import CallBatcher
from aias.gateway.dashboard.pages import ROUTES as DASHBOARD_ROUTES
from aias.gateway.dashboard.state import DASHBOARD, Dashboard
from aias.gateway.errors import GatewayError, error_response, json_response
from aias.gateway.ingress import (
    MAX_BODY_BYTES,
    BodyReader,
    InflightLimit,
    check_head,
    defer_continue,
)
from aias.gateway.metrics import HttpMetrics
from aias.gateway.openapi import build_document, render_docs
from aias.gateway.proxy import CALL_TIMEOUT_SECONDS, RpcProxy
from aias.gateway.settings import GatewaySettings
from aias.gateway.template import Router
from aias.gateway.transcoder import RpcRoute, build_routes

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")

Handler = Callable[[web.Request, Mapping[str, str]], Awaitable[web.StreamResponse]]

SETTINGS = web.AppKey("settings", GatewaySettings)
ROUTER = web.AppKey("router", Router[Handler])
METRICS = web.AppKey("metrics", HttpMetrics)
BACKEND_POOL = web.AppKey("backends", Backends)
PROXY = web.AppKey("proxy", RpcProxy)
ROUTES = web.AppKey("routes", list[RpcRoute])
ENTITLEMENT_CHANGES = web.AppKey("entitlement_changes", EntitlementsCache)
INFLIGHT = web.AppKey("inflight", InflightLimit)
API_DOCUMENT = web.AppKey("api_document", bytes)
API_PAGE = web.AppKey("api_page", bytes)
REQUEST_ID = web.RequestKey("request_id", str)
ROUTE_LABEL = web.RequestKey("route", str)

READINESS_TIMEOUT_SECONDS = 2.0
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
_UNMATCHED = "unmatched"
# Probes and scrapes get no span: they would drown the traces.
_UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Span names carry the method; any other a client invents is named HTTP, so names stay bounded.
_SPAN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def build_router(routes: list[RpcRoute]) -> Router[Handler]:
    """The fixed routes, the dashboard's, and one route per google.api.http binding of every
    backend."""
    router: Router[Handler] = Router()
    router.add("GET", "/healthz", _healthz)
    router.add("GET", "/readyz", _readyz)
    router.add("GET", "/metrics", _metrics)
    router.add("GET", "/openapi.json", _openapi)
    router.add("GET", "/docs", _docs)
    for method, template, handler in DASHBOARD_ROUTES:
        router.add(method, template, handler)
    for route in routes:
        router.add(route.http_method, route.template, _rpc_handler(route))
    return router


def init_app(settings: GatewaySettings) -> web.Application:
    """The gateway application; backends are connected when it starts and closed when it stops."""
    middlewares: list[Middleware] = [_observe, _errors, _guard]
    if tracing_enabled():
        # Outermost, so the access log line (written by `_observe`) carries the trace id.
        middlewares.insert(0, _tracing(trace.get_tracer("aias.gateway")))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    routes = build_routes(BACKENDS)
    app[ROUTES] = routes
    app[ROUTER] = build_router(routes)
    document = build_document(routes, version("aias"))
    app[API_DOCUMENT] = json.dumps(document, ensure_ascii=False).encode()
    app[API_PAGE] = render_docs(document).encode()
    app[METRICS] = HttpMetrics()
    app[INFLIGHT] = InflightLimit(settings.max_inflight)
    app.cleanup_ctx.append(_backends)
    app.on_response_prepare.append(_echo_request_id)
    # One catch-all: matching is ours, so a known path with the wrong method can answer 405.
    # `[\s\S]`, not `.`: a path may hold a newline (%0A), which `.` would not match.
    app.router.add_route("*", r"/{path:[\s\S]*}", _dispatch, expect_handler=defer_continue)
    return app


async def _backends(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    backends = Backends(settings.backends, settings.internal_token)
    app[BACKEND_POOL] = backends
    authenticator = Authenticator(settings.admin_token, backends.channel("tenancy"))
    # Tenancy's change notices evict the keys of a tenant whose keys or status changed.
    changes = EntitlementsCache(backends.channel("tenancy"))
    changes.add_listener(authenticator.forget)
    app[ENTITLEMENT_CHANGES] = changes
    app[PROXY] = RpcProxy(
        backends,
        authenticator,
        BodyReader(settings.body_buffer_bytes, settings.body_timeout_seconds),
        _batchers(app[ROUTES], backends, settings),
    )
    app[DASHBOARD] = Dashboard(settings, backends, authenticator, app[PROXY])
    await changes.start()
    yield
    await changes.stop()
    await backends.close()


def _batchers(
    routes: list[RpcRoute], backends: Backends, settings: GatewaySettings
) -> dict[str, CallBatcher]:
    """A batcher for each RPC whose route names a batch RPC, unless batches are off."""
    if settings.batch_max_calls <= 1:
        return {}
    return {
        route.rpc: CallBatcher(
            backends.channel(route.backend),
            route,
            CALL_TIMEOUT_SECONDS,
            max_calls=settings.batch_max_calls,
            in_flight=settings.batches_in_flight,
        )
        for route in routes
        if route.batch is not None
    }


def _rpc_handler(route: RpcRoute) -> Handler:
    async def handle(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        return await request.app[PROXY].handle(route, request, params, request[REQUEST_ID])

    return handle


async def _dispatch(request: web.Request) -> web.StreamResponse:
    route, params = request.app[ROUTER].resolve(request.method, request.rel_url.raw_path)
    request[ROUTE_LABEL] = route.template.source
    return await route.target(request, params)


async def _healthz(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def _readyz(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    if request.app[INFLIGHT].draining:
        return json_response({"status": "draining"}, 503)
    backends = await request.app[BACKEND_POOL].health(READINESS_TIMEOUT_SECONDS)
    ready = all(state == "SERVING" for state in backends.values())
    body = {"status": "ready" if ready else "not_ready", "backends": backends}
    return json_response(body, 200 if ready else 503)


async def _openapi(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    return web.Response(body=request.app[API_DOCUMENT], content_type="application/json")


async def _docs(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    return web.Response(body=request.app[API_PAGE], content_type="text/html", charset="utf-8")


async def _metrics(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    return web.Response(
        body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def request_id(header: str | None) -> str:
    """The client's X-Request-ID when it is short and plain, so it is safe in logs and metadata."""
    if header and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


@web.middleware
async def _observe(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Gives the request its id and context, and measures it by route template."""
    request[REQUEST_ID] = request_id(request.headers.get("X-Request-ID"))
    request[ROUTE_LABEL] = _UNMATCHED
    request_id_var.set(request[REQUEST_ID])
    tenant_id_var.set("")
    started = time.perf_counter()
    status, sent = 500, 0
    try:
        response = await handler(request)
        status, sent = response.status, response.body_length
        return response
    except asyncio.CancelledError:
        status = 499
        raise
    finally:
        elapsed = time.perf_counter() - started
        request.app[METRICS].observe(request[ROUTE_LABEL], request.method, status, elapsed)
        if request.app[SETTINGS].access_log and access_log.isEnabledFor(logging.INFO):
            # request_id and tenant_id come from the context, as on every line.
            access_log.info(
                "request",
                extra={
                    **_log_fields(request),
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "bytes": sent,
                },
            )


def _tracing(tracer: trace.Tracer) -> Middleware:
    """A server span per request, child of the client's `traceparent`, named by route template.

    Not opentelemetry-instrumentation-aiohttp-server: it records the request's path and URL,
    and a webhook's path holds its endpoint's secret; and it names spans by aiohttp's route,
    which here is one catch-all.
    """

    @web.middleware
    async def _trace(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in _UNTRACED_PATHS:
            return await handler(request)
        method = request.method if request.method in _SPAN_METHODS else "HTTP"
        with tracer.start_as_current_span(
            method,
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
        ) as span:
            try:
                response = await handler(request)
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:
                    span.set_status(StatusCode.ERROR)
                return response
            finally:
                route = request.get(ROUTE_LABEL, _UNMATCHED)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute(REQUEST_ID_ATTRIBUTE, request.get(REQUEST_ID, ""))

    return _trace


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes the one error body; unexpected ones are logged, never shown."""
    try:
        return await handler(request)
    except GatewayError as error:
        if error.http_status >= 500:
            log.warning(
                "request failed",
                extra={
                    **_log_fields(request),
                    "reason": error.reason,
                    "status": error.http_status,
                    "error": error.message,
                    "detail": error.detail,
                },
            )
        return error_response(error, request[REQUEST_ID])
    except Exception:
        log.exception("unhandled error", extra=_log_fields(request))
        internal = GatewayError(
            grpc.StatusCode.INTERNAL, "INTERNAL", "an internal error occurred; quote the request id"
        )
        return error_response(internal, request[REQUEST_ID])


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Caps the requests in flight and refuses bad request heads before anything is read."""
    inflight = request.app[INFLIGHT]
    with inflight.admit():
        check_head(request)
        response = await handler(request)
    if inflight.draining:
        # A keep-alive connection must not carry another request into a stopping gateway.
        response.force_close()
    return response


def _log_fields(request: web.Request) -> dict[str, str]:
    """The one redaction point: a request shows in the log by method and route template only.

    Its path and query can carry secrets (a webhook path holds the endpoint secret), and so can
    its headers and body; none of them is logged.
    """
    return {"method": request.method, "route": request[ROUTE_LABEL]}


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    if (request_id := request.get(REQUEST_ID)) is not None:
        response.headers["X-Request-ID"] = request_id
