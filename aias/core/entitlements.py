"""Plan limits as data, and a cache of tenants' entitlements that tenancy keeps current by push."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from importlib import resources
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from aias.core.cache import CoherentCache
from aias.core.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

UNLIMITED = -1
STEP_TYPES_LIMIT = "allowed_step_types"


@dataclass(frozen=True)
class Limits:
    """What a tenant may use; None is unlimited. Field names are the limits' public names."""

    workflows: int | None = None
    webhook_endpoints: int | None = None
    runs_per_month: int | None = None
    concurrent_runs: int | None = None
    webhook_payload_bytes: int | None = None
    webhook_requests_per_second: int | None = None
    webhook_burst: int | None = None
    artifact_storage_bytes: int | None = None
    artifact_retention_days: int | None = None
    allowed_step_types: frozenset[str] | None = None
    step_timeout_seconds: int | None = None
    step_output_bytes: int | None = None

    def with_overrides(self, overrides: Mapping[str, int], step_types: list[str] | None) -> Limits:
        """These limits with an operator's per-tenant values; -1 means unlimited."""
        changes: dict[str, Any] = {
            name: None if value == UNLIMITED else value for name, value in overrides.items()
        }
        if step_types is not None:
            changes[STEP_TYPES_LIMIT] = frozenset(step_types)
        return replace(self, **changes)


NUMERIC_LIMITS: tuple[str, ...] = tuple(
    f.name for f in fields(Limits) if f.name != "allowed_step_types"
)


def check_limit_name(name: str) -> str:
    if name not in NUMERIC_LIMITS:
        raise InvalidArgument(
            "UNKNOWN_LIMIT",
            f"{name[:64]!r} is not a limit; choose one of {', '.join(NUMERIC_LIMITS)}",
        )
    return name


def check_limit_value(name: str, value: int) -> int:
    if value < UNLIMITED:
        raise InvalidArgument(
            "INVALID_LIMIT", f"{name} must be 0 or more, or -1 for unlimited; got {value}"
        )
    return value


def _limits_from_toml(name: str, table: Mapping[str, Any]) -> Limits:
    unknown = set(table) - {f.name for f in fields(Limits)}
    if unknown:
        raise ValueError(f"plan {name!r} has unknown limits: {sorted(unknown)}")
    values: dict[str, Any] = dict(table)
    if STEP_TYPES_LIMIT in values:
        values[STEP_TYPES_LIMIT] = frozenset(values[STEP_TYPES_LIMIT])
    return Limits(**values)


def load_catalog() -> dict[str, Limits]:
    """The plan catalog from plans.toml, cheapest plan first."""
    text = resources.files("aias.core").joinpath("plans.toml").read_text(encoding="utf-8")
    plans = tomllib.loads(text)["plans"]
    return {name: _limits_from_toml(name, table) for name, table in plans.items()}


PLANS: Mapping[str, Limits] = load_catalog()
DEFAULT_PLAN = "free"


def plan_limits(plan: str) -> Limits:
    try:
        return PLANS[plan]
    except KeyError:
        raise InvalidArgument(
            "UNKNOWN_PLAN", f"plan {plan[:64]!r} does not exist; choose one of {', '.join(PLANS)}"
        ) from None


def limits_to_pb(limits: Limits) -> pb.Limits:
    message = pb.Limits()
    for name in NUMERIC_LIMITS:
        value = getattr(limits, name)
        if value is not None:
            setattr(message, name, value)
    if limits.allowed_step_types is not None:
        message.allowed_step_types.types.extend(sorted(limits.allowed_step_types))
    return message


def limits_from_pb(limits: pb.Limits) -> Limits:
    message: Any = limits  # HasField's stub accepts literal names only
    values: dict[str, Any] = {
        name: getattr(message, name) for name in NUMERIC_LIMITS if message.HasField(name)
    }
    if message.HasField(STEP_TYPES_LIMIT):
        values[STEP_TYPES_LIMIT] = frozenset(message.allowed_step_types.types)
    return Limits(**values)


@dataclass(frozen=True)
class TenantEntitlements:
    """A tenant's state and effective limits, as every service enforces them."""

    tenant_id: uuid.UUID
    plan: str
    active: bool
    limits: Limits

    @classmethod
    def from_pb(cls, message: pb.Entitlements) -> TenantEntitlements:
        return cls(
            tenant_id=uuid.UUID(message.tenant_id),
            plan=message.plan,
            active=message.status == pb.TENANT_STATUS_ACTIVE,
            limits=limits_from_pb(message.limits),
        )


Listener = Callable[[str], None]


