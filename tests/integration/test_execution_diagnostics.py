"""What the dashboard reads from execution: the integrations catalog and a tenant's run stats."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, update

from aias.core.clients import internal_channel
from aias.core.context import TENANT_ID
from aias.core.db import Database
from aias.core.entitlements import PLANS, Limits, TenantEntitlements
from aias.core.localdb import LocalDatabase
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from aias.services.execution import main as execution_main
from aias.services.execution.metrics import UNKNOWN_PLAN, QueueSampler, RunMetrics
from aias.services.execution.models import RunRow, StepLogRow
from aias.services.execution.steps import STEP_TYPES
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import Tenancy, running


@pytest.fixture(scope="module")
async def execution(
    database: LocalDatabase, tenancy: Tenancy
) -> AsyncIterator[pb_grpc.ExecutionServiceStub]:
    built = await execution_main.build_server(
        execution_main.ExecutionSettings(
            server_settings("execution"),
            database.app_url,
            tenancy.address,
            "http://gateway.test",
            entitlements_ttl=0.0,
            max_attempts=1,
        )
    )
    async with running(built) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        yield pb_grpc.ExecutionServiceStub(channel)
        await channel.close()


async def test_the_catalog_lists_every_step_type_available_ones_first(
    execution: pb_grpc.ExecutionServiceStub,
) -> None:
    reply = await execution.ListIntegrations(
        pb.ListIntegrationsRequest(), metadata=[("x-aias-role", "member")]
    )

    assert {i.type for i in reply.integrations} == set(STEP_TYPES)
    statuses = [i.status for i in reply.integrations]
    assert statuses == sorted(statuses)  # AVAILABLE (1) before COMING_SOON (2)
    by_type = {i.type: i for i in reply.integrations}
    assert by_type["transform"].status == pb.INTEGRATION_STATUS_AVAILABLE
    assert (by_type["slack"].title, by_type["slack"].status) == (
        "Slack message",
        pb.INTEGRATION_STATUS_COMING_SOON,
    )
    assert all(i.description for i in reply.integrations)


async def _queue_runs(
    execution: pb_grpc.ExecutionServiceStub, tenancy: Tenancy, count: int
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A new tenant with `count` queued runs of a one-step workflow (no worker runs them)."""
    tenant = await tenancy.new_tenant()
    meta = [(TENANT_ID, str(tenant))]
    workflow = pb.CreateWorkflowRequest(
        name="orders", steps=[pb.Step(id="check", type="transform")]
    )
    workflow.steps[0].config.update({"expression": "id"})
    created = (await execution.CreateWorkflow(workflow, metadata=meta)).workflow
    endpoint = await execution.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(workflow_id=created.id, name="e"), metadata=meta
    )
    runs = []
    for _ in range(count):
        request = pb.TriggerWebhookRequest(tenant_id=str(tenant), secret=endpoint.secret)
        request.http_body.data = b'{"id": 1}'
        runs.append(uuid.UUID((await execution.TriggerWebhook(request)).run_id))
    return tenant, runs


def _failed_step(tenant: uuid.UUID, run: uuid.UUID, attempt: int, error: str) -> StepLogRow:
    now = datetime.now(UTC)
    return StepLogRow(
        tenant_id=tenant,
        run_id=run,
        step_index=0,
        step_id="check",
        type="transform",
        status="failed",
        attempt=attempt,
        start_time=now,
        end_time=now,
        duration_ms=1,
        message="",
        output_bytes=0,
        output_sha256="",
        error=error,
    )


async def test_run_stats_count_by_window_name_the_failed_step_and_measure_the_queue(
    execution: pb_grpc.ExecutionServiceStub, tenancy: Tenancy, app_db: Database
) -> None:
    tenant, runs = await _queue_runs(execution, tenancy, 6)
    done, failed, failed_earlier, failed_last_week, due, backing_off = runs
    other, other_runs = await _queue_runs(execution, tenancy, 1)
    now = func.now()
    async with app_db.tenant(tenant) as session:
        for run, status, created, available in (
            (done, "succeeded", now, now),
            (failed, "failed", now, now),
            (failed_earlier, "failed", now - timedelta(hours=2), now),
            (failed_last_week, "failed", now - timedelta(days=3), now),
            (due, "queued", now, now - timedelta(minutes=5)),
            (backing_off, "queued", now, now + timedelta(hours=1)),
        ):
            await session.execute(
                update(RunRow)
                .where(RunRow.id == run)
                .values(status=status, create_time=created, available_time=available)
            )
        await session.execute(
            update(RunRow).where(RunRow.id == failed_earlier).values(error="no step ran")
        )
        session.add_all(
            [
                _failed_step(tenant, failed, 1, "first attempt"),
                _failed_step(tenant, failed, 2, "input does not match the schema"),
            ]
        )
    async with app_db.tenant(other) as session:
        await session.execute(
            update(RunRow).where(RunRow.id == other_runs[0]).values(status="failed")
        )

    stats = await execution.GetRunStats(
        pb.GetRunStatsRequest(),
        metadata=[(TENANT_ID, str(tenant)), ("x-aias-role", "admin")],
    )

    def counts(rows: Iterable[pb.RunStatusCount]) -> dict[str, int]:
        return {pb.RunStatus.Name(row.status): row.count for row in rows}

    assert counts(stats.last_hour) == {
        "RUN_STATUS_QUEUED": 2,
        "RUN_STATUS_RUNNING": 0,
        "RUN_STATUS_SUCCEEDED": 1,
        "RUN_STATUS_FAILED": 1,
        "RUN_STATUS_SKIPPED": 0,
        "RUN_STATUS_CANCELLED": 0,
    }
    assert counts(stats.last_day)["RUN_STATUS_FAILED"] == 2
    assert sum(counts(stats.last_day).values()) == 5
    assert [(f.run.id, f.step_id, f.step_type, f.error) for f in stats.latest_failures] == [
        (str(failed), "check", "transform", "input does not match the schema"),
        (str(failed_earlier), "", "", "no step ran"),
        (str(failed_last_week), "", "", ""),
    ]
    assert stats.queued_runs == 2
    waited = stats.read_time.ToDatetime() - stats.oldest_queued_time.ToDatetime()
    assert timedelta(minutes=5) <= waited < timedelta(minutes=6)

    only_one = await execution.GetRunStats(
        pb.GetRunStatsRequest(failure_count=1),
        metadata=[(TENANT_ID, str(tenant)), ("x-aias-role", "owner")],
    )
    assert [f.run.id for f in only_one.latest_failures] == [str(failed)]


