"""The one gRPC status -> HTTP table and the one error body every failure is answered with."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import grpc
from aiohttp import web

from aias.core.clients import error_info
from aias.core.errors import clip

log = logging.getLogger(__name__)

# grpc-gateway's table (runtime.HTTPStatusFromCode).
HTTP_STATUS: Mapping[grpc.StatusCode, int] = MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DATA_LOSS: 500,
    }
)

# ErrorInfo metadata a backend sets to refine the HTTP answer (a disabled workflow is 409).
HTTP_STATUS_OVERRIDE = "http_status"
# The reason a backend gives when the caller's internal credential is missing or wrong.
MISSING_INTERNAL_CREDENTIAL = "MISSING_INTERNAL_CREDENTIAL"
RETRY_AFTER = "retry_after_seconds"
# The most any error message says, whatever a backend put in it.
MAX_MESSAGE_CHARS = 1024


class GatewayError(Exception):
    """A failure answered with the error body: HTTP status, gRPC status name, reason, message."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
        detail: str = "",
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.http_status = HTTP_STATUS[code] if http_status is None else http_status
        self.headers = dict(headers or {})
        # What the operator needs in the log but the client must not see (hosts, exceptions).
        self.detail = detail
        # The connection cannot carry another request: its body was left unread or unfinished.
        self.close = close


def from_rpc_error(error: grpc.aio.AioRpcError, backend: str) -> GatewayError:
    """The HTTP answer to a failed backend call, honouring the backend's ErrorInfo."""
    code: grpc.StatusCode = error.code()
    found = error_info(error.trailing_metadata())
    if found is None:
        # Without ErrorInfo the status comes from gRPC itself, whose text for server-side
        # failures can name internal hosts or exceptions; client errors are safe to show.
        details = error.details() or code.name
        if code == grpc.StatusCode.UNAVAILABLE:
            message = f"the {backend} service is unavailable; retry later"
            return GatewayError(code, "BACKEND_UNAVAILABLE", message, detail=details)
        if HTTP_STATUS[code] >= 500:
            message = f"the {backend} service failed ({code.name}); quote the request id"
            return GatewayError(code, code.name, message, detail=details)
        return GatewayError(code, code.name, details)
    reason, message, metadata = found
    if reason == MISSING_INTERNAL_CREDENTIAL:
        # The gateway's own AIAS_INTERNAL_TOKEN is wrong: an operator's problem, not the client's.
        log.error("the %s service refused the gateway's internal credential", backend)
        return GatewayError(
            grpc.StatusCode.INTERNAL,
            "GATEWAY_MISCONFIGURED",
            "the gateway cannot reach its backends; quote the request id",
            http_status=500,
            detail=message,
        )
    headers = {}
    if (retry := metadata.get(RETRY_AFTER, "")).isdigit():
        headers["Retry-After"] = retry
    override = metadata.get(HTTP_STATUS_OVERRIDE, "")
    http_status = int(override) if override.isdigit() and 400 <= int(override) <= 599 else None
    return GatewayError(
        code,
        reason or code.name,
        message or error.details() or code.name,
        http_status=http_status,
        headers=headers,
    )


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response; UTF-8 without escaping, as clients expect to read it."""
    return web.Response(
        body=json.dumps(body, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_body(error: GatewayError, request_id: str) -> dict[str, Any]:
    """The one error shape: {"error": {code, status, message, reason, request_id}}."""
    return {
        "error": {
            "code": error.http_status,
            "status": error.code.name,
            "message": clip(error.message, MAX_MESSAGE_CHARS),
            "reason": error.reason,
            "request_id": request_id,
        }
    }


def error_response(error: GatewayError, request_id: str) -> web.Response:
    """A response with the error body and the error's status and headers."""
    headers = dict(error.headers)
    if error.http_status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    response = json_response(error_body(error, request_id), error.http_status, headers)
    if error.close:
        response.force_close()
    return response
