"""Per-request context (request id, tenant, principal, run) carried in metadata and contextvars."""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

# Metadata keys every hop forwards; DESIGN.md names them.
AUTHORIZATION = "authorization"
REQUEST_ID = "x-request-id"
TENANT_ID = "x-aias-tenant-id"
PRINCIPAL = "x-aias-principal"
ROLE = "x-aias-role"
# Set by a servicer to choose the HTTP status the gateway answers with (grpc-gateway's convention).
HTTP_CODE = "x-http-code"
# Initial-metadata keys with this prefix become HTTP response headers at the gateway.
HTTP_HEADER_PREFIX = "x-http-header-"
# Request headers the gateway forwards to backends carry this prefix (grpc-gateway's).
FORWARDED_HEADER_PREFIX = "grpcgateway-"

_IDENTITY_KEYS = frozenset({TENANT_ID, PRINCIPAL, ROLE})

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
tenant_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("tenant_id", default="")
run_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("run_id", default="")
principal_var: contextvars.ContextVar[str] = contextvars.ContextVar("principal", default="")
role_var: contextvars.ContextVar[str] = contextvars.ContextVar("role", default="")


@dataclass(frozen=True)
class Caller:
    """Who is acting, as asserted by an authenticated internal caller."""

    request_id: str
    tenant_id: str
    principal: str
    role: str

    @classmethod
    def from_metadata(cls, metadata: Iterable[tuple[str, str | bytes]]) -> Caller:
        values: dict[str, str] = {}
        for key, value in metadata:
            if not isinstance(value, str):
                continue
            if key in _IDENTITY_KEYS and key in values and values[key] != value:
                # Two different claims of who is acting: trust neither.
                raise ValueError(f"{key} was sent more than once")
            values[key] = value
        return cls(
            request_id=values.get(REQUEST_ID) or uuid.uuid4().hex,
            tenant_id=values.get(TENANT_ID, ""),
            principal=values.get(PRINCIPAL, ""),
            role=values.get(ROLE, ""),
        )

    def metadata(self) -> list[tuple[str, str]]:
        """The metadata that carries this caller to the next hop."""
        pairs = [(REQUEST_ID, self.request_id)]
        pairs += [
            (key, value)
            for key, value in (
                (TENANT_ID, self.tenant_id),
                (PRINCIPAL, self.principal),
                (ROLE, self.role),
            )
            if value
        ]
        return pairs


def forwarded_header(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str:
    """The value of a request header the gateway forwarded (`name` in lower case), or ""."""
    key = FORWARDED_HEADER_PREFIX + name
    for found, value in metadata or ():
        if found == key and isinstance(value, str):
            return value
    return ""


def current_caller_metadata() -> list[tuple[str, str]]:
    """Request id and tenant of the request being served, for an outgoing call."""
    pairs = []
    if request_id := request_id_var.get():
        pairs.append((REQUEST_ID, request_id))
    if tenant_id := tenant_id_var.get():
        pairs.append((TENANT_ID, tenant_id))
    return pairs


def require_tenant() -> uuid.UUID:
    """The acting tenant of the request being served, or an error naming what is missing."""
    from aias.core.errors import InvalidArgument, Unauthenticated

    raw = tenant_id_var.get()
    if not raw:
        raise Unauthenticated(
            "TENANT_REQUIRED", "this RPC acts for a tenant; send x-aias-tenant-id"
        )
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidArgument(
            "INVALID_TENANT_ID", f"x-aias-tenant-id must be a UUID, got {raw!r}"
        ) from None
