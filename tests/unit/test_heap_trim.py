"""The heap's free pages go back to the OS once after large transfers, never per transfer."""

from __future__ import annotations

import asyncio
import gc

from aias.core.process import HeapTrim, freeze_survivors

MIB = 1024 * 1024
DELAY = 0.05


async def test_small_transfers_trim_nothing() -> None:
    trims: list[int] = []
    heap = HeapTrim(trims.append, DELAY)
    for _ in range(10):
        heap.after_transfer(MIB - 1)
    await asyncio.sleep(DELAY * 3)
    assert trims == []


async def test_large_transfers_in_a_burst_share_one_trim() -> None:
    trims: list[int] = []
    heap = HeapTrim(trims.append, DELAY)
    for _ in range(5):
        heap.after_transfer(8 * MIB)
    assert trims == []  # not on the transfer's own time
    await asyncio.sleep(DELAY * 3)
    assert trims == [0]  # malloc_trim(0): every arena, keeping no padding


async def test_a_transfer_after_the_trim_gets_one_of_its_own() -> None:
    trims: list[int] = []
    heap = HeapTrim(trims.append, DELAY)
    heap.after_transfer(2 * MIB)
    await asyncio.sleep(DELAY * 3)
    heap.after_transfer(2 * MIB)
    await asyncio.sleep(DELAY * 3)
    assert trims == [0, 0]


async def test_a_started_process_freezes_then_trims_once_its_start_up_has_settled() -> None:
    done: list[object] = []
    heap = HeapTrim(done.append, DELAY, settled=DELAY * 2, freeze=lambda: done.append("freeze"))
    heap.after_start()
    await asyncio.sleep(DELAY)
    assert done == []
    await asyncio.sleep(DELAY * 3)
    assert done == ["freeze", 0]


def test_freezing_leaves_later_collections_only_what_came_after() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    gc.collect()
    try:
        kept = [Node() for _ in range(1000)]
        freeze_survivors()
        frozen = gc.get_freeze_count()
        assert frozen >= len(kept)
        # Garbage made after the freeze is still collected.
        for _ in range(10):
            Node()
        assert gc.collect() >= 10
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
