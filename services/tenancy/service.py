"""Tenancy use cases; each owns its transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar

from aias.core.db import Database, SystemPath, parse_uuid
from aias.core.entitlements import (
    DEFAULT_PLAN,
    Limits,
    check_limit_name,
    check_limit_value,
    plan_limits,
)
from aias.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from aias.core.pagination import decode_token, next_page_token, page_size
from aias.services.tenancy.domain import (
    NO_PERIOD,
    Metric,
    Role,
    TenantStatus,
    block_grant,
    issue_key,
    lower_role,
    parse_key,
    period_bounds,
    require_owner_for,
    validate_email,
    validate_name,
    whole_grant,
)
from aias.services.tenancy.models import ApiKeyRow, MemberRow, TenantRow
from aias.services.tenancy.repository import TenancyRepository

# A key's last use is recorded at most this often, so authentication rarely writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Page(Generic[_T]):
    items: list[_T]
    next_page_token: str


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    principal: str
    role: Role


@dataclass(frozen=True)
class UsageView:
    period_start: datetime
    period_end: datetime
    runs: int
    artifact_storage_bytes: int


@dataclass(frozen=True)
class Reservation:
    granted: int
    limit: int | None
    used: int
    period_start: datetime | None
    period_end: datetime | None
    plan: str


@dataclass(frozen=True)
class TenantChange:
    """An operator's change to a tenant; None and empty leave things as they are."""

    plan: str | None = None
    status: TenantStatus | None = None
    limit_overrides: Mapping[str, int] | None = None
    clear_limit_overrides: tuple[str, ...] = ()
    allowed_step_types: list[str] | None = None


class _LimitSource(Protocol):
    """Where a tenant's limits come from: a tenant's row, or the row of a usage reservation."""

    @property
    def plan(self) -> str: ...
    @property
    def limit_overrides(self) -> dict[str, int] | None: ...
    @property
    def allowed_step_types(self) -> list[str] | None: ...


def effective_limits(tenant: _LimitSource) -> Limits:
    return plan_limits(tenant.plan).with_overrides(
        tenant.limit_overrides or {}, tenant.allowed_step_types
    )


def _not_found(tenant_id: uuid.UUID) -> NotFound:
    return NotFound("TENANT_NOT_FOUND", f"tenant {tenant_id} does not exist")


