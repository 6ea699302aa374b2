"""One error vocabulary: domain exceptions that carry a gRPC code name and a reason code."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aias.core.stored import storable

# How much of a client's own input an error message quotes back:
# enough to recognise the value, never a way to make the gateway echo megabytes.
QUOTED_CHARS = 64


def clip(text: str, limit: int = QUOTED_CHARS) -> str:
    """Client-supplied text as an error message quotes it: cut to `limit` characters.

    Undecodable bytes (lone surrogates from aiohttp or JSON escapes) and NUL show as escapes,
    so the message can always be written as UTF-8 and stored (`storable`).
    """
    return storable(text if len(text) <= limit else text[: limit - 1] + "…")


class DomainError(Exception):
    """A failure a caller can act on: a canonical code, an UPPER_SNAKE reason and a message."""

    code = "INTERNAL"

    def __init__(
        self,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
        *,
        field: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        # The request field at fault (`steps[2].config.name`), for a BadRequest detail.
        self.field = field


class InvalidArgument(DomainError):
    """The request is malformed; resending it unchanged will fail again."""

    code = "INVALID_ARGUMENT"


class NotFound(DomainError):
    """The resource does not exist, or the caller may not know that it does."""

    code = "NOT_FOUND"


class AlreadyExists(DomainError):
    """A resource with the same identity already exists."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the operation (e.g. a disabled workflow)."""

    code = "FAILED_PRECONDITION"


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""

    code = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    """The caller did not prove who it is."""

    code = "UNAUTHENTICATED"


class ResourceExhausted(DomainError):
    """A quota or rate limit is used up; `retry_after_seconds` in metadata says when to retry."""

    code = "RESOURCE_EXHAUSTED"


class PayloadTooLarge(ResourceExhausted):
    """A body exceeds the plan's limit; `http_status` makes the gateway answer 413."""

    def __init__(
        self, reason: str, message: str, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(reason, message, {"http_status": "413", **(metadata or {})})


# The ErrorInfo domain of every AIAS error.
ERROR_DOMAIN = "aias.dev"
RETRY_AFTER_SECONDS = "retry_after_seconds"
# ErrorInfo metadata with the Content-Range a 416 answer carries (`bytes */<size>`).
CONTENT_RANGE = "content_range"
LIMIT = "limit"


class OutOfRange(DomainError):
    """The request reaches past the end of a resource (a byte range beyond an artifact's size)."""

    code = "OUT_OF_RANGE"


class DataLoss(DomainError):
    """Stored data is lost or corrupt; retrying does not help until an operator restores it."""

    code = "DATA_LOSS"


class Unimplemented(DomainError):
    """The server does not offer this method (yet): an older or partial implementation."""

    code = "UNIMPLEMENTED"


class Unavailable(DomainError):
    """A dependency is down; the same request may succeed later."""

    code = "UNAVAILABLE"


# The HTTP status of each gRPC code, by name: grpc-gateway's table (runtime.HTTPStatusFromCode).
HTTP_STATUS_BY_CODE: Mapping[str, int] = MappingProxyType(
    {
        "OK": 200,
        "CANCELLED": 499,
        "UNKNOWN": 500,
        "INVALID_ARGUMENT": 400,
        "DEADLINE_EXCEEDED": 504,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "PERMISSION_DENIED": 403,
        "UNAUTHENTICATED": 401,
        "RESOURCE_EXHAUSTED": 429,
        "FAILED_PRECONDITION": 400,
        "ABORTED": 409,
        "OUT_OF_RANGE": 400,
        "UNIMPLEMENTED": 501,
        "INTERNAL": 500,
        "UNAVAILABLE": 503,
        "DATA_LOSS": 500,
    }
)
# ErrorInfo metadata with which an error refines its HTTP status (a disabled workflow is 409).
HTTP_STATUS_OVERRIDE = "http_status"


def http_status(code: str, metadata: Mapping[str, str]) -> int:
    """The HTTP status an error is answered with: its code's, unless its metadata refines it."""
    override = metadata.get(HTTP_STATUS_OVERRIDE, "")
    if override.isdigit() and 400 <= int(override) <= 599:
        return int(override)
    return HTTP_STATUS_BY_CODE[code]
