"""One error vocabulary: domain exceptions that carry a gRPC code name and a reason code."""

from __future__ import annotations

from collections.abc import Mapping

# How much of a client's own input an error message quotes back:
# enough to recognise the value, never a way to make the gateway echo megabytes.
QUOTED_CHARS = 64


def clip(text: str, limit: int = QUOTED_CHARS) -> str:
    """Client-supplied text as an error message quotes it: cut to `limit` characters.

    Undecodable bytes (lone surrogates from aiohttp or JSON escapes) show as escapes, so the
    message can always be written as UTF-8.
    """
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
LIMIT = "limit"


class Unavailable(DomainError):
    """A dependency is down; the same request may succeed later."""

    code = "UNAVAILABLE"
