"""Workflows and endpoints over their lifetime, signed and repeated deliveries, the delivery log."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from sqlalchemy import text
from standardwebhooks import Webhook

from aias.core import signing
from aias.core.clients import error_info, internal_channel
from aias.core.context import HTTP_CODE, TENANT_ID
from aias.core.db import Database
from aias.core.localdb import LocalDatabase
from aias.execution.v1 import execution_service_pb2 as pb
from aias.execution.v1 import execution_service_pb2_grpc as pb_grpc
from aias.services.execution import main as execution_main
from aias.services.execution.domain import decode_payload
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from tests.conftest import INTERNAL_TOKEN, server_settings
from tests.integration.servers import Tenancy, running

KEPT = 5  # deliveries kept per tenant: small, so the retention shows within one test


@dataclass
class Tenant:
    id: str
    meta: tuple[tuple[str, str], ...]


@dataclass
class Suite:
    tenancy: Tenancy
    execution: pb_grpc.ExecutionServiceStub

    async def tenant(self) -> Tenant:
        tenant_id = str(await self.tenancy.new_tenant())
        return Tenant(tenant_id, ((TENANT_ID, tenant_id),))

    async def workflow(self, tenant: Tenant, expression: str = "id") -> pb.Workflow:
        request = pb.CreateWorkflowRequest(name="orders", steps=[step("shape", expression)])
        reply: pb.CreateWorkflowResponse = await self.execution.CreateWorkflow(
            request, metadata=tenant.meta
        )
        return reply.workflow

    async def endpoint(
        self, tenant: Tenant, workflow_id: str = "", **signing_options: str | bool
    ) -> pb.CreateWebhookEndpointResponse:
        workflow_id = workflow_id or (await self.workflow(tenant)).id
        request = pb.CreateWebhookEndpointRequest(
            workflow_id=workflow_id,
            name="shop",
            **signing_options,  # type: ignore[arg-type]
        )
        reply: pb.CreateWebhookEndpointResponse = await self.execution.CreateWebhookEndpoint(
            request, metadata=tenant.meta
        )
        return reply

    async def deliver(
        self, tenant: Tenant, secret: str, body: bytes = b'{"id": 1}', **fields: str
    ) -> pb.TriggerWebhookResponse:
        reply: pb.TriggerWebhookResponse = await self.execution.TriggerWebhook(
            call(tenant, secret, body, **fields)
        )
        return reply

    async def deliveries(self, tenant: Tenant, endpoint_id: str = "") -> list[pb.WebhookDelivery]:
        request = pb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id)
        reply = await self.execution.ListWebhookDeliveries(request, metadata=tenant.meta)
        return list(reply.webhook_deliveries)


@pytest.fixture(scope="module")
async def suite(database: LocalDatabase, tenancy: Tenancy) -> AsyncIterator[Suite]:
    built = await execution_main.build_server(
        execution_main.ExecutionSettings(
            server_settings("execution"),
            database.app_url,
            tenancy.address,
            "http://gateway.test",
            entitlements_ttl=300.0,
            max_attempts=2,
            deliveries_kept=KEPT,
        )
    )
    async with running(built) as address:
        channel = internal_channel(address, INTERNAL_TOKEN)
        yield Suite(tenancy, pb_grpc.ExecutionServiceStub(channel))
        await channel.close()


def step(step_id: str, expression: str) -> pb.Step:
    made = pb.Step(id=step_id, type="transform")
    made.config.update({"expression": expression})
    return made


def call(
    tenant: Tenant,
    secret: str,
    body: bytes,
    content_type: str = "application/json",
    **fields: str,
) -> pb.TriggerWebhookRequest:
    request = pb.TriggerWebhookRequest(tenant_id=tenant.id, secret=secret, **fields)
    request.http_body.data = body
    request.http_body.content_type = content_type
    return request


async def refused(pending: object) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    """The code, reason, message and metadata a call failed with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pending  # type: ignore[misc]
    found = error_info(caught.value.trailing_metadata())
    assert found is not None
    reason, message, metadata = found
    return caught.value.code(), reason, message, metadata


# -- workflows ------------------------------------------------------------------------------


