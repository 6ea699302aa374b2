"""Async SQLAlchemy engine and sessions that set the tenant for each transaction (RLS)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from aias.core.errors import InvalidArgument

_SET_TENANT = text("SELECT set_config('aias.tenant_id', :tenant_id, true)")
_SET_SYSTEM_PATH = text("SELECT set_config('aias.system_path', :path, true)")


class SystemPath(StrEnum):
    """The few cross-tenant paths. Each is named in an RLS policy on the tables it may touch."""

    RUN_QUEUE = "run_queue"


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """A UUID from a request field, or InvalidArgument naming the field."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument("INVALID_ID", f"{what} must be a UUID, got {value!r}") from None


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine over psycopg 3; `pool_pre_ping` survives database restarts."""
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


class Database:
    """Opens transactions scoped to one tenant, or to one named system path."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID | str) -> AsyncIterator[AsyncSession]:
        """One transaction in which RLS shows only `tenant_id`'s rows; commits on success."""
        async with self._sessions() as session, session.begin():
            # Transaction-local (the `true`), so a pooled connection never carries it over.
            await session.execute(_SET_TENANT, {"tenant_id": str(tenant_id)})
            yield session

    @asynccontextmanager
    async def system(self, path: SystemPath) -> AsyncIterator[AsyncSession]:
        """One transaction on a named cross-tenant path; only the policies naming it apply."""
        async with self._sessions() as session, session.begin():
            await session.execute(_SET_SYSTEM_PATH, {"path": path.value})
            yield session

    async def close(self) -> None:
        await self.engine.dispose()
