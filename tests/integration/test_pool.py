"""The connection pool opens connections as transactions need them and keeps them."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from aias.core.db import Database, SystemPath, create_engine
from aias.core.localdb import LocalDatabase


async def test_a_burst_reuses_the_connections_of_the_last_one(database: LocalDatabase) -> None:
    # Before, connections past a core of half the size were closed when returned: every burst
    # opened them again, a new PostgreSQL server process each.
    db = Database(create_engine(database.app_url, name="tests", max_connections=4))

    async def burst() -> set[int]:
        everyone_in = asyncio.Barrier(4)

        async def backend() -> int:
            async with db.system(SystemPath.RUN_QUEUE) as session:
                await everyone_in.wait()  # four transactions at once: four connections
                pid = await session.execute(text("SELECT pg_backend_pid()"))
                return int(pid.scalar_one())

        return set(await asyncio.gather(*(backend() for _ in range(4))))

    try:
        first, second = await burst(), await burst()
    finally:
        await db.close()

    assert len(first) == 4
    assert second == first
