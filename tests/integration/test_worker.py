"""The worker against real PostgreSQL: step logs, retries, release on shutdown, noisy neighbours."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from aias.artifacts.v1 import artifacts_service_pb2_grpc as artifacts_grpc
from aias.core.clients import internal_channel
from aias.core.db import Database, SystemPath, libpq_url
from aias.core.destinations import AddressPolicy
from aias.core.entitlements import EntitlementsCache
from aias.core.localdb import LocalDatabase
from aias.services.execution.ledger import RunLedger
from aias.services.execution.repository import Outcome, QueueRepository, StepLogEntry
from aias.services.execution.sandbox import StepRunner
from aias.services.execution.steps import canonical_json, sha256_hex
from aias.services.execution.worker import Worker, WorkerConfig
from tests.conftest import INTERNAL_TOKEN
from tests.integration.servers import Tenancy

# A one-step workflow whose step always succeeds at once.
TRIVIAL = [{"id": "t", "type": "transform", "config": {"expression": "a"}}]


@pytest.fixture(scope="module")
async def runner() -> AsyncIterator[StepRunner]:
    """Step processes for every worker of this module (starting them costs a few 0.1 s)."""
    pool = StepRunner(processes=4, memory_bytes=256 * 2**20)
    await pool.start()
    yield pool
    await pool.close()


def _dead_address() -> str:
    """An address where nothing listens: the artifacts service is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def _queue_run(
    db: Database,
    tenant: uuid.UUID,
    steps: list[dict[str, Any]],
    body: bytes,
    runs: int = 1,
) -> uuid.UUID:
    """Queues `runs` runs of a new workflow for `tenant`; returns the first run's id."""
    workflow = uuid.uuid4()
    run_ids = [uuid.uuid4() for _ in range(runs)]
    async with db.tenant(tenant) as session:
        await session.execute(
            text(
                "INSERT INTO execution.workflows (id, tenant_id, name, enabled, "
                "current_version) VALUES (:w, :t, 'wf', true, 1)"
            ),
            {"w": workflow, "t": tenant},
        )
        await session.execute(
            text(
                "INSERT INTO execution.workflow_versions (workflow_id, version, "
                "tenant_id, steps) VALUES (:w, 1, :t, CAST(:s AS jsonb))"
            ),
            {"w": workflow, "t": tenant, "s": json.dumps(steps)},
        )
        for run in run_ids:
            await session.execute(
                text(
                    "INSERT INTO execution.runs (id, tenant_id, workflow_id, workflow_version, "
                    "status, max_attempts, payload, content_type) VALUES (:r, :t, :w, 1, "
                    "'queued', 2, :p, 'application/json')"
                ),
                {"r": run, "t": tenant, "w": workflow, "p": body},
            )
    return run_ids[0]


async def _wait_status(db: Database, tenant: uuid.UUID, run: uuid.UUID, wanted: set[str]) -> Any:
    for _ in range(300):
        async with db.tenant(tenant) as session:
            row = (
                await session.execute(
                    text("SELECT status, attempt, error FROM execution.runs WHERE id = :r"),
                    {"r": run},
                )
            ).one()
        if row.status in wanted:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"run stayed {row.status}")


async def _logs(db: Database, tenant: uuid.UUID, run: uuid.UUID) -> list[Any]:
    async with db.tenant(tenant) as session:
        return list(
            (
                await session.execute(
                    text(
                        "SELECT step_id, status, attempt, error, output_sha256 "
                        "FROM execution.step_logs "
                        "WHERE run_id = :r ORDER BY attempt, step_index"
                    ),
                    {"r": run},
                )
            ).all()
        )


