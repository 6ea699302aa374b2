"""http_request steps run by the real worker against a local HTTP server: values, failures,
retries, time and size bounds, and destinations refused."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aias.core.db import Database
from aias.core.destinations import AddressPolicy
from aias.core.localdb import LocalDatabase
from aias.services.execution.sandbox import JSON, StepCall, StepLimits, StepRunner
from aias.services.execution.steps import (
    HttpResponse,
    StepContext,
    StepFailed,
    canonical_json,
    sha256_hex,
)
from tests.integration.servers import Tenancy
from tests.integration.test_worker import _dead_address, _logs, _queue_run, _wait_status, _worker
from tests.remote_fake import Remote

LOOPBACK = AddressPolicy.parse("127.0.0.1")


@pytest.fixture(scope="module")
async def runner() -> AsyncIterator[StepRunner]:
    pool = StepRunner(processes=2, memory_bytes=256 * 2**20)
    await pool.start()
    yield pool
    await pool.close()


@pytest.fixture
async def remote() -> AsyncIterator[Remote]:
    async with Remote().running() as server:
        yield server


def _call(url: str, **config: Any) -> list[dict[str, Any]]:
    return [{"id": "call", "type": "http_request", "config": {"url": url, **config}}]


async def _run_to_the_end(
    app_db: Database,
    database: LocalDatabase,
    tenancy: Tenancy,
    runner: StepRunner,
    tenant: uuid.UUID,
    steps: list[dict[str, Any]],
    allow: AddressPolicy = LOOPBACK,
) -> tuple[uuid.UUID, Any]:
    run = await _queue_run(app_db, tenant, steps, b'{"id": "A-1", "total": 19.75}')
    worker_id = f"w-http-{uuid.uuid4().hex[:6]}"
    worker = _worker(
        app_db, database, _dead_address(), tenancy, runner, worker_id, http_allow=allow
    )
    await worker.start()
    try:
        row = await _wait_status(app_db, tenant, run, {"succeeded", "failed"})
    finally:
        await worker.stop(2.0)
    return run, row


async def test_the_response_becomes_the_steps_value(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner, remote: Remote
) -> None:
    tenant = await tenancy.new_tenant("starter")
    steps = [
        *_call(
            f"{remote.url}/echo?order={{{{ input.id }}}}",
            method="POST",
            headers={"X-Run": "{{ run.id }}", "X-Workflow-Version": "{{ workflow.version }}"},
            body={"json": "{order: id, total: total}"},
        ),
        {
            "id": "shape",
            "type": "transform",
            "config": {
                "expression": '{status: status, sent: body.body, type: headers."content-type"}'
            },
        },
    ]
    run, row = await _run_to_the_end(app_db, database, tenancy, runner, tenant, steps)
    assert (row.status, row.attempt) == ("succeeded", 1)
    (seen,) = remote.seen
    assert (seen["method"], seen["query"]) == ("POST", "order=A-1")
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert (headers["x-run"], headers["x-workflow-version"]) == (str(run), "1")
    assert headers["content-type"] == "application/json"
    logs = await _logs(app_db, tenant, run)
    assert [(log.step_id, log.status, log.attempt) for log in logs] == [
        ("call", "succeeded", 1),
        ("shape", "succeeded", 1),
    ]
    shaped = {
        "status": 200,
        "sent": '{"order":"A-1","total":19.75}',
        "type": "application/json; charset=utf-8",
    }
    assert logs[1].output_sha256 == sha256_hex(canonical_json(shaped))


async def test_a_4xx_fails_the_step_and_is_not_retried(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner, remote: Remote
) -> None:
    tenant = await tenancy.new_tenant("starter")
    steps = _call(f"{remote.url}/status/404?key=secret")
    run, row = await _run_to_the_end(app_db, database, tenancy, runner, tenant, steps)
    failure = (
        f"HTTP_CLIENT_ERROR: GET {remote.url}/status/404 answered 404 Not Found: "
        "answer 404 from the remote"
    )
    assert (row.status, row.attempt, row.error) == ("failed", 1, f"step 'call' failed: {failure}")
    assert [(log.status, log.error) for log in await _logs(app_db, tenant, run)] == [
        ("failed", failure)
    ]
    assert remote.hits["/status/404"] == 1


async def test_a_5xx_is_retried_and_the_run_succeeds_once_the_server_recovers(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner, remote: Remote
) -> None:
    tenant = await tenancy.new_tenant("starter")
    run, row = await _run_to_the_end(
        app_db, database, tenancy, runner, tenant, _call(f"{remote.url}/fail/1/a")
    )
    assert (row.status, row.attempt) == ("succeeded", 2)
    logs = await _logs(app_db, tenant, run)
    assert [(log.status, log.attempt) for log in logs] == [("failed", 1), ("succeeded", 2)]
    assert logs[0].error == (
        f"HTTP_SERVER_ERROR: GET {remote.url}/fail/1/a answered 503 Service Unavailable: "
        "down for maintenance"
    )


async def test_a_5xx_that_persists_fails_the_run_after_its_attempts(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner, remote: Remote
) -> None:
    tenant = await tenancy.new_tenant("starter")
    run, row = await _run_to_the_end(
        app_db, database, tenancy, runner, tenant, _call(f"{remote.url}/status/502")
    )
    assert (row.status, row.attempt) == ("failed", 2)
    assert row.error.startswith("HTTP_SERVER_ERROR: GET ")
    assert row.error.endswith("(after 2 attempts)")
    logs = await _logs(app_db, tenant, run)
    assert [(log.status, log.attempt) for log in logs] == [("failed", 1), ("failed", 2)]
    assert remote.hits["/status/502"] == 2


async def test_a_timeout_is_bounded_by_the_plan_and_retried(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner, remote: Remote
) -> None:
    tenant = await tenancy.new_tenant("starter")
    # The step asks for 30 s; the tenant's steps may take 1 s.
    await tenancy.set_limits(tenant, step_timeout_seconds=1)
    steps = _call(f"{remote.url}/slow/1/b", timeout_seconds=30)
    run, row = await _run_to_the_end(app_db, database, tenancy, runner, tenant, steps)
    assert (row.status, row.attempt) == ("succeeded", 2)
    logs = await _logs(app_db, tenant, run)
    assert [(log.status, log.attempt) for log in logs] == [("failed", 1), ("succeeded", 2)]
    assert logs[0].error == (
        f"HTTP_TIMEOUT: GET {remote.url}/slow/1/b got no complete response within 1 s"
    )


async def test_the_response_is_bounded_by_the_plans_output_limit(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner, remote: Remote
) -> None:
    tenant = await tenancy.new_tenant("starter")
    await tenancy.set_limits(tenant, step_output_bytes=100)
    run, row = await _run_to_the_end(
        app_db, database, tenancy, runner, tenant, _call(f"{remote.url}/bytes/101")
    )
    assert (row.status, row.attempt) == ("failed", 1)
    (log,) = await _logs(app_db, tenant, run)
    assert log.error == "HTTP_RESPONSE_TOO_LARGE: the response body is over the limit of 100 bytes"


async def test_loopback_is_refused_without_the_allowlist(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner, remote: Remote
) -> None:
    tenant = await tenancy.new_tenant("starter")
    port = remote.url.rsplit(":", 1)[1]
    for url, refusal in [
        (f"{remote.url}/echo", "127.0.0.1 is a loopback address"),
        (f"http://localhost:{port}/echo", "localhost resolves to 127.0.0.1, a loopback address"),
    ]:
        run, row = await _run_to_the_end(
            app_db, database, tenancy, runner, tenant, _call(url), allow=AddressPolicy()
        )
        failure = f"HTTP_DESTINATION_REFUSED: {refusal}; AIAS_HTTP_STEP_ALLOW can allow it"
        assert (row.status, row.attempt, row.error) == (
            "failed",
            1,
            f"step 'call' failed: {failure}",
        )
        assert [log.error for log in await _logs(app_db, tenant, run)] == [failure]
    assert remote.hits["/echo"] == 0


async def test_a_redirect_to_a_disallowed_address_is_refused(
    app_db: Database, database: LocalDatabase, tenancy: Tenancy, runner: StepRunner, remote: Remote
) -> None:
    tenant = await tenancy.new_tenant("starter")
    async with Remote(host="127.0.0.2").running() as hidden:
        steps = _call(f"{remote.url}/redirect?to={hidden.url}/echo")
        _run, row = await _run_to_the_end(app_db, database, tenancy, runner, tenant, steps)
        assert hidden.hits["/echo"] == 0
    assert (row.status, row.attempt) == ("failed", 1)
    assert row.error == (
        "step 'call' failed: HTTP_DESTINATION_REFUSED: 127.0.0.2 is a loopback address; "
        "AIAS_HTTP_STEP_ALLOW can allow it"
    )


async def test_the_step_processes_render_the_request_and_read_the_response(
    runner: StepRunner,
) -> None:
    context = StepContext(run={"id": "r-1"}, workflow={"id": "w-1", "version": 2})
    config = {"method": "PUT", "url": "https://x.example/{{ input.id }}", "body": {"json": "@"}}
    call = StepCall("http_request", config, b'{"id": "A-1"}', JSON, context)
    asked = await runner.run(call, StepLimits(timeout=2.0, output_bytes=2**20))
    assert asked.request is not None
    assert (asked.request.method, asked.request.url) == ("PUT", "https://x.example/A-1")
    assert asked.request.body == b'{"id":"A-1"}'
    head = HttpResponse("PUT", "https://x.example/A-1", 201, "Created", (("ETag", '"v1"'),))
    read = StepCall("http_request", config, b'{"ok": true}', "application/json", context, head)
    outcome = await runner.run(read, StepLimits(timeout=2.0, output_bytes=2**20))
    value = {"status": 201, "headers": {"etag": '"v1"'}, "body": {"ok": True}}
    assert (outcome.request, outcome.output_sha256) == (None, sha256_hex(canonical_json(value)))
    assert outcome.message == "PUT https://x.example/A-1 answered 201 Created"
    # A request body over the step's output limit is refused in the step process.
    with pytest.raises(StepFailed, match="STEP_OUTPUT_TOO_LARGE"):
        await runner.run(call, StepLimits(timeout=2.0, output_bytes=8))