async def test_changing_steps_makes_a_version_and_runs_keep_theirs(suite: Suite) -> None:
    tenant = await suite.tenant()
    workflow = await suite.workflow(tenant)
    made = await suite.endpoint(tenant, workflow.id)
    first = await suite.deliver(tenant, made.secret)

    update = pb.UpdateWorkflowRequest(workflow_id=workflow.id, steps=[step("shape", "total")])
    changed = (await suite.execution.UpdateWorkflow(update, metadata=tenant.meta)).workflow
    assert (changed.version, changed.name, changed.steps[0].config["expression"]) == (
        2,
        "orders",
        "total",
    )
    # A name or the same steps make no version; the mask says which fields count.
    same = pb.UpdateWorkflowRequest(
        workflow_id=workflow.id,
        name="renamed",
        steps=[step("shape", "total")],
        update_mask=field_mask_pb2.FieldMask(paths=["name", "steps"]),
    )
    renamed = (await suite.execution.UpdateWorkflow(same, metadata=tenant.meta)).workflow
    assert (renamed.version, renamed.name) == (2, "renamed")

    second = await suite.deliver(tenant, made.secret)
    runs = {
        run.id: run.workflow_version
        for run in (await suite.execution.ListRuns(pb.ListRunsRequest(), metadata=tenant.meta)).runs
    }
    assert runs == {first.run_id: 1, second.run_id: 2}

    versions = await suite.execution.ListWorkflowVersions(
        pb.ListWorkflowVersionsRequest(workflow_id=workflow.id, page_size=1), metadata=tenant.meta
    )
    assert [v.version for v in versions.versions] == [2]
    older = await suite.execution.ListWorkflowVersions(
        pb.ListWorkflowVersionsRequest(
            workflow_id=workflow.id, page_token=versions.next_page_token
        ),
        metadata=tenant.meta,
    )
    assert [(v.version, v.steps[0].config["expression"]) for v in older.versions] == [(1, "id")]
    assert older.next_page_token == ""