async def test_run_stats_are_for_admins_and_check_their_input(
    execution: pb_grpc.ExecutionServiceStub, tenancy: Tenancy
) -> None:
    tenant = str(await tenancy.new_tenant())
    with pytest.raises(grpc.aio.AioRpcError) as member:
        await execution.GetRunStats(
            pb.GetRunStatsRequest(), metadata=[(TENANT_ID, tenant), ("x-aias-role", "member")]
        )
    assert member.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await execution.GetRunStats(
            pb.GetRunStatsRequest(failure_count=51),
            metadata=[(TENANT_ID, tenant), ("x-aias-role", "admin")],
        )
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    empty = await execution.GetRunStats(
        pb.GetRunStatsRequest(), metadata=[(TENANT_ID, tenant), ("x-aias-role", "admin")]
    )
    assert (empty.queued_runs, len(empty.latest_failures)) == (0, 0)
    assert not empty.HasField("oldest_queued_time")
    assert {row.count for row in empty.last_day} == {0}


async def test_the_queue_sampler_measures_every_tenants_queue(
    execution: pb_grpc.ExecutionServiceStub, tenancy: Tenancy, app_db: Database
) -> None:
    # The suite's database is shared: only what this test adds is compared.
    registry = CollectorRegistry()
    sampler = QueueSampler(app_db, RunMetrics(registry))
    await sampler.sample()
    depth_before = registry.get_sample_value("aias_run_queue_depth")
    assert depth_before is not None

    first, (waiting, _due) = await _queue_runs(execution, tenancy, 2)
    await _queue_runs(execution, tenancy, 1)
    async with app_db.tenant(first) as session:
        await session.execute(
            update(RunRow)
            .where(RunRow.id == waiting)
            .values(available_time=func.now() - timedelta(minutes=40))
        )
    await sampler.sample()

    assert registry.get_sample_value("aias_run_queue_depth") == depth_before + 3
    oldest = registry.get_sample_value("aias_run_queue_oldest_age_seconds")
    assert oldest is not None
    assert oldest >= 40 * 60


async def test_the_queue_sampler_sorts_the_queue_by_the_tenants_plans(
    execution: pb_grpc.ExecutionServiceStub, tenancy: Tenancy, app_db: Database
) -> None:
    pro, (waiting, _due) = await _queue_runs(execution, tenancy, 2)
    known = {pro: TenantEntitlements(pro, "pro", True, Limits())}
    registry = CollectorRegistry()
    sampler = QueueSampler(app_db, RunMetrics(registry), known.get)

    def sampled(name: str, plan: str) -> float:
        value = registry.get_sample_value(name, {"plan": plan})
        assert value is not None, (name, plan)
        return value

    await sampler.sample()
    unknown_before = sampled("aias_run_queue_depth_by_plan", UNKNOWN_PLAN)
    assert sampled("aias_run_queue_depth_by_plan", "pro") == 2
    # Plans without queued runs read 0, not a value left from an earlier sample.
    assert sampled("aias_run_queue_depth_by_plan", "enterprise") == 0

    # A tenant whose limits the worker has not fetched counts as unknown.
    await _queue_runs(execution, tenancy, 1)
    async with app_db.tenant(pro) as session:
        await session.execute(
            update(RunRow)
            .where(RunRow.id == waiting)
            .values(available_time=func.now() - timedelta(minutes=40))
        )
    await sampler.sample()
    assert sampled("aias_run_queue_depth_by_plan", UNKNOWN_PLAN) == unknown_before + 1
    assert sampled("aias_run_queue_oldest_age_by_plan_seconds", "pro") >= 40 * 60
    assert registry.get_sample_value("aias_run_queue_depth") == sum(
        sampled("aias_run_queue_depth_by_plan", plan) for plan in (*PLANS, UNKNOWN_PLAN)
    )
