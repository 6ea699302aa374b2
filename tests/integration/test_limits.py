"""Every plan limit at its boundary, over real gRPC: execution enforcing what tenancy grants."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aias.core.clients import internal_channel
from aias.core.entitlements import EntitlementsCache
from aias.core.localdb import LocalDatabase
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from aias.services.execution import main as execution_main
from aias.services.execution.quota import DEFAULT_BLOCK
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import Tenancy, running


@dataclass
class Suite:
    tenancy: Tenancy
    execution: pb_grpc.ExecutionServiceStub


@pytest.fixture(scope="module")
async def suite(database: LocalDatabase, tenancy: Tenancy) -> AsyncIterator[Suite]:
    """Execution with a long entitlements TTL: only tenancy's push can make changes show fast."""
    built = await execution_main.build_server(
        execution_main.ExecutionSettings(
            server_settings("execution"),
            database.app_url,
            tenancy.address,
            "http://gateway.test",
            entitlements_ttl=300.0,
            max_attempts=2,
        )
    )
    async with running(built) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        yield Suite(tenancy, pb_grpc.ExecutionServiceStub(channel))
        await channel.close()


def acting(tenant: uuid.UUID, role: str = "admin") -> tuple[tuple[str, str], ...]:
    return (("x-aias-tenant-id", str(tenant)), ("x-aias-role", role))


