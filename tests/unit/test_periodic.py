"""Periodic: rounds at the interval, a failed round logged and followed by the next, a clean stop."""

from __future__ import annotations

import asyncio

import pytest

from aias.core.periodic import Periodic


async def test_a_failed_round_is_logged_and_the_next_one_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = 0
    third = asyncio.Event()

    async def action() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            third.set()
        if rounds == 1:
            raise RuntimeError("down")

    periodic = Periodic("test-round", action, 0.01)
    await periodic.start()
    await asyncio.wait_for(third.wait(), 5)
    await periodic.stop()

    assert [r.getMessage() for r in caplog.records] == ["test-round failed"]
    settled = rounds
    await asyncio.sleep(0.05)
    assert rounds == settled


async def test_the_first_round_can_wait_one_interval() -> None:
    rounds = 0

    async def action() -> None:
        nonlocal rounds
        rounds += 1

    periodic = Periodic("test-later", action, 60, at_start=False)
    await periodic.start()
    await asyncio.sleep(0.05)
    await periodic.stop()

    assert rounds == 0


async def test_stopping_what_never_started_is_fine() -> None:
    await Periodic("test-idle", lambda: asyncio.sleep(0), 1).stop()