def _worker(
    db: Database,
    database: LocalDatabase,
    artifacts: str,
    tenancy: Tenancy,
    runner: StepRunner,
    worker_id: str,
    concurrency: int = 2,
    step_timeout: float = 5.0,
    http_allow: AddressPolicy | None = None,
    poll_interval: float = 0.2,
    claim_interval: float = 0.0,
) -> Worker:
    channel = internal_channel(artifacts, INTERNAL_TOKEN)
    entitlements = EntitlementsCache(internal_channel(tenancy.address, INTERNAL_TOKEN))
    config = WorkerConfig(
        worker_id=worker_id,
        concurrency=concurrency,
        lease=timedelta(seconds=5),
        poll_interval=poll_interval,
        claim_interval=claim_interval,
        retry_base=0.05,
        retry_max=0.1,
        step_timeout=step_timeout,
        http_allow=http_allow or AddressPolicy(),
    )
    return Worker(
        db,
        libpq_url(database.app_url),
        artifacts_grpc.ArtifactsServiceStub(channel),
        entitlements,
        runner,
        config,
    )


async def _run_to_end(
    app_db: Database,
    database: LocalDatabase,
    tenancy: Tenancy,
    runner: StepRunner,
    steps: list[dict[str, Any]],
    body: bytes,
    worker_id: str,
) -> tuple[uuid.UUID, uuid.UUID, Any]:
    """One run of `steps` for a new tenant, by a worker whose artifacts service is down; returns
    the tenant, the run and its row once it ended."""
    tenant = await tenancy.new_tenant()
    run = await _queue_run(app_db, tenant, steps, body)
    worker = _worker(app_db, database, _dead_address(), tenancy, runner, worker_id)
    await worker.start()
    try:
        row = await _wait_status(app_db, tenant, run, {"skipped", "failed", "succeeded"})
    finally:
        await worker.stop(2.0)
    return tenant, run, row


