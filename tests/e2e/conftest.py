"""Starts the real suite (every process on an ephemeral port) once for the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from aias.core.launcher import PROCESSES, Stack
from aias.core.localdb import LocalDatabase
from tests.conftest import INTERNAL_TOKEN
from tests.e2e.database import fresh_database
from tests.stripe_fake import API_KEY, WEBHOOK_SECRET, FakeStripe

ADMIN_TOKEN = "test-admin-token"
# Every API key, webhook secret and secret-bearing body the tests used; none may be logged.
USED_SECRETS: set[str] = set()


@pytest.fixture(scope="session")
def stack_database() -> Iterator[LocalDatabase]:
    """The suite's own database: its worker must not claim runs that other tests queue."""
    with fresh_database() as local:
        yield local


@pytest.fixture(scope="session")
def fake_stripe() -> Iterator[FakeStripe]:
    """Stripe's API for the suite's billing; it must listen before billing starts."""
    fake = FakeStripe()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def stack(
    stack_database: LocalDatabase,
    fake_stripe: FakeStripe,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    database = stack_database
    data_dir: Path = tmp_path_factory.mktemp("stack")
    ports = {spec.name: 0 for spec in PROCESSES}
    running = Stack(
        data_dir,
        database,
        INTERNAL_TOKEN,
        ADMIN_TOKEN,
        ports,
        ports,
        log_dir=data_dir / "logs",
        extra_env={
            "AIAS_WORKER_POLL_SECONDS": "1",
            "AIAS_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "AIAS_STRIPE_API_KEY": API_KEY,
            "AIAS_STRIPE_API_BASE": fake_stripe.url,
            "AIAS_STRIPE_PRICE_PLANS": "pro_yearly=pro",
            # The endpoints http_request steps and alerts call in the tests listen on 127.0.0.1.
            "AIAS_HTTP_STEP_ALLOW": "127.0.0.1",
        },
    )
    running.start()
    yield running
    # Every process shuts down on SIGTERM by itself, with exit code 0, within the grace period.
    assert running.stop() == dict.fromkeys(ports, 0)
    # No secret, key or webhook body a test used appears in any line any process logged.
    logs = {path.name: path.read_text(errors="replace") for path in (data_dir / "logs").iterdir()}
    leaked = {
        (name, secret[:12] + "...")
        for name, text in logs.items()
        for secret in (*USED_SECRETS, WEBHOOK_SECRET, API_KEY, ADMIN_TOKEN, INTERNAL_TOKEN)
        if secret in text
    }
    assert leaked == set(), f"secrets in the logs: {sorted(leaked)}"


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=stack.gateway_url) as session:
        yield session


@contextmanager
def own_suite(
    data_dir: Path, extra_env: Mapping[str, str], replicas: Mapping[str, int] | None = None
) -> Iterator[Stack]:
    """The whole suite on a database of its own (no other suite's worker takes its runs), on
    ports the system picks, stopped at the end."""
    ports = {spec.name: 0 for spec in PROCESSES}
    with fresh_database() as database:
        running = Stack(
            data_dir,
            database,
            INTERNAL_TOKEN,
            ADMIN_TOKEN,
            ports,
            ports,
            log_dir=data_dir / "logs",
            extra_env=dict(extra_env),
            replicas=dict(replicas or {}),
        )
        running.start()
        try:
            yield running
        finally:
            running.stop()
