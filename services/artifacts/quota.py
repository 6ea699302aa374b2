"""Storage bytes, reserved from tenancy in blocks while a tenant uploads often.

Each reservation at tenancy locks the tenant's usage row, so concurrent uploads of one tenant
would queue on that lock, one RPC and one commit each, and a steady stream of small uploads (a
workflow's artifact step) would pay that round trip on every artifact. While a tenant has more
than one upload in flight, or had one within the last `linger` seconds, this process reserves a
block beyond what the upload needs and hands the rest out from memory to the uploads that
follow. Blocks are whole grants: tenancy grants a block only when it fits under the limit, and
otherwise exactly what the upload needs, or nothing, so the quota is never exceeded. Whatever
is left goes back `linger` seconds after the tenant's last upload in flight ended (at once with
a linger of 0, before that upload answers), and when the process stops, so usage at rest is
exactly what is stored; while a tenant uploads it reads at most one block per process higher,
and near the limit a block another process holds can refuse an upload that would have fit,
until that process gives it back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aias.core.entitlements import TenantEntitlements, UsageClient, quota_exceeded
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb

log = logging.getLogger(__name__)

DEFAULT_BLOCK_BYTES = 4 * 1024 * 1024
DEFAULT_LINGER_SECONDS = 1.0

_METRIC = tenancy_pb.METRIC_ARTIFACT_STORAGE_BYTES


@dataclass
class _Tenant:
    in_flight: int = 0
    held: int = 0
    # Uploads begun since this state was made: a second one within the linger takes blocks.
    begun: int = 0
    lock: asyncio.Lock | None = None
    # While no upload is in flight: the timer that gives back what is held.
    expiry: asyncio.TimerHandle | None = None


class StorageQuota:
    """Reserves storage bytes per tenant, in blocks of `block_bytes` while uploads overlap or
    follow each other within `linger` seconds (a block of 0: exactly what each upload needs,
    one reservation each)."""

    def __init__(
        self,
        usage: UsageClient,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        linger: float = DEFAULT_LINGER_SECONDS,
    ) -> None:
        self._usage = usage
        self._block = block_bytes
        self._linger = linger
        self._tenants: dict[uuid.UUID, _Tenant] = {}
        self._returns: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def uploading(self, tenant_id: uuid.UUID) -> AsyncIterator[None]:
        """Marks one upload of the tenant in flight; what is held goes back `linger` seconds
        after the last one out (at once, before it answers, with no linger)."""
        state = self._tenants.setdefault(tenant_id, _Tenant())
        if state.expiry is not None:
            state.expiry.cancel()
            state.expiry = None
        state.in_flight += 1
        state.begun += 1
        try:
            yield
        finally:
            state.in_flight -= 1
            if state.in_flight == 0:
                if self._linger > 0:
                    state.expiry = asyncio.get_running_loop().call_later(
                        self._linger, self._expire, tenant_id, state
                    )
                else:
                    del self._tenants[tenant_id]
                    if state.held:
                        # Shielded: a cancelled upload still gives back what its burst left.
                        await asyncio.shield(self._release(tenant_id, state.held))

    async def close(self) -> None:
        """Gives back what every tenant holds (the process is stopping)."""
        for tenant_id, state in list(self._tenants.items()):
            if state.expiry is not None:
                state.expiry.cancel()
                self._expire(tenant_id, state)
        await asyncio.gather(*self._returns, return_exceptions=True)

    async def reserve(self, entitlements: TenantEntitlements, size: int) -> int:
        """`size` bytes for an upload inside `uploading`, or ResourceExhausted naming the limit;
        returns `size`."""
        state = self._tenants[entitlements.tenant_id]
        if state.held >= size:
            state.held -= size
            return size
        if state.lock is None:
            state.lock = asyncio.Lock()
        async with state.lock:
            # Another upload may have reserved a block while this one waited, or taken from
            # the bytes held while this one's reservation was on its way.
            while state.held < size:
                await self._refill(entitlements, state, size - state.held)
            state.held -= size
        return size

    def give_back(self, tenant_id: uuid.UUID, amount: int) -> None:
        """Bytes reserved by an upload inside `uploading` that stored nothing new."""
        self._tenants[tenant_id].held += amount

    def _expire(self, tenant_id: uuid.UUID, state: _Tenant) -> None:
        """The linger after the tenant's last upload ended: what is held goes back. (A new
        upload cancels the timer first, so the state is still the tenant's, with none in
        flight.)"""
        state.expiry = None
        del self._tenants[tenant_id]
        if state.held:
            task = asyncio.create_task(self._give_back_held(tenant_id, state.held))
            self._returns.add(task)
            task.add_done_callback(self._returns.discard)

    async def _give_back_held(self, tenant_id: uuid.UUID, amount: int) -> None:
        try:
            await self._release(tenant_id, amount)
        except Exception:
            log.exception(
                "storage held for uploads could not be given back; the tenant's usage reads "
                "that much too high",
                extra={"tenant_id": str(tenant_id), "bytes": amount},
            )

    async def _refill(self, entitlements: TenantEntitlements, state: _Tenant, need: int) -> None:
        tenant_id = entitlements.tenant_id
        if self._block and (state.in_flight > 1 or state.begun > 1):
            reply = await self._usage.reserve(tenant_id, _METRIC, need + self._block, partial=False)
            if reply.granted:
                state.held += int(reply.granted)
                return
            if reply.HasField("limit") and reply.used + need > reply.limit:
                raise _exceeded(entitlements, need, reply)
        reply = await self._usage.reserve(tenant_id, _METRIC, need, partial=False)
        if reply.granted == 0:
            raise _exceeded(entitlements, need, reply)
        state.held += int(reply.granted)

    async def _release(self, tenant_id: uuid.UUID, amount: int) -> None:
        await self._usage.release(tenant_id, _METRIC, amount)


def _exceeded(
    entitlements: TenantEntitlements, size: int, reply: tenancy_pb.ReserveUsageResponse
) -> Exception:
    return quota_exceeded(
        "artifact_storage_bytes",
        reply.limit,
        entitlements.plan,
        f"storing {size} more bytes would exceed the storage quota ({reply.used} bytes used)",
        None,
    )
