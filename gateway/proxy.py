"""Serves one HTTP request with one RPC: authenticate, map the request, call, map the answer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

from aias.api.v1 import annotations_pb2 as access_pb2
from aias.core.context import FORWARDED_HEADER_PREFIX, Caller, tenant_id_var
from aias.core.process import heap
from aias.gateway.auth import Authenticator
from aias.gateway.backends import Backends
from aias.gateway.batching import BatchUnavailable, CallBatcher
from aias.gateway.binding import PRINTABLE_ASCII, build_admission, build_request
from aias.gateway.errors import GatewayError, error_body, from_rpc_error
from aias.gateway.ingress import BodyReader
from aias.gateway.transcoder import (
    ADMISSION_LIMIT_FIELD,
    DEFAULT_CONTENT_TYPE,
    RawHttpBody,
    RpcRoute,
    render_json,
    render_unary,
    response_head,
)

log = logging.getLogger(__name__)

# Request headers the backends may act on, forwarded as `grpcgateway-<name>` metadata.
FORWARDED_HEADERS = (
    "Idempotency-Key",
    "Webhook-Id",
    "Stripe-Signature",
    "Content-Type",
    "User-Agent",
    "Range",
    "If-Range",
    "If-None-Match",
)
TRACE_HEADERS = ("traceparent", "tracestate")
MAX_TRACE_HEADER_CHARS = 512
# A unary RPC, and a stream's first message, must arrive within this; after the first
# message a stream goes on for as long as the backend keeps it open.
CALL_TIMEOUT_SECONDS = 30.0
# Bodies up to this size are read without asking the route's admission RPC first.
ADMISSION_BODY_BYTES = 64 * 1024
# Requests up to this size go in batches where their route has one; a larger one is sent on its
# own, so a batch of the most calls stays well under the backends' 8 MiB message limit.
MAX_BATCHED_BYTES = 64 * 1024
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
# A JSON stream waiting for its next message checks this often whether its client is gone,
# since aiohttp tells a handler only when it writes.
CLIENT_CHECK_SECONDS = 1.0
# An idle Server-Sent Events stream sends a comment this often, so proxies keep it open.
KEEPALIVE_SECONDS = 15.0


class RpcProxy:
    """Turns a matched route and its HTTP request into a backend call and back."""

    def __init__(
        self,
        backends: Backends,
        authenticator: Authenticator,
        bodies: BodyReader,
        batchers: Mapping[str, CallBatcher] | None = None,
    ) -> None:
        self._backends = backends
        self._auth = authenticator
        self._bodies = bodies
        # By RPC: the routes whose calls go in batches (`aias.api.v1.batch`).
        self._batchers = dict(batchers or {})

    async def handle(
        self, route: RpcRoute, request: web.Request, path_params: Mapping[str, str], request_id: str
    ) -> web.StreamResponse:
        caller = await self.authenticate(route.access, request, request_id)
        return await self.forward(route, request, path_params, caller)

    async def authenticate(self, access: int, request: web.Request, request_id: str) -> Caller:
        """The caller an access rule lets through, from the request's Authorization header."""
        authorization = request.headers.get("Authorization")
        if access != access_pb2.ACCESS_PUBLIC and authorization is not None:
            _check_authorization(authorization)
        return await self._auth.authenticate(access, authorization, request_id)

    async def forward(
        self, route: RpcRoute, request: web.Request, path_params: Mapping[str, str], caller: Caller
    ) -> web.StreamResponse:
        """Serves the request with the route's RPC, acting as an already authenticated caller."""
        tenant_id_var.set(caller.tenant_id)
        metadata = [*caller.metadata(), *_forwarded(request.headers)]
        limit = self._bodies.limit(
            await self._admit(route, path_params, request.headers, metadata)
            if route.admission and _worth_admitting(request)
            else 0
        )
        # The body's room is held until the call ends: the request message holds its bytes.
        held: AbstractAsyncContextManager[None] = (
            self._bodies.reserve(request, limit) if route.body else nullcontext()
        )
        async with held:
            # The body is passed, not kept: during the call only the message holds its bytes.
            message = build_request(
                route,
                path_params,
                request.query,
                request.headers,
                await self._bodies.read(request, limit) if route.body else b"",
            )
            return await self._call(route, request, message, metadata, caller.request_id)

    async def _admit(
        self,
        route: RpcRoute,
        path_params: Mapping[str, str],
        headers: Mapping[str, str],
        metadata: list[tuple[str, str]],
    ) -> int:
        """Asks the route's admission RPC before any body is read; its refusal is the answer."""
        admission = route.admission
        assert admission is not None
        call = self._backends.channel(route.backend).unary_unary(
            admission.rpc,
            request_serializer=admission.request_class.SerializeToString,
            response_deserializer=admission.response_class.FromString,
        )
        try:
            reply = await call(
                build_admission(admission, path_params, headers),
                metadata=metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, route.backend) from None
        return int(getattr(reply, ADMISSION_LIMIT_FIELD))

    async def _call(
        self,
        route: RpcRoute,
        request: web.Request,
        message: Message,
        metadata: list[tuple[str, str]],
        request_id: str,
    ) -> web.StreamResponse:
        channel = self._backends.channel(route.backend)
        serializers: dict[str, Any] = {
            "request_serializer": route.request_class.SerializeToString,
            "response_deserializer": route.response_class.FromString,
        }
        if route.server_streaming:
            if route.raw_response and not route.response_body:
                serializers["response_deserializer"] = RawHttpBody.parse
            stream = channel.unary_stream(route.rpc, **serializers)(message, metadata=metadata)
            if route.raw_response:
                return await _stream(route, request, stream)
            return await _stream_json(route, request, stream, request_id)
        batcher = self._batchers.get(route.rpc)
        if batcher is not None and batcher.available and message.ByteSize() <= MAX_BATCHED_BYTES:
            try:
                response = await batcher.call(message, metadata)
            except BatchUnavailable:
                pass  # sent on its own below
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error, route.backend) from None
            else:
                return render_unary(route, response, ())
        call = channel.unary_unary(route.rpc, **serializers)(
            message, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
        )
        try:
            response = await call
            initial = await call.initial_metadata()
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, route.backend) from None
        return render_unary(route, response, initial)


