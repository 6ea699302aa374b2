"""Two worker processes share the queue and one is killed (SIGKILL) mid-run: nothing is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from aias.core.db import Database
from aias.core.localdb import LocalDatabase
from aias.services.artifacts import main as artifacts_main
from aias.services.execution import main as execution_main
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import Tenancy, running

RUNS = 200
# About 20 ms of template work per run, so a worker is always in the middle of some.
STEPS = [
    {"id": "shape", "type": "transform", "config": {"expression": "{order: id}"}},
    {
        "id": "work",
        "type": "template",
        "config": {
            "template": "{% for a in range(8) %}{% for b in range(100000) %}{% endfor "
            "%}{% endfor %}{{ input.order }}"
        },
    },
    {"id": "save", "type": "artifact", "config": {"name": "order.json", "format": "json"}},
]


@pytest.fixture(scope="module")
async def artifacts(
    database: LocalDatabase, tenancy: Tenancy, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, Path]]:
    """Execution (which artifacts asks whose a run is) and artifacts; yields artifacts' address
    and its blob folder."""
    execution = await execution_main.build_server(
        execution_main.ExecutionSettings(
            server_settings("execution"),
            database.app_url,
            tenancy.address,
            "http://gateway.test",
            entitlements_ttl=30.0,
            max_attempts=3,
        )
    )
    blobs = tmp_path_factory.mktemp("blobs")
    async with running(execution) as execution_address:
        built = await artifacts_main.build_server(
            artifacts_main.ArtifactsSettings(
                server_settings("artifacts"),
                database.app_url,
                blobs,
                tenancy.address,
                execution_address,
            )
        )
        async with running(built) as address:
            yield address, blobs


@contextmanager
def _worker_process(
    name: str, database: LocalDatabase, tenancy: Tenancy, artifacts: str, folder: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m aias.services.execution.worker_main`, as the launcher starts it, with a short lease."""
    ready = folder / f"{name}.ready"
    env = {
        **os.environ,
        "AIAS_APP_DATABASE_URL": database.app_url,
        "AIAS_TENANCY_ADDR": tenancy.address,
        "AIAS_ARTIFACTS_ADDR": artifacts,
        "AIAS_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "AIAS_EXECUTION_WORKER_PORT": "0",
        "AIAS_EXECUTION_WORKER_METRICS_PORT": "0",
        "AIAS_WORKER_ID": name,
        "AIAS_WORKER_LEASE_SECONDS": "2",
        "AIAS_WORKER_POLL_SECONDS": "0.2",
        "AIAS_WORKER_CONCURRENCY": "4",
        "AIAS_STEP_PROCESSES": "2",
        "AIAS_READY_FILE": str(ready),
        "AIAS_LOG_LEVEL": "INFO",
    }
    with (folder / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "aias.services.execution.worker_main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


async def _until(condition: Callable[[], Awaitable[bool]], seconds: float) -> None:
    for _ in range(int(seconds / 0.02)):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {seconds} s")


async def test_a_worker_killed_mid_run_loses_and_repeats_nothing(
    app_db: Database,
    database: LocalDatabase,
    tenancy: Tenancy,
    artifacts: tuple[str, Path],
    tmp_path: Path,
) -> None:
    address, blobs = artifacts
    tenant = await tenancy.new_tenant("enterprise")
    workflow = uuid.uuid4()
    with (
        _worker_process("crash-victim", database, tenancy, address, tmp_path) as victim,
        _worker_process("crash-survivor", database, tenancy, address, tmp_path) as survivor,
    ):
        await _until(lambda: _both_ready(tmp_path, victim, survivor), 60)
        async with app_db.tenant(tenant) as session:
            await session.execute(
                text(
                    "INSERT INTO execution.workflows (id, tenant_id, name, enabled, "
                    "current_version) VALUES (:w, :t, 'crash', true, 1)"
                ),
                {"w": workflow, "t": tenant},
            )
            await session.execute(
                text(
                    "INSERT INTO execution.workflow_versions (workflow_id, version, tenant_id, "
                    "steps) VALUES (:w, 1, :t, CAST(:s AS jsonb))"
                ),
                {"w": workflow, "t": tenant, "s": json.dumps(STEPS)},
            )
            # 200 runs in one statement, each with its own input (so its own artifact).
            await session.execute(
                text(
                    "INSERT INTO execution.runs (id, tenant_id, workflow_id, workflow_version, "
                    "status, max_attempts, payload, content_type) "
                    "SELECT gen_random_uuid(), :t, :w, 1, 'queued', 3, "
                    "convert_to(json_build_object('id', 'order-' || i)::text, 'UTF8'), "
                    "'application/json' FROM generate_series(1, :n) AS i"
                ),
                {"t": tenant, "w": workflow, "n": RUNS},
            )

        async def victim_is_mid_run() -> bool:
            async with app_db.tenant(tenant) as session:
                found = await session.execute(
                    text(
                        "SELECT 1 FROM execution.runs r JOIN execution.step_logs l "
                        "ON l.run_id = r.id AND l.attempt = r.attempt "
                        "WHERE r.lease_owner = 'crash-victim' AND r.status = 'running' LIMIT 1"
                    )
                )
                return found.first() is not None

        await _until(victim_is_mid_run, 30)
        victim.kill()
        victim.wait()

        async def all_ended() -> bool:
            async with app_db.tenant(tenant) as session:
                open_runs = await session.execute(
                    text(
                        "SELECT count(*) FROM execution.runs WHERE status IN ('queued', 'running')"
                    )
                )
                return bool(open_runs.scalar_one() == 0)

        await _until(all_ended, 60)

    async with app_db.tenant(tenant) as session:
        runs = (await session.execute(text("SELECT id, status, attempt FROM execution.runs"))).all()
        final_logs = (
            await session.execute(
                text(
                    "SELECT l.run_id, l.step_id, l.status FROM execution.step_logs l "
                    "JOIN execution.runs r ON r.id = l.run_id AND r.attempt = l.attempt "
                    "ORDER BY l.run_id, l.step_index"
                )
            )
        ).all()
        artifacts_per_run = (
            await session.execute(
                text("SELECT run_id, count(*) FROM artifacts.artifacts GROUP BY run_id")
            )
        ).all()
        blob_rows = (
            await session.execute(
                text("SELECT refcount, content IS NOT NULL AS in_row FROM artifacts.blobs")
            )
        ).all()
    # Every run ended once, as succeeded; none was lost.
    assert len(runs) == RUNS
    assert {run.status for run in runs} == {"succeeded"}
    # The kill hit runs in the middle: another worker took them over, as a new attempt.
    taken_over = {run.id for run in runs if run.attempt > 1}
    assert taken_over
    # The attempt that finished each run logged every step exactly once.
    steps = [step["id"] for step in STEPS]
    by_run: dict[uuid.UUID, list[tuple[str, str]]] = {}
    for row in final_logs:
        by_run.setdefault(row.run_id, []).append((row.step_id, row.status))
    assert by_run == {run.id: [(step, "succeeded") for step in steps] for run in runs}
    # One artifact per run, one blob per artifact: nothing stored twice. The outputs are small,
    # so each blob is kept in its database row and no file is written.
    assert sorted(count for _, count in artifacts_per_run) == [1] * RUNS
    assert sorted(blob_rows) == [(1, True)] * RUNS
    stored = blobs / str(tenant) / "sha256"
    assert sum(1 for path in stored.rglob("*") if path.is_file()) == 0
    # No run was recorded as finished by both workers.
    finished = [
        entry["run_id"]
        for name in ("crash-victim", "crash-survivor")
        for line in (tmp_path / f"{name}.log").read_text(errors="replace").splitlines()
        if line.startswith("{")
        and (entry := json.loads(line))["message"] == "run finished"
        and entry.get("tenant_id") == str(tenant)
    ]
    assert len(finished) == len(set(finished))


async def _both_ready(folder: Path, *processes: subprocess.Popen[bytes]) -> bool:
    for process in processes:
        assert process.poll() is None, "a worker exited at start-up"
    return all((folder / f"{name}.ready").exists() for name in ("crash-victim", "crash-survivor"))
