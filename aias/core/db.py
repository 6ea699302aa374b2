"""Async SQLAlchemy engine and sessions that set the tenant for each transaction (RLS)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import QueuePool

from aias.core.errors import InvalidArgument

log = logging.getLogger(__name__)

_SET_TENANT = text("SELECT set_config('aias.tenant_id', :tenant_id, true)")
_SET_SYSTEM_PATH = text("SELECT set_config('aias.system_path', :path, true)")


class SystemPath(StrEnum):
    """The few cross-tenant paths. Each is named in an RLS policy on the tables it may touch."""

    RUN_QUEUE = "run_queue"
    TENANT_DIRECTORY = "tenant_directory"
    # Billing: which tenant a Stripe customer belongs to, and deliveries that belong to none.
    STRIPE_INTAKE = "stripe_intake"
    # Execution's alert senders: claim due alerts of every tenant, drop old delivered ones.
    ALERT_OUTBOX = "alert_outbox"
    # The artifacts sweeper: find expired artifacts and unreferenced blobs of every tenant.
    ARTIFACT_RETENTION = "artifact_retention"


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """A UUID from a request field, or InvalidArgument naming the field."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument("INVALID_ID", f"{what} must be a UUID, got {value!r}") from None


def json_rows(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as one JSON array of objects, for a statement that reads them with
    `jsonb_to_recordset` (bytea columns through `decode(…, 'base64')`).

    psycopg dumps a list parameter element by element in Python, about 3 µs per value, so
    writing a batch as one array per column costs tens of µs of client CPU per row; `json.dumps`
    encodes the whole batch in C, and PostgreSQL runs one statement however many rows.
    """
    return json.dumps(list(rows), default=_json_value, separators=(",", ":"))


def _json_value(value: object) -> str:
    """What JSON has no type for: UUIDs as text, bytes as base64, times in ISO 8601."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value a batch writes")


def create_engine(
    url: str, *, name: str, max_connections: int = 20, settings: Mapping[str, str] | None = None
) -> AsyncEngine:
    """An async engine over psycopg 3, with up to `max_connections` connections.

    Connections open as transactions need them and stay open (no overflow beyond a smaller
    core): a burst that needed more than a core would otherwise open and close connections on
    every transaction past it, each a new server process for PostgreSQL to start and warm.

    No ping per checkout (a round trip on every transaction): a connection found dead by a
    statement fails that transaction (UNAVAILABLE, retryable) and makes the pool drop every
    connection older than the failure, so a restarted database costs the requests in flight
    at that moment, and the health probe finds it first when the process is idle.
    `hide_parameters` keeps statement parameters (webhook bodies, secrets' hashes) out of
    every error message and log line. `name` is the connections' `application_name`, so
    `pg_stat_activity` (and the server's logs, with `%a`) say which process holds each one;
    `settings` are server settings every connection starts with.
    """
    connect_args = {"application_name": f"aias-{name}"}
    if settings:
        connect_args["options"] = " ".join(f"-c {key}={value}" for key, value in settings.items())
    return create_async_engine(
        url,
        pool_size=max_connections,
        max_overflow=0,
        pool_pre_ping=False,
        pool_timeout=5,
        hide_parameters=True,
        connect_args=connect_args,
    )


# Errors that mean "the database cannot be reached now", not "this request is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    psycopg.OperationalError,
    ConnectionError,
)


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
    async def batch(self) -> AsyncIterator[AsyncConnection]:
        """One transaction on a bare connection, for writes of several tenants at once: each
        group of statements is scoped with `as_tenant` first. Commits on success."""
        async with self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def system(self, path: SystemPath) -> AsyncIterator[AsyncSession]:
        """One transaction on a named cross-tenant path; only the policies naming it apply."""
        async with self._sessions() as session, session.begin():
            await session.execute(_SET_SYSTEM_PATH, {"path": path.value})
            yield session

    @staticmethod
    async def as_tenant(connection: AsyncConnection, tenant_id: uuid.UUID | str) -> None:
        """Scopes the rest of `connection`'s transaction (until the next call) to one tenant."""
        await connection.execute(_SET_TENANT, {"tenant_id": str(tenant_id)})

    async def ping(self) -> None:
        """Raises unless the database answers a trivial query within a few seconds."""
        async with asyncio.timeout(3), self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


class PoolMetrics(Collector):
    """The engine's connection pool as it is at each scrape: in use, open, and its ceiling."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self._engine.sync_engine.pool
        # QueuePool's counters; another pool class (tests may use NullPool) shows nothing.
        if not isinstance(pool, QueuePool):
            return
        checked_out = pool.checkedout()
        yield GaugeMetricFamily(
            "aias_db_pool_checked_out_connections",
            "Database connections in use by a transaction now.",
            value=checked_out,
        )
        yield GaugeMetricFamily(
            "aias_db_pool_open_connections",
            "Database connections open now, in use or idle in the pool.",
            value=checked_out + pool.checkedin(),
        )
        yield GaugeMetricFamily(
            "aias_db_pool_max_connections",
            "The most connections the pool opens; a transaction that needs one more waits.",
            value=pool.size() + pool._max_overflow,
        )


def libpq_url(database_url: str) -> str:
    """The libpq form of an SQLAlchemy URL, for psycopg's own connections (LISTEN)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def follow_notifications(
    url: str,
    channel: str,
    on_notify: Callable[[str], None],
    on_connect: Callable[[], None],
    retry_seconds: float = 1.0,
) -> None:
    """LISTENs on `channel` until cancelled, reconnecting whenever the connection drops.

    `on_connect` runs after every (re)connection: notices sent while nobody listened are
    lost, so the caller must assume it missed some.
    """
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {channel}")
                on_connect()
                async for notice in conn.notifies():
                    on_notify(notice.payload)
        except (psycopg.Error, OSError) as error:
            log.warning(
                "lost the notification connection; reconnecting",
                extra={"channel": channel, "error": type(error).__name__},
            )
            await asyncio.sleep(retry_seconds)
