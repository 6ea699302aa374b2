"""Tenancy use cases; each owns its transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aias.core.db import Database, parse_uuid
from aias.core.errors import NotFound, PermissionDenied, Unauthenticated
from services.tenancy.domain import (
    DEFAULT_PLAN,
    Entitlements,
    Role,
    TenantStatus,
    entitlements_for,
    issue_key,
    parse_key,
    validate_name,
)
from services.tenancy.models import ApiKeyRow, TenantRow
from services.tenancy.repository import TenancyRepository


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    principal: str
    role: Role


class TenancyService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_tenant(self, name: str, plan: str) -> tuple[TenantRow, str]:
        """Creates the tenant and its first admin key in one transaction; returns the key once."""
        name = validate_name(name, "tenant name")
        plan = plan.strip() or DEFAULT_PLAN
        entitlements_for(plan)
        tenant_id = uuid.uuid4()
        key = issue_key(tenant_id)
        async with self._db.tenant(tenant_id) as session:
            repo = TenancyRepository(session)
            tenant = TenantRow(id=tenant_id, name=name, plan=plan, status=TenantStatus.ACTIVE.value)
            await repo.add(tenant)
            await repo.add(
                ApiKeyRow(
                    id=key.key_id,
                    tenant_id=tenant_id,
                    name="admin",
                    role=Role.ADMIN.value,
                    secret_hash=key.secret_hash,
                )
            )
        return tenant, key.full_key

    async def get_tenant(self, tenant_id: uuid.UUID | str) -> TenantRow:
        tid = parse_uuid(str(tenant_id), "tenant_id")
        async with self._db.tenant(tid) as session:
            tenant = await TenancyRepository(session).tenant(tid)
        if tenant is None:
            raise NotFound("TENANT_NOT_FOUND", f"tenant {tid} does not exist")
        return tenant

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
            raise PermissionDenied("TENANT_SUSPENDED", "the tenant is suspended")
        return Principal(presented.tenant_id, f"key:{row.id}", Role(row.role))

    async def entitlements(self, tenant_id: uuid.UUID | str) -> tuple[Entitlements, TenantRow]:
        tenant = await self.get_tenant(tenant_id)
        return entitlements_for(tenant.plan), tenant
