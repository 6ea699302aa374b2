"""Who is calling: nobody (public), the operator token, or a tenant API key resolved by tenancy."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import grpc

from aias.api.v1 import annotations_pb2 as access_pb2
from aias.core.authz import OPERATOR_ROLE, PUBLIC_ROLE
from aias.core.cache import TtlCache
from aias.core.context import REQUEST_ID, Caller
from aias.core.jsonmap import enum_to_json
from aias.gateway.errors import GatewayError, from_rpc_error
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc

_LOOKUP_TIMEOUT_SECONDS = 5.0


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token or token != token.strip() or " " in token:
        raise GatewayError(
            grpc.StatusCode.UNAUTHENTICATED,
            "MISSING_CREDENTIALS",
            "send the header 'Authorization: Bearer <api key>'",
        )
    return token


class Authenticator:
    """Enforces a route's access rule; remembers resolved API keys for a few seconds.

    Tenancy pushes every revocation, role or tenant-status change (see `forget`), so a revoked
    key stops working at once; `ttl_seconds` bounds it if that push is interrupted.
    """

    def __init__(
        self,
        admin_token: str,
        tenancy: grpc.aio.Channel,
        *,
        ttl_seconds: float = 10.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admin_token = admin_token.encode()
        self._tenancy = tenancy_grpc.TenancyServiceStub(tenancy)
        # Keyed by the key's SHA-256 so the cache never holds a usable secret.
        self._cache: TtlCache[bytes, Caller] = TtlCache(ttl_seconds, max_entries, clock)

    def forget(self, tenant_id: str) -> None:
        """Drops the resolved keys of one tenant ("" drops every tenant's)."""
        if tenant_id:
            self._cache.discard_where(lambda caller: caller.tenant_id == tenant_id)
        else:
            self._cache.clear()

    async def authenticate(self, access: int, authorization: str | None, request_id: str) -> Caller:
        """The caller the backend is told about, or a 401 GatewayError."""
        if access == access_pb2.ACCESS_PUBLIC:
            return Caller(request_id, "", "", PUBLIC_ROLE)
        token = _bearer(authorization)
        if access == access_pb2.ACCESS_OPERATOR:
            if not hmac.compare_digest(token.encode(), self._admin_token):
                raise GatewayError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "INVALID_OPERATOR_TOKEN",
                    "this route needs the operator token (AIAS_ADMIN_TOKEN)",
                )
            return Caller(request_id, "", OPERATOR_ROLE, OPERATOR_ROLE)
        return await self._api_key(token, request_id)

    async def _api_key(self, token: str, request_id: str) -> Caller:
        digest = hashlib.sha256(token.encode()).digest()
        if (found := self._cache.get(digest)) is not None:
            return Caller(request_id, found.tenant_id, found.principal, found.role)
        try:
            reply = await self._tenancy.AuthenticateApiKey(
                tenancy_pb.AuthenticateApiKeyRequest(api_key=token),
                metadata=((REQUEST_ID, request_id),),
                timeout=_LOOKUP_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "tenancy") from None
        role = enum_to_json(tenancy_pb.Role.DESCRIPTOR, reply.role)
        caller = Caller(request_id, reply.tenant_id, reply.principal, str(role))
        self._cache.put(digest, caller)
        return caller