async def test_invalid_updates_name_the_step_and_field_and_change_nothing(suite: Suite) -> None:
    tenant = await suite.tenant()
    # Set before execution first caches the tenant's limits.
    await suite.tenancy.stub.UpdateTenant(
        tenancy_pb.UpdateTenantRequest(
            tenant_id=tenant.id,
            allowed_step_types_override=tenancy_pb.StepTypes(types=["transform"]),
        )
    )
    workflow = await suite.workflow(tenant)
    bad = pb.UpdateWorkflowRequest(
        workflow_id=workflow.id, steps=[step("shape", "id"), step("sum", "sum(")]
    )
    code, reason, message, metadata = await refused(
        suite.execution.UpdateWorkflow(bad, metadata=tenant.meta)
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_STEP_CONFIG")
    assert message.startswith("step 'sum': steps[1].config.expression is not a valid JMESPath")
    assert (metadata["step_id"], metadata["step_index"]) == ("sum", "1")

    unknown_field = pb.UpdateWorkflowRequest(
        workflow_id=workflow.id, update_mask=field_mask_pb2.FieldMask(paths=["version"])
    )
    assert (await refused(suite.execution.UpdateWorkflow(unknown_field, metadata=tenant.meta)))[
        1
    ] == "INVALID_UPDATE_MASK"

    # The plan's step types bind updates as they bind creations.
    filtered = pb.UpdateWorkflowRequest(workflow_id=workflow.id, steps=[pb.Step(id="f")])
    filtered.steps[0].type = "filter"
    filtered.steps[0].config.update({"condition": "id"})
    code, reason, message, _ = await refused(
        suite.execution.UpdateWorkflow(filtered, metadata=tenant.meta)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PLAN_LIMIT")
    assert "step 'f': steps[0].type 'filter'" in message
    got = await suite.execution.GetWorkflow(
        pb.GetWorkflowRequest(workflow_id=workflow.id), metadata=tenant.meta
    )
    assert got.workflow.version == 1


async def test_a_disabled_workflow_answers_409_and_queues_nothing(suite: Suite) -> None:
    tenant = await suite.tenant()
    workflow = await suite.workflow(tenant)
    made = await suite.endpoint(tenant, workflow.id)
    await suite.deliver(tenant, made.secret)  # the target is cached now
    off = pb.UpdateWorkflowRequest(workflow_id=workflow.id, enabled=False)
    assert not (await suite.execution.UpdateWorkflow(off, metadata=tenant.meta)).workflow.enabled

    code, reason, _, metadata = await refused(suite.deliver(tenant, made.secret))
    assert (code, reason, metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "WORKFLOW_DISABLED",
        {"http_status": "409"},
    )
    admission = pb.AdmitWebhookRequest(tenant_id=tenant.id, secret=made.secret)
    assert (await refused(suite.execution.AdmitWebhook(admission)))[1] == "WORKFLOW_DISABLED"
    runs = await suite.execution.ListRuns(pb.ListRunsRequest(), metadata=tenant.meta)
    assert len(runs.runs) == 1

    on = pb.UpdateWorkflowRequest(workflow_id=workflow.id, enabled=True)
    await suite.execution.UpdateWorkflow(on, metadata=tenant.meta)
    await suite.deliver(tenant, made.secret)


async def test_a_deleted_workflow_keeps_its_runs_and_frees_its_place(suite: Suite) -> None:
    tenant = await suite.tenant()
    await suite.tenancy.set_limits(uuid.UUID(tenant.id), workflows=1, webhook_endpoints=1)
    workflow = await suite.workflow(tenant)
    made = await suite.endpoint(tenant, workflow.id)
    run_id = (await suite.deliver(tenant, made.secret)).run_id

    await suite.execution.DeleteWorkflow(
        pb.DeleteWorkflowRequest(workflow_id=workflow.id), metadata=tenant.meta
    )
    get = pb.GetWorkflowRequest(workflow_id=workflow.id)
    assert (await refused(suite.execution.GetWorkflow(get, metadata=tenant.meta)))[1] == (
        "WORKFLOW_NOT_FOUND"
    )
    again = pb.DeleteWorkflowRequest(workflow_id=workflow.id)
    assert (await refused(suite.execution.DeleteWorkflow(again, metadata=tenant.meta)))[1] == (
        "WORKFLOW_NOT_FOUND"
    )
    listed = await suite.execution.ListWorkflows(pb.ListWorkflowsRequest(), metadata=tenant.meta)
    assert list(listed.workflows) == []
    endpoints = await suite.execution.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(), metadata=tenant.meta
    )
    assert list(endpoints.webhook_endpoints) == []
    # Its URL is as unknown as a wrong one; the run and its log stay readable.
    assert (await refused(suite.deliver(tenant, made.secret)))[1] == "WEBHOOK_ENDPOINT_NOT_FOUND"
    run = await suite.execution.GetRun(pb.GetRunRequest(run_id=run_id), metadata=tenant.meta)
    assert run.run.workflow_id == workflow.id
    await suite.execution.ListRunLogs(pb.ListRunLogsRequest(run_id=run_id), metadata=tenant.meta)
    # At the limit of one, the deleted workflow and endpoint no longer count.
    await suite.endpoint(tenant)


# -- endpoints ------------------------------------------------------------------------------


async def test_rotation_keeps_the_old_secret_for_its_grace_then_stops_it(suite: Suite) -> None:
    tenant = await suite.tenant()
    made = await suite.endpoint(tenant)
    endpoint_id, original = made.webhook_endpoint.id, made.secret
    await suite.deliver(tenant, original)  # cached before the rotation

    rotated = await suite.execution.RotateWebhookEndpointSecret(
        pb.RotateWebhookEndpointSecretRequest(endpoint_id=endpoint_id), metadata=tenant.meta
    )
    assert rotated.secret not in (original, "")
    assert rotated.webhook_endpoint.url.endswith(f"/api/webhooks/{tenant.id}/{rotated.secret}")
    grace_end = rotated.webhook_endpoint.previous_secret_expire_time.ToDatetime(tzinfo=UTC)
    assert 86_000 < (grace_end - datetime.now(UTC)).total_seconds() <= 86_400
    await suite.deliver(tenant, original)
    await suite.deliver(tenant, rotated.secret)

    # A short grace: the replaced secret works, then stops; the one before it stopped at once.
    short = await suite.execution.RotateWebhookEndpointSecret(
        pb.RotateWebhookEndpointSecretRequest(
            endpoint_id=endpoint_id, grace_period=duration_pb2.Duration(seconds=1)
        ),
        metadata=tenant.meta,
    )
    assert (await refused(suite.deliver(tenant, original)))[1] == "WEBHOOK_ENDPOINT_NOT_FOUND"
    await suite.deliver(tenant, rotated.secret)
    await asyncio.sleep(1.1)
    assert (await refused(suite.deliver(tenant, rotated.secret)))[1] == (
        "WEBHOOK_ENDPOINT_NOT_FOUND"
    )
    await suite.deliver(tenant, short.secret)

    too_long = pb.RotateWebhookEndpointSecretRequest(
        endpoint_id=endpoint_id, grace_period=duration_pb2.Duration(seconds=8 * 86_400)
    )
    assert (
        await refused(suite.execution.RotateWebhookEndpointSecret(too_long, metadata=tenant.meta))
    )[1] == "INVALID_GRACE_PERIOD"
    # The log says why the expired secret was refused; the sender only got the 404.
    newest, expired = (await suite.deliveries(tenant))[:2]
    assert (newest.http_status, bool(newest.run_id)) == (202, True)
    assert (expired.http_status, expired.reason) == (404, "WEBHOOK_ENDPOINT_NOT_FOUND")
    assert "a rotation replaced" in expired.message


async def test_an_endpoint_can_be_renamed_disabled_and_deleted(suite: Suite) -> None:
    tenant = await suite.tenant()
    await suite.tenancy.set_limits(uuid.UUID(tenant.id), webhook_endpoints=1)
    made = await suite.endpoint(tenant)
    endpoint_id = made.webhook_endpoint.id
    await suite.deliver(tenant, made.secret)

    patch = pb.UpdateWebhookEndpointRequest(endpoint_id=endpoint_id, name="shop-2", enabled=False)
    changed = await suite.execution.UpdateWebhookEndpoint(patch, metadata=tenant.meta)
    assert (changed.webhook_endpoint.name, changed.webhook_endpoint.enabled) == ("shop-2", False)
    assert (await refused(suite.deliver(tenant, made.secret)))[1] == "WEBHOOK_ENDPOINT_NOT_FOUND"
    admission = pb.AdmitWebhookRequest(tenant_id=tenant.id, secret=made.secret)
    assert (await refused(suite.execution.AdmitWebhook(admission)))[1] == (
        "WEBHOOK_ENDPOINT_NOT_FOUND"
    )

    delete = pb.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id)
    await suite.execution.DeleteWebhookEndpoint(delete, metadata=tenant.meta)
    assert (await refused(suite.execution.DeleteWebhookEndpoint(delete, metadata=tenant.meta)))[
        1
    ] == "WEBHOOK_ENDPOINT_NOT_FOUND"
    listed = await suite.execution.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(), metadata=tenant.meta
    )
    assert list(listed.webhook_endpoints) == []
    # The log keeps the deleted endpoint's deliveries; its place is free again.
    assert [(d.http_status, d.message) for d in await suite.deliveries(tenant, endpoint_id)] == [
        (404, "the endpoint is disabled"),
        (404, "the endpoint is disabled"),
        (202, ""),
    ]
    await suite.endpoint(tenant)