def _worth_admitting(request: web.Request) -> bool:
    """Whether to ask the admission RPC before reading: for a large or unannounced body only.

    A small body costs less to read than a second RPC, and the call it is read for makes the
    same checks; the admission is what keeps large hostile bodies unread.
    """
    declared = request.content_length
    return declared is None or declared > ADMISSION_BODY_BYTES


def _check_authorization(authorization: str) -> None:
    """aiohttp passes undecodable header bytes on as lone surrogates, which no token contains."""
    if not PRINTABLE_ASCII.fullmatch(authorization):
        raise GatewayError(
            grpc.StatusCode.UNAUTHENTICATED,
            "MALFORMED_CREDENTIALS",
            "the Authorization header must be printable ASCII: 'Bearer <api key>'",
        )


def _forwarded(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The client headers a backend may see: a short allowlist, never credentials or x-aias-*."""
    allowed = [
        (FORWARDED_HEADER_PREFIX + name.lower(), value)
        for name in FORWARDED_HEADERS
        # gRPC refuses metadata values outside printable ASCII; such a header is not forwarded.
        if (value := headers.get(name)) is not None and PRINTABLE_ASCII.fullmatch(value)
    ]
    # W3C trace context keeps its own names, so tracing libraries on the backends find it.
    allowed += [
        (name, value)
        for name in TRACE_HEADERS
        if (value := headers.get(name)) is not None
        and len(value) <= MAX_TRACE_HEADER_CHARS
        and PRINTABLE_ASCII.fullmatch(value)
    ]
    return allowed


# -- server-streaming RPCs: raw bytes (google.api.HttpBody) or JSON messages ------------------


async def _first(route: RpcRoute, call: Any) -> tuple[Any, Any]:
    """The stream's first message (None if it ended at once) and its initial metadata.

    Until it arrives nothing is sent, so a failure here is answered with the error response.
    """
    try:
        async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
            first = await call.read()
            initial = await call.initial_metadata()
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error, route.backend) from None
    except TimeoutError:
        call.cancel()
        raise GatewayError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DEADLINE_EXCEEDED",
            f"the {route.backend} service did not start the response in time",
        ) from None
    return (None if first is grpc.aio.EOF else first), initial


async def _stream(route: RpcRoute, request: web.Request, call: Any) -> web.StreamResponse:
    """Raw bytes as they arrive; errors before the first chunk still get the error body."""
    first, initial = await _first(route, call)
    status, headers = response_head(initial, keep_length=True, status=route.success_status)
    if status != 304:
        headers["Content-Type"] = (first.content_type if first else "") or DEFAULT_CONTENT_TYPE
    response = web.StreamResponse(status=status, headers=headers)
    declared = response.content_length
    await response.prepare(request)
    if _bodiless(request, status):
        call.cancel()
        await response.write_eof()
        return response
    written = 0
    try:
        chunk = first
        while chunk is not None:
            data = chunk.data
            await response.write(data)
            written += len(data)
            received = await call.read()
            chunk = None if received is grpc.aio.EOF else received
    except grpc.aio.AioRpcError as error:
        log.error(
            "download failed after the response started",
            extra={"rpc": route.rpc, "code": error.code().name, "bytes_sent": written},
        )
        _abort(request)
        return response
    except ConnectionError:
        log.info("client closed the connection during a download", extra={"rpc": route.rpc})
        return response
    finally:
        # A no-op once the stream ended; otherwise it stops the backend producing unread chunks.
        call.cancel()
        heap.after_transfer(written)
    if declared is not None and written != declared:
        log.error(
            "download length differs from its Content-Length",
            extra={"rpc": route.rpc, "declared": declared, "bytes_sent": written},
        )
        _abort(request)
        return response
    await response.write_eof()
    return response


def _bodiless(request: web.Request, status: int) -> bool:
    """HEAD (the headers GET would send), 204 and 304 end with the headers."""
    return request.method == "HEAD" or status in (204, 304)


def _abort(request: web.Request) -> None:
    """Closing without the final chunk is how HTTP/1.1 tells a client the body is incomplete."""
    if request.transport is not None:
        request.transport.abort()


async def _stream_json(
    route: RpcRoute, request: web.Request, call: Any, request_id: str
) -> web.StreamResponse:
    """Each message as a line of JSON (NDJSON), or as a Server-Sent Event (`data: <json>`)
    when the client sends `Accept: text/event-stream`.

    An error before the first message is the error response; after it, the error body is the
    stream's last item. The call is cancelled when the client goes away.
    """
    events = EVENT_STREAM in request.headers.get("Accept", "")
    first, initial = await _first(route, call)
    status, headers = response_head(initial, keep_length=False, status=route.success_status)
    headers["Content-Type"] = EVENT_STREAM if events else NDJSON
    headers["Cache-Control"] = "no-cache"
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    if _bodiless(request, status):
        call.cancel()
        await response.write_eof()
        return response
    item = first
    try:
        try:
            while item is not None:
                await response.write(_json_item(render_json(route, item), events))
                item = await _next_or_gone(request, response, call, events)
        except grpc.aio.AioRpcError as error:
            failure = from_rpc_error(error, route.backend)
            log.warning(
                "stream failed after the response started",
                extra={"rpc": route.rpc, "reason": failure.reason, "detail": failure.detail},
            )
            await response.write(_json_item(error_body(failure, request_id), events))
        await response.write_eof()
    except ConnectionError:
        log.info("client closed the connection during a stream", extra={"rpc": route.rpc})
    finally:
        # A no-op once the stream ended; otherwise it ends the backend's RPC.
        call.cancel()
    return response


async def _next_or_gone(
    request: web.Request, response: web.StreamResponse, call: Any, events: bool
) -> Any:
    """The next message, or None at the end; ConnectionError once the client has gone."""
    reading = asyncio.ensure_future(call.read())
    idle = 0.0
    try:
        while not reading.done():
            await asyncio.wait({reading}, timeout=CLIENT_CHECK_SECONDS)
            if reading.done():
                break
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the client closed the connection")
            idle += CLIENT_CHECK_SECONDS
            if events and idle >= KEEPALIVE_SECONDS:
                await response.write(b": keep-alive\n\n")
                idle = 0.0
        received = reading.result()
    finally:
        reading.cancel()
    return None if received is grpc.aio.EOF else received


def _json_item(value: Any, events: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode() if events else f"{text}\n".encode()