def details(error: grpc.aio.AioRpcError) -> tuple[str, str, dict[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.reason, status.message, dict(info.metadata)


async def outcomes(calls: list[Awaitable[Any]]) -> tuple[list[Any], list[grpc.aio.AioRpcError]]:
    """Runs the calls at once; returns the successes and the failures."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    others = [r for r in results if isinstance(r, BaseException) and r not in failures]
    assert others == []
    return [r for r in results if not isinstance(r, BaseException)], failures


def workflow(name: str = "w", step_type: str = "transform") -> pb.CreateWorkflowRequest:
    request = pb.CreateWorkflowRequest(name=name, steps=[pb.Step(id="s", type=step_type)])
    key = "condition" if step_type == "filter" else "expression"
    request.steps[0].config.update({key: "id"})
    return request


async def new_endpoint(suite: Suite, tenant: uuid.UUID) -> str:
    created = await suite.execution.CreateWorkflow(workflow(), metadata=acting(tenant))
    made = await suite.execution.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(workflow_id=created.workflow.id, name="e"),
        metadata=acting(tenant),
    )
    return str(made.secret)


def delivery(
    tenant: uuid.UUID, secret: str, body: bytes = b'{"id": 1}'
) -> pb.TriggerWebhookRequest:
    request = pb.TriggerWebhookRequest(tenant_id=str(tenant), secret=secret)
    request.http_body.data = body
    request.http_body.content_type = "application/json"
    return request


async def enterprise(suite: Suite, **limits: int) -> uuid.UUID:
    tenant = await suite.tenancy.new_tenant("enterprise")
    if limits:
        await suite.tenancy.set_limits(tenant, **limits)
    return tenant


async def test_webhook_rate_admits_the_burst_and_refuses_the_next(suite: Suite) -> None:
    tenant = await enterprise(suite, webhook_requests_per_second=1, webhook_burst=5)
    secret = await new_endpoint(suite, tenant)
    accepted, refused = await outcomes(
        [suite.execution.TriggerWebhook(delivery(tenant, secret)) for _ in range(8)]
    )
    assert (len(accepted), len(refused)) == (5, 3)
    reason, message, metadata = details(refused[0])
    assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason == "QUOTA_EXCEEDED"
    assert "webhook_requests_per_second=1" in message
    assert 1 <= int(metadata["retry_after_seconds"]) <= 5
    # Another endpoint of the same tenant has its own allowance.
    other = await new_endpoint(suite, tenant)
    await suite.execution.TriggerWebhook(delivery(tenant, other))


async def test_runs_per_month_admits_exactly_n_of_many_concurrent(suite: Suite) -> None:
    tenant = await enterprise(suite, runs_per_month=7)
    secret = await new_endpoint(suite, tenant)
    accepted, refused = await outcomes(
        [suite.execution.TriggerWebhook(delivery(tenant, secret)) for _ in range(20)]
    )
    assert (len(accepted), len(refused)) == (7, 13)
    reason, message, metadata = details(refused[0])
    assert (reason, metadata["limit"], metadata["limit_value"]) == (
        "QUOTA_EXCEEDED",
        "runs_per_month",
        "7",
    )
    assert "runs_per_month=7 on the enterprise plan" in message
    assert int(metadata["retry_after_seconds"]) > 0, "waiting for the next period helps"
    runs = await suite.execution.ListRuns(pb.ListRunsRequest(), metadata=acting(tenant))
    assert len(runs.runs) == 7
    me = await suite.tenancy.stub.GetCurrentTenant(
        tenancy_pb.GetCurrentTenantRequest(), metadata=acting(tenant)
    )
    assert me.usage.runs == 7


async def test_a_refused_or_repeated_delivery_uses_no_run(suite: Suite) -> None:
    tenant = await enterprise(suite, runs_per_month=2)
    secret = await new_endpoint(suite, tenant)
    with pytest.raises(grpc.aio.AioRpcError):
        await suite.execution.TriggerWebhook(delivery(tenant, secret, b"{not json"))
    repeat = delivery(tenant, secret)
    repeat.idempotency_key = "once"
    first = await suite.execution.TriggerWebhook(repeat)
    again = await suite.execution.TriggerWebhook(repeat)
    assert first.run_id == again.run_id
    await suite.execution.TriggerWebhook(delivery(tenant, secret))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.execution.TriggerWebhook(delivery(tenant, secret))
    assert details(caught.value)[0] == "QUOTA_EXCEEDED"


@pytest.mark.parametrize("kind", ["workflows", "webhook_endpoints"])
async def test_counted_resources_stop_at_the_limit_under_concurrency(
    suite: Suite, kind: str
) -> None:
    tenant = await enterprise(suite, **{kind: 3})
    base = await suite.execution.CreateWorkflow(workflow(), metadata=acting(tenant))
    if kind == "workflows":
        calls = [
            suite.execution.CreateWorkflow(workflow(f"w{i}"), metadata=acting(tenant))
            for i in range(6)
        ]
        expected_ok = 2  # one already exists
    else:
        calls = [
            suite.execution.CreateWebhookEndpoint(
                pb.CreateWebhookEndpointRequest(workflow_id=base.workflow.id, name=f"e{i}"),
                metadata=acting(tenant),
            )
            for i in range(6)
        ]
        expected_ok = 3
    accepted, refused = await outcomes(calls)
    assert (len(accepted), len(refused)) == (expected_ok, 6 - expected_ok)
    reason, message, metadata = details(refused[0])
    assert refused[0].code() == grpc.StatusCode.PERMISSION_DENIED
    assert (reason, metadata["limit"], metadata["plan"]) == ("PLAN_LIMIT", kind, "enterprise")
    assert f"{kind}=3 on the enterprise plan" in message


async def test_step_types_outside_the_plan_are_refused(suite: Suite) -> None:
    tenant = await suite.tenancy.new_tenant("free")
    await suite.tenancy.stub.UpdateTenant(
        tenancy_pb.UpdateTenantRequest(
            tenant_id=str(tenant),
            allowed_step_types_override=tenancy_pb.StepTypes(types=["transform"]),
        )
    )
    await suite.execution.CreateWorkflow(workflow(), metadata=acting(tenant))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.execution.CreateWorkflow(workflow(step_type="filter"), metadata=acting(tenant))
    reason, message, _ = details(caught.value)
    assert reason == "PLAN_LIMIT"
    assert "steps[0].type 'filter'" in message


async def test_a_downgrade_keeps_what_exists_and_refuses_more(suite: Suite) -> None:
    tenant = await enterprise(suite)
    secrets = [await new_endpoint(suite, tenant) for _ in range(3)]
    await suite.tenancy.set_limits(tenant, workflows=1, webhook_endpoints=1)
    # Until the change arrives (within moments) a creation may still pass; count those.
    _took, created = await _eventually_refused(
        lambda: suite.execution.CreateWorkflow(workflow(), metadata=acting(tenant)), "PLAN_LIMIT"
    )
    listed = await suite.execution.ListWorkflows(pb.ListWorkflowsRequest(), metadata=acting(tenant))
    assert len(listed.workflows) == 3 + created
    for secret in secrets:
        await suite.execution.TriggerWebhook(delivery(tenant, secret))


async def _eventually_refused(
    call: Any, expected_reason: str, within: float = 2.0
) -> tuple[float, int]:
    """Repeats `call` until it fails with `expected_reason`: how long that took, and how many
    calls succeeded before."""
    started, succeeded = time.monotonic(), 0
    while True:
        try:
            await call()
            succeeded += 1
        except grpc.aio.AioRpcError as error:
            if details(error)[0] == expected_reason:
                return time.monotonic() - started, succeeded
            raise
        assert time.monotonic() - started < within, f"still accepted after {within}s"
        await asyncio.sleep(0.05)


async def test_plan_changes_reach_execution_within_two_seconds(suite: Suite) -> None:
    tenant = await suite.tenancy.new_tenant("pro")
    secret = await new_endpoint(suite, tenant)
    body = b'{"pad": "' + b"x" * 300_000 + b'"}'
    await suite.execution.TriggerWebhook(delivery(tenant, secret, body))  # cached: pro, 5 MiB
    await suite.tenancy.stub.UpdateTenant(
        tenancy_pb.UpdateTenantRequest(tenant_id=str(tenant), plan="free")
    )
    took, _ = await _eventually_refused(
        lambda: suite.execution.TriggerWebhook(delivery(tenant, secret, body)), "PAYLOAD_TOO_LARGE"
    )
    assert took < 2.0
    await suite.tenancy.stub.UpdateTenant(
        tenancy_pb.UpdateTenantRequest(
            tenant_id=str(tenant), status=tenancy_pb.TENANT_STATUS_SUSPENDED
        )
    )
    await _eventually_refused(
        lambda: suite.execution.TriggerWebhook(delivery(tenant, secret)), "TENANT_SUSPENDED"
    )


async def test_concurrent_misses_for_one_tenant_make_one_lookup(suite: Suite) -> None:
    tenant = await suite.tenancy.new_tenant()
    channel = internal_channel(suite.tenancy.address, INTERNAL_TOKEN)
    entitlements = EntitlementsCache(channel)
    before = suite.tenancy.handled("GetEntitlements")
    found = await asyncio.gather(*(entitlements.get(tenant) for _ in range(20)))
    assert {f.plan for f in found} == {"free"}
    assert suite.tenancy.handled("GetEntitlements") - before == 1
    await channel.close()


async def test_unused_reserved_runs_are_given_back_at_shutdown(
    suite: Suite, database: LocalDatabase
) -> None:
    tenant = await enterprise(suite, runs_per_month=1000)
    built = await execution_main.build_server(
        execution_main.ExecutionSettings(
            server_settings("execution"),
            database.app_url,
            suite.tenancy.address,
            "http://gateway.test",
            entitlements_ttl=300.0,
            max_attempts=2,
        )
    )
    async with running(built) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        stub = pb_grpc.ExecutionServiceStub(channel)
        created = await stub.CreateWorkflow(workflow(), metadata=acting(tenant))
        made = await stub.CreateWebhookEndpoint(
            pb.CreateWebhookEndpointRequest(workflow_id=created.workflow.id, name="e"),
            metadata=acting(tenant),
        )
        await stub.TriggerWebhook(delivery(tenant, made.secret))
        assert await _runs_used(suite, tenant) == DEFAULT_BLOCK, "a block is held while serving"
        await channel.close()
    assert await _runs_used(suite, tenant) == 1


async def _runs_used(suite: Suite, tenant: uuid.UUID) -> int:
    me = await suite.tenancy.stub.GetCurrentTenant(
        tenancy_pb.GetCurrentTenantRequest(), metadata=acting(tenant)
    )
    return int(me.usage.runs)


def _redis_url() -> str:
    """The local Redis, when one answers; the shared-count test needs a real one."""
    url = os.environ.get("AIAS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    host, _, port = url.split("://", 1)[1].partition(":")
    try:
        with socket.create_connection((host, int(port or 6379)), timeout=0.5):
            return url
    except OSError:
        pytest.skip(f"no Redis answers at {url}; set AIAS_TEST_REDIS_URL to run this test")


async def test_execution_processes_share_one_rate_count_through_redis(
    suite: Suite, database: LocalDatabase
) -> None:
    redis_url = _redis_url()
    tenant = await enterprise(suite, webhook_requests_per_second=1, webhook_burst=6)
    stubs = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            built = await execution_main.build_server(
                execution_main.ExecutionSettings(
                    server_settings("execution"),
                    database.app_url,
                    suite.tenancy.address,
                    "http://gateway.test",
                    entitlements_ttl=300.0,
                    max_attempts=2,
                    redis_url=redis_url,
                )
            )
            address = await stack.enter_async_context(running(built))
            channel = internal_channel(address, INTERNAL_TOKEN)
            stack.push_async_callback(channel.close)
            stubs.append(pb_grpc.ExecutionServiceStub(channel))
        created = await stubs[0].CreateWorkflow(workflow(), metadata=acting(tenant))
        made = await stubs[0].CreateWebhookEndpoint(
            pb.CreateWebhookEndpointRequest(workflow_id=created.workflow.id, name="e"),
            metadata=acting(tenant),
        )
        accepted, refused = await outcomes(
            [stubs[i % 2].TriggerWebhook(delivery(tenant, made.secret)) for i in range(10)]
        )
    # Every refusal's code and message, so that a failure shows what else refused a call.
    refusals = [(error.code().name, error.details()) for error in refused]
    assert (len(accepted), len(refused)) == (6, 4), refusals
    assert {details(error)[0] for error in refused} == {"QUOTA_EXCEEDED"}