# -- Standard Webhooks ----------------------------------------------------------------------


def signed(
    secret: str, body: bytes, *, sent: float | None = None, msg_id: str = ""
) -> dict[str, str]:
    """The three headers as the reference library (`standardwebhooks`) makes them."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    when = datetime.fromtimestamp(time.time() if sent is None else sent, UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook_id": msg_id,
        "webhook_timestamp": str(int(when.timestamp())),
        "webhook_signature": signature,
    }


async def test_signed_endpoints_take_only_good_fresh_signatures(suite: Suite) -> None:
    tenant = await suite.tenant()
    made = await suite.endpoint(tenant, generate_signing_secret=True)
    assert made.signing_secret.startswith("whsec_")
    assert made.webhook_endpoint.signature_required
    secret, key = made.secret, made.signing_secret
    body = b'{"id": 7}'

    accepted = await suite.deliver(tenant, secret, body, **signed(key, body))
    assert accepted.status == pb.RUN_STATUS_QUEUED

    other_key = signing.generate_secret()[0]
    bad = signed(other_key, body)
    code, reason, _, _ = await refused(suite.deliver(tenant, secret, body, **bad))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_SIGNATURE")
    tampered = signed(key, body)
    assert (await refused(suite.deliver(tenant, secret, b'{"id": 8}', **tampered)))[1] == (
        "INVALID_SIGNATURE"
    )
    stale = signed(key, body, sent=time.time() - 301)
    code, reason, message, _ = await refused(suite.deliver(tenant, secret, body, **stale))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "STALE_SIGNATURE")
    assert "at most 300 s" in message
    assert (await refused(suite.deliver(tenant, secret, body)))[1] == "MISSING_SIGNATURE"

    # Admission refuses what the headers alone show, before any body byte is read.
    admission = pb.AdmitWebhookRequest(tenant_id=tenant.id, secret=secret)
    assert (await refused(suite.execution.AdmitWebhook(admission)))[1] == "MISSING_SIGNATURE"
    stale_head = pb.AdmitWebhookRequest(tenant_id=tenant.id, secret=secret)
    for field, value in stale.items():
        setattr(stale_head, field, value)
    assert (await refused(suite.execution.AdmitWebhook(stale_head)))[1] == "STALE_SIGNATURE"
    fresh_head = pb.AdmitWebhookRequest(tenant_id=tenant.id, secret=secret)
    for field, value in signed(key, body).items():
        setattr(fresh_head, field, value)
    await suite.execution.AdmitWebhook(fresh_head)

    # A binary body is signed as its bytes; a sender mid-rotation sends two signatures.
    binary = bytes(range(256))
    headers = signed(key, b"", msg_id="msg_bin")
    headers["webhook_signature"] = " ".join(
        (
            signing.sign(signing.parse_secret(other_key, "k"), "msg_bin", "1", binary),
            signing.sign(
                signing.parse_secret(key, "k"), "msg_bin", headers["webhook_timestamp"], binary
            ),
        )
    )
    await suite.execution.TriggerWebhook(
        call(tenant, secret, binary, "application/octet-stream", **headers)
    )

    reasons = [(d.http_status, d.reason) for d in await suite.deliveries(tenant)]
    assert reasons[:5] == [
        (202, ""),
        (401, "STALE_SIGNATURE"),
        (401, "MISSING_SIGNATURE"),
        (401, "MISSING_SIGNATURE"),
        (401, "STALE_SIGNATURE"),
    ]


async def test_a_signing_secret_from_the_sender_can_be_set_and_removed(suite: Suite) -> None:
    tenant = await suite.tenant()
    sender_key = "whsec_" + base64.b64encode(b"k" * 24).decode()
    made = await suite.endpoint(tenant, signing_secret=sender_key)
    assert made.signing_secret == ""  # not generated, so nothing to show
    body = b"[1]"
    await suite.deliver(tenant, made.secret, body, **signed(sender_key, body))

    bad = pb.CreateWebhookEndpointRequest(
        workflow_id=made.webhook_endpoint.workflow_id, name="x", signing_secret="whsec_short"
    )
    assert (await refused(suite.execution.CreateWebhookEndpoint(bad, metadata=tenant.meta)))[
        1
    ] == "INVALID_SIGNING_SECRET"

    unsign = pb.UpdateWebhookEndpointRequest(
        endpoint_id=made.webhook_endpoint.id,
        update_mask=field_mask_pb2.FieldMask(paths=["signing_secret"]),
    )
    after = await suite.execution.UpdateWebhookEndpoint(unsign, metadata=tenant.meta)
    assert not after.webhook_endpoint.signature_required
    await suite.deliver(tenant, made.secret, body)

    regenerate = pb.UpdateWebhookEndpointRequest(
        endpoint_id=made.webhook_endpoint.id, generate_signing_secret=True
    )
    fresh = await suite.execution.UpdateWebhookEndpoint(regenerate, metadata=tenant.meta)
    assert fresh.signing_secret.startswith("whsec_")
    await suite.deliver(tenant, made.secret, body, **signed(fresh.signing_secret, body))
    assert (await refused(suite.deliver(tenant, made.secret, body)))[1] == "MISSING_SIGNATURE"


# -- idempotency ----------------------------------------------------------------------------


async def test_a_repeat_gets_the_first_run_and_the_first_answer(suite: Suite) -> None:
    tenant = await suite.tenant()
    made = await suite.endpoint(tenant)
    statuses, run_ids = [], set()
    for _ in range(2):
        pending = suite.execution.TriggerWebhook(
            call(tenant, made.secret, b"{}", idempotency_key="k")
        )
        answer = await pending
        run_ids.add(answer.run_id)
        statuses.append(answer.status)
        # No status of its own: the gateway answers the route's 202 for a new run and a repeat.
        assert HTTP_CODE not in dict(await pending.initial_metadata())
    assert (statuses, len(run_ids)) == ([pb.RUN_STATUS_QUEUED, pb.RUN_STATUS_QUEUED], 1)

    code, reason, _, metadata = await refused(
        suite.deliver(tenant, made.secret, b'{"other": 1}', idempotency_key="k")
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
    assert metadata == {"http_status": "422", "run_id": next(iter(run_ids))}
    # Standard Webhooks' webhook-id is the key when no Idempotency-Key is sent.
    by_id = {(await suite.deliver(tenant, made.secret, webhook_id="msg_1")).run_id for _ in "ab"}
    assert len(by_id) == 1

    deliveries = await suite.deliveries(tenant)
    assert [(d.http_status, d.reason) for d in deliveries] == [
        (202, "IDEMPOTENT_REPEAT"),
        (202, ""),
        (422, "IDEMPOTENCY_KEY_REUSED"),
        (202, "IDEMPOTENT_REPEAT"),
        (202, ""),
    ]


async def test_twenty_concurrent_repeats_make_one_run(suite: Suite) -> None:
    tenant = await suite.tenant()
    made = await suite.endpoint(tenant)
    replies = await asyncio.gather(
        *(suite.deliver(tenant, made.secret, idempotency_key="same") for _ in range(20))
    )
    assert len({reply.run_id for reply in replies}) == 1
    runs = await suite.execution.ListRuns(pb.ListRunsRequest(), metadata=tenant.meta)
    assert len(runs.runs) == 1


# -- bodies and the delivery log --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"a=1&b=2", "application/x-www-form-urlencoded", {"text": "a=1&b=2"}),
        ("grüße".encode("latin-1"), "text/plain; charset=ISO-8859-1", {"text": "grüße"}),
        (b"<order id='1'/>", "application/xml", {"text": "<order id='1'/>"}),
        (
            b"\x89PNG\r\n\x00",
            "image/png",
            {"base64": base64.b64encode(b"\x89PNG\r\n\x00").decode()},
        ),
        (b"\xff\xfe", "text/plain", {"base64": "//4="}),
        (b"no type", "", {"base64": base64.b64encode(b"no type").decode()}),
        (b'{"id": 1}', "", None),
    ],
)
async def test_bodies_that_are_not_json_reach_the_workflow_wrapped(
    suite: Suite, app_db: Database, body: bytes, content_type: str, expected: dict[str, str] | None
) -> None:
    tenant = await suite.tenant()
    made = await suite.endpoint(tenant)
    reply = await suite.execution.TriggerWebhook(call(tenant, made.secret, body, content_type))
    async with app_db.tenant(tenant.id) as session:
        stored = (
            await session.execute(
                text("SELECT payload, content_type FROM execution.runs WHERE id = :r"),
                {"r": reply.run_id},
            )
        ).one()
    value = decode_payload(stored.payload, stored.content_type)
    if expected is None:
        assert value == {"id": 1}
    else:
        assert value == {"content_type": content_type, **expected}


async def test_the_delivery_log_pages_filters_and_keeps_the_newest(suite: Suite) -> None:
    tenant = await suite.tenant()
    first = await suite.endpoint(tenant)
    second = await suite.endpoint(tenant, first.webhook_endpoint.workflow_id)
    for n in range(KEPT + 3):
        await suite.deliver(tenant, first.secret, f'{{"n": {n}}}'.encode())
    assert (await refused(suite.deliver(tenant, second.secret, b"{oops")))[1] == "INVALID_PAYLOAD"
    # An unknown URL proves nothing, so it is nobody's to record.
    assert (await refused(suite.deliver(tenant, "not-a-secret")))[1] == (
        "WEBHOOK_ENDPOINT_NOT_FOUND"
    )

    # Pruning runs in the background after the commits.
    for _ in range(50):
        every = await suite.deliveries(tenant)
        if len(every) == KEPT:
            break
        await asyncio.sleep(0.05)
    assert [(d.http_status, d.reason) for d in every][:1] == [(400, "INVALID_PAYLOAD")]
    assert len(every) == KEPT
    assert [d.size_bytes for d in every[1:]] == [8, 8, 8, 8]

    page = await suite.execution.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(endpoint_id=first.webhook_endpoint.id, page_size=3),
        metadata=tenant.meta,
    )
    rest = await suite.execution.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(
            endpoint_id=first.webhook_endpoint.id, page_token=page.next_page_token
        ),
        metadata=tenant.meta,
    )
    walked = [*page.webhook_deliveries, *rest.webhook_deliveries]
    assert [d.id for d in walked] == [d.id for d in every[1:]]
    assert all(d.run_id and d.endpoint_id == first.webhook_endpoint.id for d in walked)
    other_filter = pb.ListWebhookDeliveriesRequest(page_token=page.next_page_token)
    assert (
        await refused(suite.execution.ListWebhookDeliveries(other_filter, metadata=tenant.meta))
    )[1] == "INVALID_PAGE_TOKEN"