async def test_failed_step_fails_the_run_with_a_log_row(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    steps = [{"id": "check", "type": "validate", "config": {"schema": {"type": "string"}}}]
    tenant, run, row = await _run_to_end(
        app_db, database, tenancy, runner, steps, b'{"id": 1}', "w-fail"
    )
    assert row.status == "failed"
    assert "step 'check' failed" in row.error
    logs = await _logs(app_db, tenant, run)
    assert [(log.step_id, log.status, log.attempt) for log in logs] == [("check", "failed", 1)]
    assert "does not match the schema" in logs[0].error


async def test_unavailable_artifacts_retry_with_backoff_then_fail(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    steps = [{"id": "save", "type": "artifact", "config": {"name": "a.json", "format": "json"}}]
    tenant, run, row = await _run_to_end(
        app_db, database, tenancy, runner, steps, b'{"id": 1}', "w-retry"
    )
    assert (row.status, row.attempt) == ("failed", 2)
    assert "after 2 attempts" in row.error
    logs = await _logs(app_db, tenant, run)
    assert [(log.status, log.attempt) for log in logs] == [("failed", 1), ("failed", 2)]


async def test_filter_false_skips_the_run(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    steps = [
        {"id": "big", "type": "filter", "config": {"condition": "total > `100`"}},
        {"id": "never", "type": "transform", "config": {"expression": "total"}},
    ]
    tenant, run, row = await _run_to_end(
        app_db, database, tenancy, runner, steps, b'{"total": 3}', "w-skip"
    )
    assert row.status == "skipped"
    assert [(log.step_id, log.status) for log in await _logs(app_db, tenant, run)] == [
        ("big", "skipped")
    ]


async def test_shutdown_releases_a_run_in_flight(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    # A listener that accepts connections but never speaks HTTP/2: the upload hangs.
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    black_hole = await asyncio.start_server(hold, "127.0.0.1", 0)
    address = f"127.0.0.1:{black_hole.sockets[0].getsockname()[1]}"
    steps = [{"id": "save", "type": "artifact", "config": {"name": "a.json", "format": "json"}}]
    tenant = await tenancy.new_tenant()
    run = await _queue_run(app_db, tenant, steps, b'{"id": 1}')
    worker = _worker(app_db, database, address, tenancy, runner, "w-release")
    await worker.start()
    try:
        await _wait_status(app_db, tenant, run, {"running"})
    finally:
        await worker.stop(0.2)
        for writer in held:
            writer.close()
        black_hole.close()
        await black_hole.wait_closed()
    async with app_db.tenant(tenant) as session:
        row = (
            await session.execute(
                text("SELECT status, attempt, lease_owner FROM execution.runs WHERE id = :r"),
                {"r": run},
            )
        ).one()
    assert (row.status, row.attempt, row.lease_owner) == ("queued", 0, None)


async def test_a_tenant_at_its_concurrency_limit_waits_while_others_run(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    # Uploads to this listener never finish, so tenant A's runs stay running.
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    black_hole = await asyncio.start_server(hold, "127.0.0.1", 0)
    address = f"127.0.0.1:{black_hole.sockets[0].getsockname()[1]}"
    busy = await tenancy.new_tenant("enterprise")
    await tenancy.set_limits(busy, concurrent_runs=1)
    hanging = [{"id": "save", "type": "artifact", "config": {"name": "a.json"}}]
    await _queue_run(app_db, busy, hanging, b"{}", runs=3)
    other = await tenancy.new_tenant()
    quick = await _queue_run(
        app_db,
        other,
        TRIVIAL,
        b'{"a": 1}',
    )
    worker = _worker(app_db, database, address, tenancy, runner, "w-caps", concurrency=4)
    await worker.start()
    try:
        assert (await _wait_status(app_db, other, quick, {"succeeded"})).status == "succeeded"
        await asyncio.sleep(0.5)  # several claim rounds pass
        async with app_db.tenant(busy) as session:
            statuses = sorted(
                (
                    await session.execute(
                        text("SELECT status FROM execution.runs WHERE tenant_id = :t"),
                        {"t": busy},
                    )
                ).scalars()
            )
        assert statuses == ["queued", "queued", "running"]
    finally:
        await worker.stop(0.2)
        for writer in held:
            writer.close()
        black_hole.close()
        await black_hole.wait_closed()


# Longer than any wait below: what the worker claims, it claims because it was woken.
NO_POLL = 60.0


async def test_a_freed_slot_claims_the_backlog_without_polling(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    # One slot, five runs queued at once: each end of a run must wake the next claim, since
    # the claim before it filled the slot and left runs behind.
    tenant = await tenancy.new_tenant("enterprise")
    worker = _worker(
        app_db, database, _dead_address(), tenancy, runner, "w-slot", 1, poll_interval=NO_POLL
    )
    await worker.start()
    try:
        await _queue_run(app_db, tenant, TRIVIAL, b'{"a": 1}', runs=5)
        await _wait_all(app_db, tenant, 5)
        # Drained now; a run queued later is announced by its insert's notice.
        await _queue_run(app_db, tenant, TRIVIAL, b'{"a": 2}')
        await _wait_all(app_db, tenant, 6)
    finally:
        await worker.stop(0.2)


async def test_a_tenant_at_its_limit_gets_its_next_run_when_one_ends_without_polling(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    # Slots are free but the tenant's limit held its runs back: the end of its running run
    # must wake the claim that takes the next.
    tenant = await tenancy.new_tenant("enterprise")
    await tenancy.set_limits(tenant, concurrent_runs=1)
    worker = _worker(
        app_db, database, _dead_address(), tenancy, runner, "w-limit", 4, poll_interval=NO_POLL
    )
    await worker.start()
    try:
        # The first run makes the tenant's limit known to the worker.
        await _queue_run(app_db, tenant, TRIVIAL, b'{"a": 1}')
        await _wait_all(app_db, tenant, 1)
        await _queue_run(app_db, tenant, TRIVIAL, b'{"a": 1}', runs=4)
        await _wait_all(app_db, tenant, 5)
    finally:
        await worker.stop(0.2)


async def test_runs_trickling_in_are_claimed_together(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    # The worker keeps up (its last claim drained the queue), so runs queued one by one within
    # the claim interval wait for it and are taken by one claim: one statement, one start time.
    tenant = await tenancy.new_tenant("enterprise")
    worker = _worker(
        app_db, database, _dead_address(), tenancy, runner, "w-gap", 8, claim_interval=1.0
    )
    await worker.start()
    try:
        await _queue_run(app_db, tenant, TRIVIAL, b'{"a": 0}')
        await _wait_all(app_db, tenant, 1)
        for n in range(4):
            await _queue_run(app_db, tenant, TRIVIAL, f'{{"a": {n}}}'.encode())
        await _wait_all(app_db, tenant, 5)
    finally:
        await worker.stop(0.2)
    async with app_db.tenant(tenant) as session:
        starts = (
            await session.execute(
                text("SELECT start_time FROM execution.runs ORDER BY create_time")
            )
        ).scalars()
        first, *trickled = list(starts)
    assert len(set(trickled)) == 1
    assert trickled[0] > first


async def _wait_all(db: Database, tenant: uuid.UUID, runs: int) -> None:
    """Until the tenant has `runs` succeeded runs, for at most 15 s."""
    for _ in range(300):
        async with db.tenant(tenant) as session:
            done = (
                await session.execute(
                    text("SELECT count(*) FROM execution.runs WHERE status = 'succeeded'")
                )
            ).scalar_one()
        if done == runs:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{done} of {runs} runs succeeded")


def _template(step_id: str, template: str) -> list[dict[str, Any]]:
    return [{"id": step_id, "type": "template", "config": {"template": template}}]


# Jinja's sandbox caps range() at 100,000 items; nested, the loops run for hours.
SPIN = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


async def test_a_noisy_tenant_does_not_hold_up_another_tenants_run(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    noisy = await tenancy.new_tenant()  # free: two runs at once
    spinning = await _queue_run(app_db, noisy, _template("spin", SPIN), b"{}")
    hungry = await _queue_run(app_db, noisy, _template("hog", "{{ 'ab' * 150000000 }}"), b"{}")
    quiet = await tenancy.new_tenant()
    worker = _worker(
        app_db,
        database,
        _dead_address(),
        tenancy,
        runner,
        "w-noisy",
        concurrency=4,
        step_timeout=1.5,
    )
    await worker.start()
    try:
        await _wait_status(app_db, noisy, spinning, {"running"})
        await asyncio.sleep(0.3)  # the template is spinning now
        queued = time.monotonic()
        run = await _queue_run(app_db, quiet, TRIVIAL, b'{"a": 1}')
        row = await _wait_status(app_db, quiet, run, {"succeeded", "failed"})
        waited = time.monotonic() - queued
        spun = await _wait_status(app_db, noisy, spinning, {"succeeded", "failed"})
        hogged = await _wait_status(app_db, noisy, hungry, {"succeeded", "failed"})
    finally:
        await worker.stop(2.0)
    assert row.status == "succeeded"
    assert waited < 2.0, f"the quiet tenant's run took {waited:.2f} s"
    assert (spun.status, hogged.status) == ("failed", "failed")
    assert spun.error == "step 'spin' failed: STEP_TIMEOUT: the step ran longer than 1.5 s"
    assert hogged.error.startswith("step 'hog' failed: STEP_MEMORY: ")
    (spin_log,) = await _logs(app_db, noisy, spinning)
    (hog_log,) = await _logs(app_db, noisy, hungry)
    assert (spin_log.status, spin_log.error) == (
        "failed",
        "STEP_TIMEOUT: the step ran longer than 1.5 s",
    )
    assert hog_log.status == "failed"
    assert hog_log.error.startswith("STEP_MEMORY: the step needed more than the 256 MiB")


async def test_the_plans_output_limit_fails_a_step(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    tenant = await tenancy.new_tenant()
    await tenancy.set_limits(tenant, step_output_bytes=100)
    run = await _queue_run(app_db, tenant, _template("big", "{{ 'x' * 200 }}"), b"{}")
    worker = _worker(app_db, database, _dead_address(), tenancy, runner, "w-output")
    await worker.start()
    try:
        row = await _wait_status(app_db, tenant, run, {"succeeded", "failed"})
    finally:
        await worker.stop(2.0)
    assert row.status == "failed"
    (log,) = await _logs(app_db, tenant, run)
    assert log.error == "STEP_OUTPUT_TOO_LARGE: the step's output is over the limit of 100 bytes"


async def test_a_template_sees_its_run_and_workflow(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    tenant = await tenancy.new_tenant()
    template = "{{ input.n }} {{ run.id }} {{ run.attempt }} {{ workflow.version }}"
    run = await _queue_run(app_db, tenant, _template("say", template), b'{"n": 7}')
    worker = _worker(app_db, database, _dead_address(), tenancy, runner, "w-context")
    await worker.start()
    try:
        row = await _wait_status(app_db, tenant, run, {"succeeded", "failed"})
    finally:
        await worker.stop(2.0)
    assert row.status == "succeeded"
    (log,) = await _logs(app_db, tenant, run)
    assert log.output_sha256 == sha256_hex(canonical_json(f"7 {run} 1 1"))


# About 0.2 s of template work (100,000 iterations take about 2.5 ms here).
BUSY = "{% for a in range(80) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


async def test_a_running_run_asked_to_cancel_stops_at_the_next_step_boundary(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    steps = [
        {"id": f"busy{i}", "type": "template", "config": {"template": BUSY}} for i in range(10)
    ]
    tenant = await tenancy.new_tenant()
    run = await _queue_run(app_db, tenant, steps, b"{}")
    worker = _worker(app_db, database, _dead_address(), tenancy, runner, "w-cancel")
    await worker.start()
    try:
        for _ in range(300):
            if await _logs(app_db, tenant, run):
                break  # the first step is done: the run is between steps now
            await asyncio.sleep(0.02)
        # What CancelRun does to a running run; the trigger tells the worker at commit.
        async with app_db.tenant(tenant) as session:
            await session.execute(
                text("UPDATE execution.runs SET cancel_requested = true WHERE id = :r"),
                {"r": run},
            )
        row = await _wait_status(app_db, tenant, run, {"cancelled", "succeeded", "failed"})
    finally:
        await worker.stop(2.0)
    assert (row.status, row.error) == ("cancelled", "")
    logs = await _logs(app_db, tenant, run)
    *done, last = [(log.step_id, log.status) for log in logs]
    assert 1 <= len(done) < len(steps) - 1
    assert done == [(f"busy{i}", "succeeded") for i in range(len(done))]
    assert last == (f"busy{len(done)}", "cancelled")


async def _queue_flood(db: Database, tenant: uuid.UUID, workflow_of: uuid.UUID, runs: int) -> None:
    """`runs` queued runs of the workflow of run `workflow_of`, in one statement."""
    async with db.tenant(tenant) as session:
        await session.execute(
            text(
                "INSERT INTO execution.runs (id, tenant_id, workflow_id, workflow_version, "
                "status, max_attempts, payload, content_type) "
                "SELECT gen_random_uuid(), r.tenant_id, r.workflow_id, 1, 'queued', 2, "
                "r.payload, r.content_type FROM execution.runs r, generate_series(1, :n) "
                "WHERE r.id = :r"
            ),
            {"n": runs, "r": workflow_of},
        )


async def test_a_flood_of_one_tenant_delays_another_tenants_run_by_a_few_runs(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    """The fairness bound: a run queued behind another tenant's 5,000 is taken by the next
    claim, so at most `concurrency` of the flood's runs (one claim under way) start before it,
    not 5,000. It then waits only for a free slot: about one run's time."""
    flooder = await tenancy.new_tenant("enterprise")
    first = await _queue_run(app_db, flooder, TRIVIAL, b'{"a": 1}')
    other = await tenancy.new_tenant("enterprise")
    warm = await _queue_run(app_db, other, TRIVIAL, b'{"a": 2}')
    concurrency = 4
    worker = _worker(
        app_db, database, _dead_address(), tenancy, runner, "w-fair", concurrency=concurrency
    )
    await worker.start()
    try:
        # Both tenants are known to the worker before the flood, as busy tenants are.
        await _wait_status(app_db, flooder, first, {"succeeded"})
        await _wait_status(app_db, other, warm, {"succeeded"})
        await _queue_flood(app_db, flooder, first, 5_000)
        await asyncio.sleep(0.3)  # the worker is busy with the flood
        async with app_db.tenant(other) as session:
            run = uuid.uuid4()
            await session.execute(
                text(
                    "INSERT INTO execution.runs (id, tenant_id, workflow_id, workflow_version, "
                    "status, max_attempts, payload, content_type) SELECT :n, tenant_id, "
                    "workflow_id, 1, 'queued', 2, payload, content_type FROM execution.runs "
                    "WHERE id = :r"
                ),
                {"n": run, "r": warm},
            )
        assert (await _wait_status(app_db, other, run, {"succeeded"})).status == "succeeded"
    finally:
        await worker.stop(2.0)
        async with app_db.tenant(flooder) as session:
            await session.execute(
                text("DELETE FROM execution.runs WHERE tenant_id = :t AND status = 'queued'"),
                {"t": flooder},
            )
    async with app_db.tenant(other) as session:
        queued, started = (
            await session.execute(
                text("SELECT create_time, start_time FROM execution.runs WHERE id = :r"),
                {"r": run},
            )
        ).one()
    async with app_db.tenant(flooder) as session:
        ahead, finished = (
            await session.execute(
                text(
                    "SELECT count(*) FILTER (WHERE start_time > :q AND start_time < :s), "
                    "count(*) FILTER (WHERE status = 'succeeded') "
                    "FROM execution.runs WHERE tenant_id = :t"
                ),
                {"q": queued, "s": started, "t": flooder},
            )
        ).one()
    assert finished < 5_000, "the flood was drained before the other tenant's run: no test"
    assert ahead <= concurrency, f"{ahead} of the flood's runs started first"


async def test_a_step_error_quoting_a_nul_character_is_written(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner
) -> None:
    # PostgreSQL's text holds no NUL: an error that quotes one (here a key of the payload, in
    # the validate step's path) must still be written, or the ledger's batch fails every time.
    schema = {"additionalProperties": {"type": "string"}}
    steps = [{"id": "check", "type": "validate", "config": {"schema": schema}}]
    tenant, run, row = await _run_to_end(
        app_db, database, tenancy, runner, steps, b'{"a\\u0000b": 1}', "w-nul"
    )
    assert row.status == "failed"
    logs = await _logs(app_db, tenant, run)
    assert [(log.step_id, log.status) for log in logs] == [("check", "failed")]
    assert "a\\x00b" in logs[0].error


async def test_a_row_the_database_refuses_fails_only_its_own_run(
    app_db: Database, tenancy: Tenancy
) -> None:
    # Two runs' logs and outcomes in one batch of the ledger, one with a value PostgreSQL
    # refuses (a NUL in its step id, which validation keeps out of real workflows): the batch is
    # written run by run, so the other run is recorded with its log, and the bad one ends failed
    # instead of holding the batch (and every later outcome of this worker) forever.
    tenant = await tenancy.new_tenant()
    await _queue_run(app_db, tenant, TRIVIAL, b"{}", runs=2)
    lease = timedelta(seconds=30)
    async with app_db.system(SystemPath.RUN_QUEUE) as session:
        bad, good = await QueueRepository(session, "w-ledger").start({tenant: 2}, lease)
    ledger = RunLedger(app_db, "w-ledger", lease)
    await ledger.start()
    try:
        now = datetime.now(UTC)
        for run, step_id in ((bad, "t\x00"), (good, "t")):
            ledger.log(
                StepLogEntry(
                    run.id,
                    run.attempt,
                    0,
                    step_id,
                    "transform",
                    "succeeded",
                    now,
                    now,
                    0,
                    "",
                    2,
                    "",
                    "",
                )
            )
        recorded = [ledger.settle(Outcome(run.id, run.attempt, "succeeded")) for run in (bad, good)]
        written = await asyncio.wait_for(asyncio.gather(*recorded), 10)
        # The worker learns what was recorded (its metrics and log count the bad run failed).
        assert [outcome.status if outcome else None for outcome in written] == [
            "failed",
            "succeeded",
        ]
    finally:
        await ledger.close(2.0)
    bad_row = await _wait_status(app_db, tenant, bad.id, {"failed", "succeeded"})
    assert (bad_row.status, bad_row.error) == (
        "failed",
        "internal error: the database refused this run's step log or outcome",
    )
    assert await _logs(app_db, tenant, bad.id) == []
    assert (await _wait_status(app_db, tenant, good.id, {"failed", "succeeded"})).status == (
        "succeeded"
    )
    assert [log.step_id for log in await _logs(app_db, tenant, good.id)] == ["t"]