class TenancyService:
    def __init__(self, db: Database, clock: Callable[[], datetime] | None = None) -> None:
        self._db = db
        self._clock = clock or (lambda: datetime.now(UTC))

    # -- tenants ----------------------------------------------------------------------------

    async def create_tenant(self, name: str, plan: str) -> tuple[TenantRow, str]:
        """Creates the tenant and its first (owner) key in one transaction; returns the key once."""
        name = validate_name(name, "tenant name")
        plan = plan.strip() or DEFAULT_PLAN
        plan_limits(plan)
        tenant_id = uuid.uuid4()
        key = issue_key(tenant_id)
        async with self._db.tenant(tenant_id) as session:
            repo = TenancyRepository(session)
            tenant = TenantRow(
                id=tenant_id,
                name=name,
                plan=plan,
                status=TenantStatus.ACTIVE.value,
                limit_overrides={},
            )
            await repo.add(tenant)
            await repo.add(
                ApiKeyRow(
                    id=key.key_id,
                    tenant_id=tenant_id,
                    name="owner",
                    role=Role.OWNER.value,
                    secret_hash=key.secret_hash,
                )
            )
        return tenant, key.full_key

    async def list_tenants(self, size: int, token: str) -> Page[TenantRow]:
        limit, cursor = page_size(size), decode_token(token, "tenants")
        async with self._db.system(SystemPath.TENANT_DIRECTORY) as session:
            rows = await TenancyRepository(session).tenants(cursor, limit + 1)
        return Page(rows[:limit], next_page_token(rows, limit, "tenants"))

    async def get_tenant(self, tenant_id: uuid.UUID | str) -> TenantRow:
        tid = parse_uuid(str(tenant_id), "tenant_id")
        async with self._db.tenant(tid) as session:
            tenant = await TenancyRepository(session).tenant(tid)
        if tenant is None:
            raise _not_found(tid)
        return tenant

    async def update_tenant(self, tenant_id: str, change: TenantChange) -> tuple[TenantRow, Limits]:
        tid = parse_uuid(tenant_id, "tenant_id")
        if change.plan is not None:
            plan_limits(change.plan)
        overrides = {
            check_limit_name(name): check_limit_value(name, value)
            for name, value in (change.limit_overrides or {}).items()
        }
        for name in change.clear_limit_overrides:
            if name != "allowed_step_types":
                check_limit_name(name)
        async with self._db.tenant(tid) as session:
            tenant = await TenancyRepository(session).tenant(tid, lock=True)
            if tenant is None:
                raise _not_found(tid)
            if change.plan is not None and change.plan != tenant.plan:
                tenant.plan = change.plan
                tenant.plan_change_time = self._clock()
            if change.status is not None:
                tenant.status = change.status.value
            merged = {
                k: v
                for k, v in {**(tenant.limit_overrides or {}), **overrides}.items()
                if k not in change.clear_limit_overrides
            }
            tenant.limit_overrides = merged
            if change.allowed_step_types is not None:
                tenant.allowed_step_types = sorted(set(change.allowed_step_types))
            elif "allowed_step_types" in change.clear_limit_overrides:
                tenant.allowed_step_types = None
        return tenant, effective_limits(tenant)

    async def delete_tenant(self, tenant_id: str) -> None:
        """Deletes a suspended tenant (its members, keys and usage go with it)."""
        tid = parse_uuid(tenant_id, "tenant_id")
        async with self._db.tenant(tid) as session:
            repo = TenancyRepository(session)
            tenant = await repo.tenant(tid, lock=True)
            if tenant is None:
                raise _not_found(tid)
            if tenant.status != TenantStatus.SUSPENDED:
                raise FailedPrecondition(
                    "TENANT_ACTIVE", f"tenant {tid} is active; suspend it before deleting it"
                )
            await repo.delete(tenant)

    async def set_plan(
        self, tenant_id: str, plan: str, event_time: datetime
    ) -> tuple[TenantRow, bool]:
        """Applies a plan decided by an outside event, unless a newer change already happened."""
        tid = parse_uuid(tenant_id, "tenant_id")
        plan_limits(plan)
        async with self._db.tenant(tid) as session:
            tenant = await TenancyRepository(session).tenant(tid, lock=True)
            if tenant is None:
                raise _not_found(tid)
            if event_time < tenant.plan_change_time:
                return tenant, False
            tenant.plan = plan
            tenant.plan_change_time = event_time
        return tenant, True

    async def current(self, tenant_id: uuid.UUID) -> tuple[TenantRow, Limits, UsageView]:
        start, end = period_bounds(self._clock())
        async with self._db.tenant(tenant_id) as session:
            repo = TenancyRepository(session)
            tenant = await repo.tenant(tenant_id)
            if tenant is None:
                raise _not_found(tenant_id)
            runs = await repo.usage(tenant_id, Metric.RUNS.value, start)
            storage = await repo.usage(tenant_id, Metric.ARTIFACT_STORAGE_BYTES.value, NO_PERIOD)
        return tenant, effective_limits(tenant), UsageView(start, end, runs, storage)

    async def entitlements(self, tenant_id: str) -> tuple[TenantRow, Limits]:
        tenant = await self.get_tenant(tenant_id)
        return tenant, effective_limits(tenant)

    # -- API keys ---------------------------------------------------------------------------

    async def authenticate(self, api_key: str) -> Principal:
        """Resolves a key; unknown, revoked and malformed keys all fail the same way."""
        presented = parse_key(api_key)
        async with self._db.tenant(presented.tenant_id) as session:
            repo = TenancyRepository(session)
            row = await repo.active_key(presented.key_id)
            tenant = await repo.tenant(presented.tenant_id)
            if row is None or tenant is None or not presented.matches(row.secret_hash):
                raise Unauthenticated("INVALID_API_KEY", "the API key is not valid")
            if tenant.status != TenantStatus.ACTIVE:
                raise PermissionDenied(
                    "TENANT_SUSPENDED", "the tenant is suspended; contact the operator"
                )
            role = Role(row.role)
            if row.member_id is not None and (member := await repo.member(row.member_id)):
                role = lower_role(role, Role(member.role))
            now = self._clock()
            if row.last_used_time is None or now - row.last_used_time >= LAST_USED_RESOLUTION:
                await repo.touch_key(row.id)
        return Principal(presented.tenant_id, f"key:{row.id}", role)

    async def create_key(
        self, tenant_id: uuid.UUID, name: str, role: Role, member_id: str, acting_role: str
    ) -> tuple[ApiKeyRow, str]:
        name = validate_name(name, "key name")
        require_owner_for(role, acting_role, "create a key")
        member = parse_uuid(member_id, "member_id") if member_id else None
        key = issue_key(tenant_id)
        async with self._db.tenant(tenant_id) as session:
            repo = TenancyRepository(session)
            if member is not None:
                found = await repo.member(member)
                if found is None:
                    raise NotFound("MEMBER_NOT_FOUND", f"member {member} does not exist")
                if lower_role(role, Role(found.role)) != role:
                    raise InvalidArgument(
                        "ROLE_ABOVE_MEMBER",
                        f"the key's role ({role.value}) is above the member's ({found.role})",
                    )
            row = ApiKeyRow(
                id=key.key_id,
                tenant_id=tenant_id,
                name=name,
                role=role.value,
                secret_hash=key.secret_hash,
                member_id=member,
            )
            await repo.add(row)
        return row, key.full_key

    async def list_keys(self, tenant_id: uuid.UUID, size: int, token: str) -> Page[ApiKeyRow]:
        limit, cursor = page_size(size), decode_token(token, "api_keys")
        async with self._db.tenant(tenant_id) as session:
            rows = await TenancyRepository(session).active_keys(cursor, limit + 1)
        return Page(rows[:limit], next_page_token(rows, limit, "api_keys"))

    async def revoke_key(self, tenant_id: uuid.UUID, key_id: str, acting_role: str) -> None:
        kid = parse_uuid(key_id, "key_id")
        async with self._db.tenant(tenant_id) as session:
            repo = TenancyRepository(session)
            row = await repo.active_key(kid)
            if row is None:
                raise NotFound("API_KEY_NOT_FOUND", f"API key {kid} does not exist")
            require_owner_for(Role(row.role), acting_role, "revoke a key")
            if row.role == Role.OWNER and await repo.count_active_keys(Role.OWNER.value) <= 1:
                raise FailedPrecondition(
                    "LAST_OWNER_KEY",
                    "this is the tenant's last owner key; create another owner key first",
                )
            await repo.revoke_key(kid)

    # -- members ----------------------------------------------------------------------------

    async def create_member(
        self, tenant_id: uuid.UUID, email: str, name: str, role: Role, acting_role: str
    ) -> MemberRow:
        email = validate_email(email)
        name = validate_name(name or email, "member name")
        require_owner_for(role, acting_role, "add a member")
        async with self._db.tenant(tenant_id) as session:
            repo = TenancyRepository(session)
            if await repo.member_by_email(email) is not None:
                raise AlreadyExists("MEMBER_EXISTS", f"{email} is already a member")
            row = MemberRow(
                id=uuid.uuid4(), tenant_id=tenant_id, email=email, name=name, role=role.value
            )
            await repo.add(row)
        return row

    async def list_members(self, tenant_id: uuid.UUID, size: int, token: str) -> Page[MemberRow]:
        limit, cursor = page_size(size), decode_token(token, "members")
        async with self._db.tenant(tenant_id) as session:
            rows = await TenancyRepository(session).members(cursor, limit + 1)
        return Page(rows[:limit], next_page_token(rows, limit, "members"))

    async def update_member(
        self,
        tenant_id: uuid.UUID,
        member_id: str,
        name: str | None,
        role: Role | None,
        acting_role: str,
    ) -> MemberRow:
        mid = parse_uuid(member_id, "member_id")
        async with self._db.tenant(tenant_id) as session:
            repo = TenancyRepository(session)
            row = await repo.member(mid)
            if row is None:
                raise NotFound("MEMBER_NOT_FOUND", f"member {mid} does not exist")
            if name is not None:
                row.name = validate_name(name, "member name")
            if role is not None and role.value != row.role:
                require_owner_for(Role(row.role), acting_role, "change a member")
                require_owner_for(role, acting_role, "give a member")
                await self._keep_an_owner(repo, row)
                row.role = role.value
        return row

    async def delete_member(self, tenant_id: uuid.UUID, member_id: str, acting_role: str) -> None:
        mid = parse_uuid(member_id, "member_id")
        async with self._db.tenant(tenant_id) as session:
            repo = TenancyRepository(session)
            row = await repo.member(mid)
            if row is None:
                raise NotFound("MEMBER_NOT_FOUND", f"member {mid} does not exist")
            require_owner_for(Role(row.role), acting_role, "remove a member")
            await self._keep_an_owner(repo, row)
            await repo.revoke_member_keys(mid)
            await repo.delete(row)

    @staticmethod
    async def _keep_an_owner(repo: TenancyRepository, row: MemberRow) -> None:
        if row.role == Role.OWNER and await repo.count_members(Role.OWNER.value) <= 1:
            raise FailedPrecondition(
                "LAST_OWNER", "this is the tenant's last owner; make someone else owner first"
            )

    # -- usage ------------------------------------------------------------------------------

    async def reserve(
        self, tenant_id: str, metric: Metric, amount: int, partial: bool
    ) -> Reservation:
        """Adds up to `amount` to the tenant's usage, never beyond its limit."""
        tid = parse_uuid(tenant_id, "tenant_id")
        if amount <= 0:
            raise InvalidArgument("INVALID_AMOUNT", f"amount must be positive, got {amount}")
        period_start, period_end = (
            period_bounds(self._clock()) if metric.per_period else (NO_PERIOD, None)
        )
        async with self._db.tenant(tid) as session:
            repo = TenancyRepository(session)
            locked = await repo.lock_usage(tid, metric.value, period_start)
            if locked is None:
                raise _not_found(tid)
            limit: int | None = getattr(effective_limits(locked), metric.limit_name)
            grant = (block_grant if partial else whole_grant)(amount, locked.used, limit)
            if grant:
                await repo.set_usage(tid, metric.value, period_start, locked.used + grant)
        return Reservation(
            grant,
            limit,
            locked.used + grant,
            period_start if metric.per_period else None,
            period_end,
            locked.plan,
        )

    async def release(
        self, tenant_id: str, metric: Metric, amount: int, period_start: datetime | None
    ) -> int:
        tid = parse_uuid(tenant_id, "tenant_id")
        if amount <= 0:
            raise InvalidArgument("INVALID_AMOUNT", f"amount must be positive, got {amount}")
        if not metric.per_period:
            period_start = NO_PERIOD
        elif period_start is None:
            period_start = period_bounds(self._clock())[0]
        async with self._db.tenant(tid) as session:
            return await TenancyRepository(session).release_usage(
                tid, metric.value, period_start, amount
            )
