"""Execution over real gRPC and real PostgreSQL: triggering, limits, idempotency, the run queue."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import text

from aias.core.clients import MAX_BATCH_CALLS, internal_channel
from aias.core.context import TENANT_ID
from aias.core.db import Database, SystemPath
from aias.core.localdb import LocalDatabase
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from aias.services.execution import main as execution_main
from aias.services.execution.deliveries import delivery_values
from aias.services.execution.ingest import RunWriter
from aias.services.execution.repository import ClaimedRun, Outcome, QueueRepository, StepLogEntry
from aias.services.execution.service import ExecutionService, WebhookCall
from aias.services.tenancy import main as tenancy_main
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import running

WORKFLOW = pb.CreateWorkflowRequest(
    name="orders",
    steps=[
        pb.Step(id="shape", type="transform"),
    ],
)
WORKFLOW.steps[0].config.update({"expression": "id"})


@dataclass
class Env:
    tenancy: tenancy_grpc.TenancyServiceStub
    execution: pb_grpc.ExecutionServiceStub
    execution_address: str


@pytest.fixture
async def env(database: LocalDatabase) -> AsyncIterator[Env]:
    tenancy_built = await tenancy_main.build_server(
        tenancy_main.TenancySettings(server_settings("tenancy"), database.app_url)
    )
    async with running(tenancy_built) as tenancy_addr:
        execution_built = await execution_main.build_server(
            execution_main.ExecutionSettings(
                server_settings("execution"),
                database.app_url,
                tenancy_addr,
                "http://gateway.test",
                entitlements_ttl=0.0,
                max_attempts=2,
            )
        )
        async with running(execution_built) as execution_addr:
            tenancy_channel = internal_channel(tenancy_addr, INTERNAL_TOKEN)
            execution_channel = internal_channel(execution_addr, INTERNAL_TOKEN)
            yield Env(
                tenancy_grpc.TenancyServiceStub(tenancy_channel),
                pb_grpc.ExecutionServiceStub(execution_channel),
                execution_addr,
            )
            await tenancy_channel.close()
            await execution_channel.close()


def reason(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            info = error_details_pb2.ErrorInfo()
            status.details[0].Unpack(info)
            return info.reason, dict(info.metadata)
    raise AssertionError("no error details")


async def endpoint(env: Env, plan: str = "free") -> tuple[str, str, list[tuple[str, str]]]:
    created = await env.tenancy.CreateTenant(tenancy_pb.CreateTenantRequest(name="t", plan=plan))
    tenant = created.tenant.id
    meta = [(TENANT_ID, tenant)]
    workflow = (await env.execution.CreateWorkflow(WORKFLOW, metadata=meta)).workflow
    made = await env.execution.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(workflow_id=workflow.id, name="e"), metadata=meta
    )
    return tenant, made.secret, meta


def delivery(
    tenant: str, secret: str, body: bytes = b'{"id": 1}', key: str = ""
) -> pb.TriggerWebhookRequest:
    request = pb.TriggerWebhookRequest(tenant_id=tenant, secret=secret, idempotency_key=key)
    request.http_body.data = body
    request.http_body.content_type = "application/json"
    return request


async def test_trigger_commits_a_queued_run(env: Env) -> None:
    tenant, secret, meta = await endpoint(env)
    accepted = await env.execution.TriggerWebhook(delivery(tenant, secret))
    run = (await env.execution.GetRun(pb.GetRunRequest(run_id=accepted.run_id), metadata=meta)).run
    assert accepted.status == pb.RUN_STATUS_QUEUED
    assert run.status == pb.RUN_STATUS_QUEUED
    assert run.workflow_version == 1


async def test_a_bad_row_in_a_group_commit_fails_only_its_own_delivery(
    env: Env, app_db: Database
) -> None:
    tenant, _secret, _meta = await endpoint(env)
    async with app_db.tenant(tenant) as session:
        workflow_id, endpoint_id = (
            await session.execute(text("SELECT workflow_id, id FROM execution.webhook_endpoints"))
        ).one()

    def rows(workflow: uuid.UUID) -> tuple[dict[str, object], dict[str, object]]:
        run_id = uuid.uuid4()
        run: dict[str, object] = {
            "id": run_id,
            "tenant_id": uuid.UUID(tenant),
            "workflow_id": workflow,
            "workflow_version": 1,
            "endpoint_id": endpoint_id,
            "status": "queued",
            "attempt": 0,
            "max_attempts": 3,
            # Any bytes at all, stored as they came.
            "payload": bytes(range(256)),
            "content_type": "application/octet-stream",
            "idempotency_key": None,
            "payload_sha256": hashlib.sha256(bytes(range(256))).digest(),
            "error": "",
            "traceparent": None,
        }
        accepted = delivery_values(uuid.UUID(tenant), endpoint_id, 202, "", "", 2, run_id)
        return run, accepted

    writer = RunWriter(app_db, window=0.05)
    await writer.start()
    failed: list[int] = []
    # The middle run names a workflow that does not exist: its INSERT violates a foreign key.
    batch = [rows(workflow_id), rows(uuid.uuid4()), rows(workflow_id)]
    try:
        results = await asyncio.gather(
            *(
                writer.write(
                    uuid.UUID(tenant), run, accepted, on_failure=functools.partial(failed.append, i)
                )
                for i, (run, accepted) in enumerate(batch)
            ),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], Exception)
    assert failed == [1]
    async with app_db.tenant(tenant) as session:
        written = set((await session.execute(text("SELECT id FROM execution.runs"))).scalars())
        recorded = set(
            (
                await session.execute(text("SELECT run_id FROM execution.webhook_deliveries"))
            ).scalars()
        )
    expected = {batch[0][0]["id"], batch[2][0]["id"]}
    assert written == expected
    async with app_db.tenant(tenant) as session:
        stored = (
            await session.execute(
                text("SELECT payload, payload_sha256, traceparent FROM execution.runs")
            )
        ).all()
    assert {tuple(row) for row in stored} == {
        (bytes(range(256)), hashlib.sha256(bytes(range(256))).digest(), None)
    }
    assert expected <= recorded
    assert batch[1][0]["id"] not in recorded


async def test_a_row_without_every_column_is_refused_before_it_joins_a_batch(
    app_db: Database,
) -> None:
    writer = RunWriter(app_db, window=0.05)
    await writer.start()
    tenant, endpoint = uuid.uuid4(), uuid.uuid4()
    try:
        with pytest.raises(ValueError, match="exactly"):
            await writer.write(
                tenant,
                {"id": uuid.uuid4(), "tenant_id": tenant},
                delivery_values(tenant, endpoint, 202, "", "", 2, None),
                on_failure=lambda: None,
            )
    finally:
        await writer.close()


async def test_body_over_the_plan_limit_is_refused_and_not_queued(env: Env) -> None:
    tenant, secret, meta = await endpoint(env)
    huge = b'"' + b"x" * (256 * 1024) + b'"'
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.execution.TriggerWebhook(delivery(tenant, secret, huge))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(caught.value) == (
        "PAYLOAD_TOO_LARGE",
        {"http_status": "413", "limit": "webhook_payload_bytes", "plan": "free"},
    )
    runs = await env.execution.ListRuns(pb.ListRunsRequest(), metadata=meta)
    assert list(runs.runs) == []


async def test_invalid_json_body_is_refused(env: Env) -> None:
    tenant, secret, _meta = await endpoint(env)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.execution.TriggerWebhook(delivery(tenant, secret, b"{oops"))
    assert reason(caught.value)[0] == "INVALID_PAYLOAD"


async def test_disabled_workflow_answers_409(env: Env, app_db: Database) -> None:
    tenant, secret, _meta = await endpoint(env)
    async with app_db.tenant(tenant) as session:
        await session.execute(text("UPDATE execution.workflows SET enabled = false"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.execution.TriggerWebhook(delivery(tenant, secret))
    assert reason(caught.value) == ("WORKFLOW_DISABLED", {"http_status": "409"})


async def test_concurrent_deliveries_with_one_key_make_one_run(env: Env) -> None:
    tenant, secret, meta = await endpoint(env)
    replies = await asyncio.gather(
        *(env.execution.TriggerWebhook(delivery(tenant, secret, key="k")) for _ in range(8))
    )
    assert len({reply.run_id for reply in replies}) == 1
    runs = await env.execution.ListRuns(pb.ListRunsRequest(), metadata=meta)
    assert len(runs.runs) == 1


async def test_pagination_walks_every_run_once(env: Env) -> None:
    tenant, secret, meta = await endpoint(env)
    created = {
        (await env.execution.TriggerWebhook(delivery(tenant, secret))).run_id for _ in range(5)
    }
    seen: list[str] = []
    token = ""
    while True:
        page = await env.execution.ListRuns(
            pb.ListRunsRequest(page_size=2, page_token=token), metadata=meta
        )
        seen += [run.id for run in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(created)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.execution.ListRuns(pb.ListRunsRequest(page_token="garbage!"), metadata=meta)
    assert reason(caught.value)[0] == "INVALID_PAGE_TOKEN"


async def claim(db: Database, worker: str) -> ClaimedRun | None:
    """The next claimable run, taken under `worker`'s lease (concurrency limits aside), after
    putting expired leases back in the queue as a worker does."""
    async with db.system(SystemPath.RUN_QUEUE) as session:
        queue = QueueRepository(session, worker)
        await queue.reclaim()
        tenants = await queue.tenants_with_work(uuid.UUID(int=0), 1)
        claimed = await queue.start({tenants[0]: 1}, timedelta(seconds=60)) if tenants else []
    return claimed[0] if claimed else None


async def test_claims_skip_locked_rows_and_expired_leases_are_reclaimed(
    env: Env, app_db: Database
) -> None:
    tenant, secret, _meta = await endpoint(env)
    run_id = uuid.UUID((await env.execution.TriggerWebhook(delivery(tenant, secret))).run_id)
    # Drain whatever other tests left in the shared queue, keeping our run.
    claimed_by_a = None
    while claimed_by_a is None or claimed_by_a.id != run_id:
        claimed_by_a = await claim(app_db, "worker-a")
        assert claimed_by_a is not None
    assert claimed_by_a.attempt == 1
    again = await claim(app_db, "worker-b")
    assert again is None or again.id != run_id
    # Worker A dies: its lease runs out, the run goes back to the queue (attempt 1 counted),
    # and worker B takes it over as attempt 2.
    async with app_db.tenant(tenant) as session:
        await session.execute(
            text(
                "UPDATE execution.runs SET lease_expire_time = now() - "
                "interval '1 second' WHERE id = :r"
            ),
            {"r": run_id},
        )
    async with app_db.system(SystemPath.RUN_QUEUE) as session:
        assert await QueueRepository(session, "worker-c").reclaim() >= 1
    async with app_db.tenant(tenant) as session:
        row = (
            await session.execute(
                text("SELECT status, attempt, lease_owner FROM execution.runs WHERE id = :r"),
                {"r": run_id},
            )
        ).one()
    assert tuple(row) == ("queued", 1, None)
    taken = await claim(app_db, "worker-b")
    assert taken is not None
    assert (taken.id, taken.attempt) == (run_id, 2)
    async with app_db.system(SystemPath.RUN_QUEUE) as session:
        late = QueueRepository(session, "worker-a")
        assert await late.renew([(run_id, 1)], timedelta(seconds=60)) == {}
        assert await late.finish([Outcome(run_id, 1, "succeeded")]) == set()
        # Worker B shuts down: the run goes back, its interrupted attempt not counted.
        released = Outcome(run_id, 2, "queued", counts=False)
        assert await QueueRepository(session, "worker-b").requeue([released]) == {run_id}
    async with app_db.tenant(tenant) as session:
        status, attempt = (
            await session.execute(
                text("SELECT status, attempt FROM execution.runs WHERE id = :r"), {"r": run_id}
            )
        ).one()
    assert (status, attempt) == ("queued", 1)


async def test_admission_gives_the_plans_limit_and_follows_changes(
    env: Env, app_db: Database
) -> None:
    tenant, secret, _meta = await endpoint(env)
    admitted = await env.execution.AdmitWebhook(
        pb.AdmitWebhookRequest(tenant_id=tenant, secret=secret)
    )
    assert admitted.max_body_bytes == 256 * 1024  # the free plan
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.execution.AdmitWebhook(pb.AdmitWebhookRequest(tenant_id=tenant, secret="nope"))
    assert reason(caught.value)[0] == "WEBHOOK_ENDPOINT_NOT_FOUND"
    # The endpoint is cached now; disabling it reaches the cache through the change notice.
    await env.execution.TriggerWebhook(delivery(tenant, secret))
    async with app_db.tenant(tenant) as session:
        await session.execute(text("UPDATE execution.webhook_endpoints SET enabled = false"))
    refused = None
    for _ in range(40):
        try:
            await env.execution.AdmitWebhook(
                pb.AdmitWebhookRequest(tenant_id=tenant, secret=secret)
            )
        except grpc.aio.AioRpcError as error:
            refused = error
            break
        await asyncio.sleep(0.05)
    assert refused is not None, "a disabled endpoint was still admitted after 2 s"
    assert reason(refused)[0] == "WEBHOOK_ENDPOINT_NOT_FOUND"


def http_code(metadata: grpc.aio.Metadata | None) -> str:
    """The HTTP status the gateway would answer with, as the servicer chose it."""
    return str(dict(metadata or ())["x-http-code"])


async def test_cancelling_a_queued_run_cancels_it_at_once(env: Env) -> None:
    tenant, secret, meta = await endpoint(env)
    run_id = (await env.execution.TriggerWebhook(delivery(tenant, secret))).run_id

    call = env.execution.CancelRun(pb.CancelRunRequest(run_id=run_id), metadata=meta)
    cancelled = (await call).run

    assert http_code(await call.initial_metadata()) == "200"
    assert (cancelled.status, cancelled.cancel_requested) == (pb.RUN_STATUS_CANCELLED, False)
    assert cancelled.HasField("end_time")
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await env.execution.CancelRun(pb.CancelRunRequest(run_id=run_id), metadata=meta)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(again.value) == ("RUN_FINISHED", {"http_status": "409"})


async def test_cancelling_a_running_run_asks_its_worker_to_stop(env: Env, app_db: Database) -> None:
    tenant, secret, meta = await endpoint(env)
    run_id = uuid.UUID((await env.execution.TriggerWebhook(delivery(tenant, secret))).run_id)
    while (claimed := await claim(app_db, "worker-a")) is not None and claimed.id != run_id:
        pass  # other tests' leftovers
    assert claimed is not None

    call = env.execution.CancelRun(pb.CancelRunRequest(run_id=str(run_id)), metadata=meta)
    run = (await call).run

    # The worker holding it stops at the next step boundary; see test_worker.
    assert http_code(await call.initial_metadata()) == "202"
    assert (run.status, run.cancel_requested) == (pb.RUN_STATUS_RUNNING, True)


async def test_retry_queues_a_linked_run_with_the_same_input_and_version(
    env: Env, app_db: Database
) -> None:
    tenant, secret, meta = await endpoint(env)
    body = b'{"id": "retry-me"}'
    original = (await env.execution.TriggerWebhook(delivery(tenant, secret, body))).run_id
    with pytest.raises(grpc.aio.AioRpcError) as unfinished:
        await env.execution.RetryRun(pb.RetryRunRequest(run_id=original), metadata=meta)
    assert reason(unfinished.value) == ("RUN_NOT_FINISHED", {"http_status": "409"})
    await env.execution.CancelRun(pb.CancelRunRequest(run_id=original), metadata=meta)

    call = env.execution.RetryRun(pb.RetryRunRequest(run_id=original), metadata=meta)
    retried = (await call).run

    assert http_code(await call.initial_metadata()) == "202"
    assert retried.id != original
    assert (retried.status, retried.retry_of, retried.workflow_version) == (
        pb.RUN_STATUS_QUEUED,
        original,
        1,
    )
    async with app_db.tenant(tenant) as session:
        rows = await session.execute(
            text("SELECT id::text, payload FROM execution.runs WHERE id IN (:a, :b)"),
            {"a": original, "b": retried.id},
        )
        payloads = {row.id: row.payload for row in rows}
    assert payloads == {original: body, retried.id: body}


async def test_a_retry_counts_against_the_monthly_runs(env: Env) -> None:
    tenant, secret, meta = await endpoint(env)
    await env.tenancy.UpdateTenant(
        tenancy_pb.UpdateTenantRequest(tenant_id=tenant, limit_overrides={"runs_per_month": 2})
    )
    first = (await env.execution.TriggerWebhook(delivery(tenant, secret))).run_id
    await env.execution.CancelRun(pb.CancelRunRequest(run_id=first), metadata=meta)
    await env.execution.RetryRun(pb.RetryRunRequest(run_id=first), metadata=meta)

    with pytest.raises(grpc.aio.AioRpcError) as third:
        await env.execution.RetryRun(pb.RetryRunRequest(run_id=first), metadata=meta)

    assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(third.value)[0] == "QUOTA_EXCEEDED"


async def test_runs_list_by_workflow_status_and_creation_time(env: Env) -> None:
    tenant, secret, meta = await endpoint(env)
    other_workflow = (await env.execution.CreateWorkflow(WORKFLOW, metadata=meta)).workflow.id
    runs = [(await env.execution.TriggerWebhook(delivery(tenant, secret))).run_id for _ in range(4)]
    await env.execution.CancelRun(pb.CancelRunRequest(run_id=runs[1]), metadata=meta)
    await env.execution.CancelRun(pb.CancelRunRequest(run_id=runs[2]), metadata=meta)
    created = {
        run.id: run.create_time
        for run in (await env.execution.ListRuns(pb.ListRunsRequest(), metadata=meta)).runs
    }

    async def listed(**filters: object) -> list[str]:
        request = pb.ListRunsRequest(**filters)  # type: ignore[arg-type]
        return [run.id for run in (await env.execution.ListRuns(request, metadata=meta)).runs]

    assert await listed(status=[pb.RUN_STATUS_CANCELLED]) == [runs[2], runs[1]]
    assert await listed(status=[pb.RUN_STATUS_QUEUED, pb.RUN_STATUS_CANCELLED]) == runs[::-1]
    assert await listed(workflow_id=other_workflow) == []
    assert await listed(
        create_time_after=created[runs[0]], create_time_before=created[runs[3]]
    ) == [runs[2], runs[1]]
    # A page token only continues the list it came from.
    page = await env.execution.ListRuns(
        pb.ListRunsRequest(page_size=1, status=[pb.RUN_STATUS_CANCELLED]), metadata=meta
    )
    assert [run.id for run in page.runs] == [runs[2]]
    with pytest.raises(grpc.aio.AioRpcError) as other_filter:
        await env.execution.ListRuns(
            pb.ListRunsRequest(page_size=1, page_token=page.next_page_token), metadata=meta
        )
    assert reason(other_filter.value)[0] == "INVALID_PAGE_TOKEN"
    with pytest.raises(grpc.aio.AioRpcError) as backwards:
        await listed(create_time_after=created[runs[3]], create_time_before=created[runs[0]])
    assert reason(backwards.value)[0] == "INVALID_TIME_RANGE"


async def test_watching_a_run_follows_it_until_it_ends(env: Env, app_db: Database) -> None:
    tenant, secret, meta = await endpoint(env)
    run_id = uuid.UUID((await env.execution.TriggerWebhook(delivery(tenant, secret))).run_id)
    stream = env.execution.WatchRun(pb.WatchRunRequest(run_id=str(run_id)), metadata=meta)
    events = aiter(stream)
    assert (await anext(events)).run.status == pb.RUN_STATUS_QUEUED

    # What a worker does, step by step: each change reaches the stream as it commits.
    while (claimed := await claim(app_db, "worker-w")) is not None and claimed.id != run_id:
        pass
    assert (await anext(events)).run.status == pb.RUN_STATUS_RUNNING
    now = datetime.now(UTC)
    entry = StepLogEntry(
        run_id, 1, 0, "shape", "transform", "succeeded", now, now, 0, "", 3, "", ""
    )
    async with app_db.system(SystemPath.RUN_QUEUE) as session:
        await QueueRepository(session, "worker-w").add_logs([entry])
    assert (await anext(events)).step.step_id == "shape"
    async with app_db.system(SystemPath.RUN_QUEUE) as session:
        await QueueRepository(session, "worker-w").finish([Outcome(run_id, 1, "succeeded")])
    assert (await anext(events)).run.status == pb.RUN_STATUS_SUCCEEDED
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    # A finished run's watch gives the run and its log, then ends.
    replay = env.execution.WatchRun(pb.WatchRunRequest(run_id=str(run_id)), metadata=meta)
    assert [event.WhichOneof("event") async for event in replay] == ["run", "step"]


async def test_watching_a_missing_run_is_not_found(env: Env) -> None:
    _tenant, _secret, meta = await endpoint(env)
    missing = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _event in env.execution.WatchRun(
            pb.WatchRunRequest(run_id=missing), metadata=meta
        ):
            pass
    assert reason(caught.value)[0] == "RUN_NOT_FOUND"


def _batched(request: pb.TriggerWebhookRequest, request_id: str) -> pb.TriggerWebhookCall:
    return pb.TriggerWebhookCall(request=request, metadata={"x-request-id": request_id})


async def test_a_batch_answers_each_delivery_as_its_own_call_would(env: Env) -> None:
    tenant, secret, meta = await endpoint(env)
    huge = b'"' + b"x" * (256 * 1024) + b'"'
    deliveries = [
        delivery(tenant, secret, b'{"n": 1}'),
        delivery(tenant, "y" * 43),
        delivery(tenant, secret, b"{not json"),
        delivery(tenant, secret, huge),
        delivery(tenant, secret, b'{"n": 2}', key="k-1"),
        delivery(tenant, secret, b'{"n": 2}', key="k-1"),
        delivery(tenant, secret, b'{"n": 3}', key="k-1"),
    ]
    # The calls of a batch are served at once, so deliveries with one key race for it as
    # concurrent requests do; the key's reuse with another body comes in a later batch.
    first, later = deliveries[:6], deliveries[6:]
    outcomes: list[pb.TriggerWebhookOutcome] = []
    for n, part in ((0, first), (len(first), later)):
        batch = pb.TriggerWebhooksRequest(
            calls=[_batched(request, f"req-{n + i}") for i, request in enumerate(part)]
        )
        outcomes += (await env.execution.TriggerWebhooks(batch)).outcomes

    assert [outcome.WhichOneof("outcome") for outcome in outcomes] == [
        "response",
        "error",
        "error",
        "error",
        "response",
        "response",
        "error",
    ]
    # A repeated key with the same body is its first run.
    assert outcomes[4].response.run_id == outcomes[5].response.run_id
    runs = await env.execution.ListRuns(pb.ListRunsRequest(), metadata=meta)
    assert sorted(run.id for run in runs.runs) == sorted(
        {outcomes[0].response.run_id, outcomes[4].response.run_id}
    )
    # Each error is the status its delivery gets alone: code, message and every detail.
    for n in (1, 2, 3, 6):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.execution.TriggerWebhook(deliveries[n])
        alone = dict(caught.value.trailing_metadata() or ())["grpc-status-details-bin"]
        assert outcomes[n].error == status_pb2.Status.FromString(alone), n
    codes = [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT]
    codes += [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION]
    assert [outcomes[n].error.code for n in (1, 2, 3, 6)] == [code.value[0] for code in codes]


async def test_a_batch_takes_the_internal_credential_and_a_bounded_number_of_calls(
    env: Env,
) -> None:
    tenant, secret, _meta = await endpoint(env)
    one = pb.TriggerWebhooksRequest(calls=[_batched(delivery(tenant, secret), "r")])
    async with grpc.aio.insecure_channel(env.execution_address) as bare:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ExecutionServiceStub(bare).TriggerWebhooks(one)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value)[0] == "MISSING_INTERNAL_CREDENTIAL"

    too_many = pb.TriggerWebhooksRequest(calls=[one.calls[0]] * (MAX_BATCH_CALLS + 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.execution.TriggerWebhooks(too_many)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value)[0] == "BATCH_TOO_LARGE"
    # An empty batch is answered with no outcomes.
    assert list((await env.execution.TriggerWebhooks(pb.TriggerWebhooksRequest())).outcomes) == []


async def test_a_delivery_that_fails_unexpectedly_fails_alone_in_its_batch(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, secret, _meta = await endpoint(env)
    trigger = ExecutionService.trigger

    async def failing(self: ExecutionService, call: WebhookCall) -> Any:
        if call.body == b'{"fail": true}':
            raise RuntimeError("a bug")
        return await trigger(self, call)

    monkeypatch.setattr(ExecutionService, "trigger", failing)
    bodies = [b'{"ok": 1}', b'{"fail": true}', b'{"ok": 2}']
    batch = pb.TriggerWebhooksRequest(
        calls=[_batched(delivery(tenant, secret, body), f"r{n}") for n, body in enumerate(bodies)]
    )

    outcomes = (await env.execution.TriggerWebhooks(batch)).outcomes

    assert [outcome.WhichOneof("outcome") for outcome in outcomes] == [
        "response",
        "error",
        "response",
    ]
    assert outcomes[1].error.code == grpc.StatusCode.INTERNAL.value[0]
    # What a client sees names no exception, as for a unary call.
    assert "a bug" not in outcomes[1].error.message
