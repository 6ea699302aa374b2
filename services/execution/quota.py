"""Runs per month, reserved from tenancy in blocks so one tenant's ingest never queues on a lock.

Each execution process holds a small block of reserved runs per tenant and hands them out from
memory; only the request that finds its block empty asks tenancy for another (one RPC and one
short row lock per block). Tenancy shrinks blocks as a tenant nears its limit, so the limit is
never exceeded and the last runs go to whoever asks first. Units unused for a few seconds, and
all units at shutdown, are given back, so usage shows what was really started.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import grpc

from aias.core.entitlements import TenantEntitlements, UsageClient, quota_exceeded
from aias.core.periodic import Periodic
from aias.core.protoconv import timestamp
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 64
DEFAULT_IDLE_SECONDS = 5.0


@dataclass
class _Block:
    remaining: int
    period_start: datetime
    period_end: datetime
    last_used: float


@dataclass(frozen=True)
class Ticket:
    """One reserved run; give it back if the run is not created after all."""

    tenant_id: uuid.UUID
    period_start: datetime


class ReservationWatcher(Protocol):
    """Hears every answer tenancy gives to a reservation of runs (quota alerts); must not raise."""

    async def runs_reserved(
        self, tenant_id: uuid.UUID, reply: tenancy_pb.ReserveUsageResponse
    ) -> None: ...


class RunQuota:
    """Hands out reserved runs per tenant from memory, refilling from tenancy in blocks."""

    def __init__(
        self,
        tenancy: grpc.aio.Channel,
        block: int = DEFAULT_BLOCK,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        watcher: ReservationWatcher | None = None,
    ) -> None:
        self._usage = UsageClient(tenancy)
        self._watcher = watcher
        self._block = block
        self._idle = idle_seconds
        self._clock = clock
        self._blocks: dict[uuid.UUID, _Block] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._sweeper = Periodic(
            "run-quota-sweeper", self.sweep, max(self._idle / 2, 0.1), at_start=False
        )

    async def start(self) -> None:
        await self._sweeper.start()

    async def close(self) -> None:
        """Gives every unused unit back (called at shutdown)."""
        await self._sweeper.stop()
        blocks, self._blocks = self._blocks, {}
        await asyncio.gather(
            *(self._release(tid, b.remaining, b.period_start) for tid, b in blocks.items())
        )

    async def take(self, entitlements: TenantEntitlements) -> Ticket:
        """One run for the tenant, or ResourceExhausted naming the limit."""
        tenant_id = entitlements.tenant_id
        if (ticket := self._take_local(tenant_id)) is not None:
            return ticket
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            # Another request may have refilled the block while this one waited.
            if (ticket := self._take_local(tenant_id)) is not None:
                return ticket
            await self._refill(entitlements)
            ticket = self._take_local(tenant_id)
        assert ticket is not None, "a refill grants at least one run"
        return ticket

    def give_back(self, ticket: Ticket) -> None:
        block = self._blocks.get(ticket.tenant_id)
        if block is not None and block.period_start == ticket.period_start:
            block.remaining += 1
            return
        # The block is gone (swept or a new period): tell tenancy directly, in the background.
        task = asyncio.create_task(self._release(ticket.tenant_id, 1, ticket.period_start))
        task.add_done_callback(_log_failure)

    def _take_local(self, tenant_id: uuid.UUID) -> Ticket | None:
        block = self._blocks.get(tenant_id)
        if block is None:
            return None
        if datetime.now(UTC) >= block.period_end:
            del self._blocks[tenant_id]
            if block.remaining:
                task = asyncio.create_task(
                    self._release(tenant_id, block.remaining, block.period_start)
                )
                task.add_done_callback(_log_failure)
            return None
        if block.remaining <= 0:
            return None
        block.remaining -= 1
        block.last_used = self._clock()
        return Ticket(tenant_id, block.period_start)

    async def _refill(self, entitlements: TenantEntitlements) -> None:
        tenant_id = entitlements.tenant_id
        reply = await self._usage.reserve(
            tenant_id, tenancy_pb.METRIC_RUNS, self._block, partial=True
        )
        if self._watcher is not None:
            await self._watcher.runs_reserved(tenant_id, reply)
        period_start = reply.period_start_time.ToDatetime(tzinfo=UTC)
        period_end = reply.period_end_time.ToDatetime(tzinfo=UTC)
        if reply.granted == 0:
            raise quota_exceeded(
                "runs_per_month",
                reply.limit,
                reply.plan,
                f"this month's runs are used up; the count resets at {period_end.isoformat()}",
                (period_end - datetime.now(UTC)).total_seconds(),
            )
        block = self._blocks.get(tenant_id)
        if block is not None and block.period_start == period_start:
            block.remaining += reply.granted
        else:
            if block is not None and block.remaining:
                await self._release(tenant_id, block.remaining, block.period_start)
            self._blocks[tenant_id] = _Block(reply.granted, period_start, period_end, self._clock())

    async def sweep(self) -> None:
        """Gives back the units of blocks nobody used for `idle_seconds`."""
        now = self._clock()
        idle = [
            (tenant_id, block)
            for tenant_id, block in self._blocks.items()
            if now - block.last_used >= self._idle
        ]
        for tenant_id, _block in idle:
            del self._blocks[tenant_id]
            lock = self._locks.get(tenant_id)
            if lock is not None and not lock.locked():
                del self._locks[tenant_id]
        await asyncio.gather(
            *(self._release(tid, b.remaining, b.period_start) for tid, b in idle if b.remaining)
        )

    async def _release(self, tenant_id: uuid.UUID, amount: int, period_start: datetime) -> None:
        await self._usage.release(
            tenant_id, tenancy_pb.METRIC_RUNS, amount, timestamp(period_start)
        )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("giving back a reserved run failed", exc_info=error)
