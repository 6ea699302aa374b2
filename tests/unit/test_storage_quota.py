"""Storage reserved in blocks, against a fake tenancy that grants like the real one."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from aias.core.entitlements import Limits, TenantEntitlements
from aias.core.errors import ResourceExhausted
from aias.services.artifacts.quota import StorageQuota
from aias.tenancy.v1 import tenancy_service_pb2 as pb

BLOCK = 1000


class FakeUsage:
    """Tenancy's usage row for one tenant: whole grants under `limit`, every call recorded."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self.reserved: list[int] = []

    async def reserve(
        self, tenant_id: uuid.UUID, metric: pb.Metric.ValueType, amount: int, *, partial: bool
    ) -> pb.ReserveUsageResponse:
        assert not partial
        await asyncio.sleep(0)  # an RPC: other uploads run meanwhile
        self.reserved.append(amount)
        granted = amount if self.limit is None or self.used + amount <= self.limit else 0
        self.used += granted
        return pb.ReserveUsageResponse(granted=granted, limit=self.limit, used=self.used)

    async def release(self, tenant_id: uuid.UUID, metric: pb.Metric.ValueType, amount: int) -> None:
        self.used -= amount


def quota(usage: FakeUsage) -> StorageQuota:
    return StorageQuota(usage, BLOCK)  # type: ignore[arg-type]  # duck-typed UsageClient


def tenant() -> TenantEntitlements:
    return TenantEntitlements(uuid.uuid4(), "enterprise", True, Limits())


async def store(quota: StorageQuota, who: TenantEntitlements, size: int) -> bool:
    """One upload that reserves `size` bytes and keeps them; False when refused."""
    async with quota.uploading(who.tenant_id):
        await asyncio.sleep(0)
        try:
            await quota.reserve(who, size)
        except ResourceExhausted:
            return False
        await asyncio.sleep(0)
        return True


async def test_a_lone_upload_reserves_exactly_its_bytes() -> None:
    usage = FakeUsage(limit=None)
    who = tenant()

    assert await store(quota(usage), who, 10)
    assert await store(quota(usage), who, 20)

    assert usage.reserved == [10, 20]
    assert usage.used == 30


async def test_overlapping_uploads_share_a_block_and_give_the_rest_back() -> None:
    usage = FakeUsage(limit=None)
    who = tenant()
    shared = quota(usage)

    stored = await asyncio.gather(*(store(shared, who, 10) for _ in range(50)))

    assert all(stored)
    # One reservation per block, not one per upload; what the burst left over went back.
    assert len(usage.reserved) < 5
    assert usage.used == 500


async def test_blocks_never_overshoot_the_limit_and_fill_it_exactly() -> None:
    usage = FakeUsage(limit=BLOCK * 3 + 50)
    who = tenant()
    shared = quota(usage)

    stored = await asyncio.gather(*(store(shared, who, 100) for _ in range(50)))

    assert sum(stored) == 30
    assert usage.used == 3000


async def test_a_failed_upload_gives_its_bytes_back() -> None:
    usage = FakeUsage(limit=None)
    who = tenant()
    shared = quota(usage)

    async def failing_upload() -> None:
        async with shared.uploading(who.tenant_id):
            reserved = await shared.reserve(who, 10)
            shared.give_back(who.tenant_id, reserved)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await failing_upload()

    assert usage.reserved == [10]
    assert usage.used == 0
