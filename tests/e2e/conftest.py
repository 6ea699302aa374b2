"""Starts the real suite (every process on an ephemeral port) once for the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from aias.core.launcher import Stack
from aias.core.localdb import LocalDatabase
from tests.conftest import INTERNAL_TOKEN

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def stack(database: LocalDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("stack")
    ports = dict.fromkeys(
        ("tenancy", "artifacts", "billing", "execution", "execution-worker", "gateway"), 0
    )
    running = Stack(
        data_dir,
        database,
        INTERNAL_TOKEN,
        ADMIN_TOKEN,
        ports,
        ports,
        log_dir=data_dir / "logs",
        extra_env={"AIAS_WORKER_POLL_SECONDS": "1"},
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=stack.gateway_url) as session:
        yield session
