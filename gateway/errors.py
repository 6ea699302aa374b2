"""The one gRPC status -> HTTP table and the one error body every failure is answered with."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from aias.core.clients import STATUS_DETAILS_KEY, error_info
from aias.core.errors import CONTENT_RANGE, ERROR_DOMAIN, HTTP_STATUS_BY_CODE, clip, http_status

log = logging.getLogger(__name__)

# The one table, shared with the services that record what they answered, by grpc's codes.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = MappingProxyType(
    {grpc.StatusCode[name]: status for name, status in HTTP_STATUS_BY_CODE.items()}
)

# The reason a backend gives when the caller's internal credential is missing or wrong.
MISSING_INTERNAL_CREDENTIAL = "MISSING_INTERNAL_CREDENTIAL"
RETRY_AFTER = "retry_after_seconds"
# How long a client should wait before retrying when a backend is down.
BACKEND_RETRY_AFTER = "1"
# The Content-Range of a 416 answer (RFC 9110 14.4): the size, no range.
_CONTENT_RANGE = re.compile(r"bytes \*/\d{1,19}")
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
        field: str = "",
        details: list[dict[str, Any]] | None = None,
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
        # The request field at fault, for a BadRequest detail.
        self.field = field
        # AIP-193 details as a backend sent them (JSON form); the gateway's own errors make theirs.
        self.details = details

    def details_json(self) -> list[dict[str, Any]]:
        """The error's details: a backend's as sent, else ErrorInfo, BadRequest and RetryInfo."""
        if self.details is not None:
            return self.details
        made: list[Message] = [error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN)]
        if self.field:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=clip(self.field), description=clip(self.message, MAX_MESSAGE_CHARS)
            )
            made.append(error_details_pb2.BadRequest(field_violations=[violation]))
        if (retry := self.headers.get("Retry-After", "")).isdigit():
            delay = duration_pb2.Duration(seconds=int(retry))
            made.append(error_details_pb2.RetryInfo(retry_delay=delay))
        return [_detail_json(message) for message in made]


# The detail types a client may see; DebugInfo (stack traces) and unknown types are dropped.
_PUBLIC_DETAILS: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


def _detail_json(message: Message) -> dict[str, Any]:
    body = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return {"@type": f"type.googleapis.com/{message.DESCRIPTOR.full_name}", **body}


def _backend_details(metadata: Any) -> list[dict[str, Any]]:
    """The public details of the google.rpc.Status a backend sent, as JSON."""
    found: list[dict[str, Any]] = []
    for key, value in metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        for packed in status_pb2.Status.FromString(value).details:
            for kind in _PUBLIC_DETAILS:
                if packed.Is(kind.DESCRIPTOR):
                    message = kind()
                    packed.Unpack(message)
                    found.append(_detail_json(message))
    return found


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
            return GatewayError(
                code,
                "BACKEND_UNAVAILABLE",
                message,
                detail=details,
                headers={"Retry-After": BACKEND_RETRY_AFTER},
            )
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
    elif code == grpc.StatusCode.UNAVAILABLE:
        headers["Retry-After"] = BACKEND_RETRY_AFTER
    if _CONTENT_RANGE.fullmatch(content_range := metadata.get(CONTENT_RANGE, "")):
        headers["Content-Range"] = content_range
    return GatewayError(
        code,
        reason or code.name,
        message or error.details() or code.name,
        http_status=http_status(code.name, metadata),
        headers=headers,
        details=_backend_details(error.trailing_metadata()),
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
    """The one error shape: {"error": {code, status, message, reason, request_id, details}}."""
    return {
        "error": {
            "code": error.http_status,
            "status": error.code.name,
            "message": clip(error.message, MAX_MESSAGE_CHARS),
            "reason": error.reason,
            "request_id": request_id,
            "details": error.details_json(),
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