class EntitlementsCache:
    """Tenants' entitlements from tenancy, cached until tenancy says they changed.

    A watch stream (WatchEntitlements) drops a tenant's entry as soon as tenancy reports a
    change, so a plan change reaches every service within moments; the TTL bounds staleness
    while the stream is down. Concurrent misses for one tenant share one lookup.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        ttl: float = 30.0,
        max_entries: int = 10_000,
        lookup_timeout: float = 5.0,
    ) -> None:
        self._stub = pb_grpc.TenancyServiceStub(channel)
        self._cache: CoherentCache[uuid.UUID, uuid.UUID, TenantEntitlements] = CoherentCache(
            lambda tenant: tenant, ttl, max_entries
        )
        self._lookup_timeout = lookup_timeout
        self._listeners: list[Listener] = []
        self._watch: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def add_listener(self, listener: Listener) -> None:
        """Calls `listener(tenant_id)` on every change notice; "" means every tenant."""
        self._listeners.append(listener)

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._follow(), name="watch-entitlements")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    def peek(self, tenant_id: uuid.UUID) -> TenantEntitlements | None:
        """The cached entitlements, without a lookup."""
        return self._cache.peek(tenant_id)

    async def get(self, tenant_id: uuid.UUID) -> TenantEntitlements:
        return await self._cache.get(tenant_id, lambda: self._lookup(tenant_id))

    async def _lookup(self, tenant_id: uuid.UUID) -> TenantEntitlements:
        try:
            reply = await self._stub.GetEntitlements(
                pb.GetEntitlementsRequest(tenant_id=str(tenant_id)), timeout=self._lookup_timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound("TENANT_NOT_FOUND", f"tenant {tenant_id} does not exist") from None
            raise Unavailable(
                "TENANCY_UNAVAILABLE", "the tenancy service did not answer; retry shortly"
            ) from None
        return TenantEntitlements.from_pb(reply.entitlements)

    def invalidate(self, tenant_id: str) -> None:
        """Forgets one tenant ("" forgets every tenant) and tells the listeners."""
        if tenant_id:
            try:
                self._cache.forget(uuid.UUID(tenant_id))
            except ValueError:
                return
        else:
            self._cache.clear()
        for listener in self._listeners:
            listener(tenant_id)

    async def _follow(self) -> None:
        """Follows tenancy's change notices for the life of the process, reconnecting."""
        backoff = 0.2
        while True:
            started = time.monotonic()
            try:
                call = self._stub.WatchEntitlements(pb.WatchEntitlementsRequest())
                async for notice in call:
                    self.invalidate("" if notice.reset else notice.tenant_id)
                    self.connected.set()
            except grpc.aio.AioRpcError as error:
                if time.monotonic() - started > 10:
                    backoff = 0.2
                log.info(
                    "entitlement change stream interrupted; reconnecting",
                    extra={"code": error.code().name},
                )
            # Notices may have been missed while the stream was down.
            self.connected.clear()
            self.invalidate("")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def plan_limit(name: str, value: int, plan: str, message: str) -> PermissionDenied:
    """An over-count limit (workflows, endpoints, step types): 403 PLAN_LIMIT naming the plan."""
    return PermissionDenied(
        "PLAN_LIMIT",
        f"{message} (limit {name}={value} on the {plan} plan); remove some or upgrade the plan",
        {"limit": name, "limit_value": str(value), "plan": plan},
    )


def quota_exceeded(
    name: str, value: int, plan: str, message: str, retry_after: float | None
) -> ResourceExhausted:
    """A used-up quota or rate: 429 QUOTA_EXCEEDED, with Retry-After when waiting helps."""
    metadata = {"limit": name, "limit_value": str(value), "plan": plan}
    if retry_after is not None:
        metadata["retry_after_seconds"] = str(max(1, math.ceil(retry_after)))
    return ResourceExhausted(
        "QUOTA_EXCEEDED", f"{message} (limit {name}={value} on the {plan} plan)", metadata
    )


class UsageClient:
    """Reserves and gives back metered usage (runs, storage bytes) at tenancy."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 5.0) -> None:
        self._stub = pb_grpc.TenancyServiceStub(channel)
        self._timeout = timeout

    async def reserve(
        self, tenant_id: uuid.UUID, metric: pb.Metric.ValueType, amount: int, *, partial: bool
    ) -> pb.ReserveUsageResponse:
        try:
            reply: pb.ReserveUsageResponse = await self._stub.ReserveUsage(
                pb.ReserveUsageRequest(
                    tenant_id=str(tenant_id), metric=metric, amount=amount, partial=partial
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError:
            raise Unavailable(
                "TENANCY_UNAVAILABLE", "usage could not be reserved; retry shortly"
            ) from None
        return reply

    async def release(
        self,
        tenant_id: uuid.UUID,
        metric: pb.Metric.ValueType,
        amount: int,
        period_start: timestamp_pb2.Timestamp | None = None,
    ) -> None:
        """Gives usage back; a failure is logged, not raised (usage then reads high, not low)."""
        if amount <= 0:
            return
        try:
            await self._stub.ReleaseUsage(
                pb.ReleaseUsageRequest(
                    tenant_id=str(tenant_id),
                    metric=metric,
                    amount=amount,
                    period_start_time=period_start,
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "could not give back reserved usage",
                extra={"tenant": str(tenant_id), "amount": amount, "code": error.code().name},
            )
