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


# A linger short enough to wait out; the tests without one give back as the last upload ends.
LINGER = 0.05


def quota(usage: FakeUsage, linger: float = 0.0) -> StorageQuota:
    return StorageQuota(usage, BLOCK, linger)  # type: ignore[arg-type]  # duck-typed UsageClient


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


async def test_uploads_one_after_another_share_a_block_given_back_after_the_linger() -> None:
    usage = FakeUsage(limit=None)
    who = tenant()
    shared = quota(usage, LINGER)

    # One at a time, as a workflow's artifact step stores them: never two in flight.
    for _ in range(50):
        assert await store(shared, who, 10)

    # The first upload alone reserved its bytes; the second took a block the rest drew on.
    assert usage.reserved[:2] == [10, 10 + BLOCK]
    assert len(usage.reserved) < 5
    assert usage.used > 500  # the block's remainder is held while uploads keep coming
    await asyncio.sleep(LINGER * 2)
    assert usage.used == 500


async def test_an_upload_after_the_linger_starts_afresh() -> None:
    usage = FakeUsage(limit=None)
    who = tenant()
    shared = quota(usage, LINGER)

    assert await store(shared, who, 10)
    await asyncio.sleep(LINGER * 2)
    assert await store(shared, who, 20)

    assert usage.reserved == [10, 20]
    assert usage.used == 30


async def test_a_linger_never_lets_uploads_past_the_limit() -> None:
    usage = FakeUsage(limit=BLOCK + 250)
    who = tenant()
    shared = quota(usage, LINGER)

    stored = [await store(shared, who, 100) for _ in range(20)]

    assert sum(stored) == 12
    await asyncio.sleep(LINGER * 2)
    assert usage.used == 1200


async def test_closing_gives_back_what_is_held_at_once() -> None:
    usage = FakeUsage(limit=None)
    who = tenant()
    shared = quota(usage, linger=3600.0)
    for _ in range(3):
        assert await store(shared, who, 10)
    assert usage.used > 30

    await shared.close()

    assert usage.used == 30


async def test_a_give_back_that_fails_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    usage = FakeUsage(limit=None)
    who = tenant()
    shared = quota(usage, LINGER)
    for _ in range(2):
        assert await store(shared, who, 10)

    async def unreachable(tenant_id: uuid.UUID, metric: pb.Metric.ValueType, amount: int) -> None:
        raise ConnectionError("tenancy is down")

    usage.release = unreachable  # type: ignore[method-assign]
    await asyncio.sleep(LINGER * 2)

    assert "could not be given back" in caplog.text
    assert usage.used == 20 + BLOCK
