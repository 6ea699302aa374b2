"""Alerts below HTTP: raised by failed runs, quota and billing, sent signed, retried, recorded."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from standardwebhooks import Webhook

from aias.billing.v1 import billing_service_pb2 as billing_pb
from aias.core import signing
from aias.core.clients import error_info
from aias.core.context import TENANT_ID
from aias.core.db import Database, SystemPath, libpq_url
from aias.core.destinations import AddressPolicy
from aias.core.localdb import LocalDatabase
from aias.core.outbound import OutboundClient
from aias.execution.v1 import execution_service_pb2 as pb
from aias.services.execution.alerts.domain import RetrySchedule
from aias.services.execution.alerts.repository import OutboxRepository
from aias.services.execution.alerts.sender import AlertSender, SenderConfig, SenderMetrics
from aias.services.execution.repository import Outcome, QueueRepository
from tests.alert_receiver import Receiver
from tests.integration.servers import Execution, Tenancy
from tests.integration.test_billing import (
    DUPLICATE,
    NOWHERE,
    PROCESSED,
    billing_server,
    configured,
    linked_tenant,
    new_subscription_id,
)
from tests.stripe_fake import FakeStripe, event, invoice_object, subscription_object

LOOPBACK = AddressPolicy.parse("127.0.0.1")
DELIVERED = pb.ALERT_DELIVERY_STATE_DELIVERED
FAILED = pb.ALERT_DELIVERY_STATE_FAILED
PENDING = pb.ALERT_DELIVERY_STATE_PENDING
# Quick retries for tests: 0.1 s doubling up to 0.4 s, within the window each test sets.
QUICK = RetrySchedule(
    base=timedelta(seconds=0.1), cap=timedelta(seconds=0.4), window=timedelta(seconds=30)
)


def meta(tenant: uuid.UUID) -> tuple[tuple[str, str], ...]:
    return ((TENANT_ID, str(tenant)),)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().running() as running:
        yield running


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    fake.start()
    yield fake
    fake.stop()


@asynccontextmanager
async def sending(
    app_db: Database,
    database: LocalDatabase,
    schedule: RetrySchedule = QUICK,
    allow: AddressPolicy = LOOPBACK,
) -> AsyncIterator[CollectorRegistry]:
    """A sender, as the execution-alerts process builds one, for the duration of a block;
    yields the registry of its metrics."""
    client = OutboundClient(allow)
    registry = CollectorRegistry()
    config = SenderConfig(schedule=schedule, batch=8, poll_interval=0.05, timeout=2.0)
    sender = AlertSender(
        app_db, libpq_url(database.app_url), client, config, SenderMetrics(registry)
    )
    await sender.start()
    try:
        yield registry
    finally:
        await sender.stop(2.0)
        await client.close()


async def destination(
    execution: Execution, tenant: uuid.UUID, url: str, *events: str
) -> pb.CreateAlertDestinationResponse:
    request = pb.CreateAlertDestinationRequest(url=url, events=events or ["run.failed"])
    reply: pb.CreateAlertDestinationResponse = await execution.stub.CreateAlertDestination(
        request, metadata=meta(tenant)
    )
    return reply


async def deliveries(execution: Execution, tenant: uuid.UUID) -> list[pb.AlertDelivery]:
    reply = await execution.stub.ListAlertDeliveries(
        pb.ListAlertDeliveriesRequest(page_size=100), metadata=meta(tenant)
    )
    return list(reply.alert_deliveries)


async def settled(
    execution: Execution, tenant: uuid.UUID, count: int, seconds: float = 10.0
) -> list[pb.AlertDelivery]:
    """The tenant's `count` deliveries once none is pending any more, newest first."""
    deadline = time.monotonic() + seconds
    while True:
        found = await deliveries(execution, tenant)
        if len(found) >= count and all(d.state != PENDING for d in found):
            assert len(found) == count, found
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries did not settle: {found}")
        await asyncio.sleep(0.05)


async def refused(pending: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pending
    found = error_info(caught.value.trailing_metadata())
    assert found is not None
    return caught.value.code(), found[0], found[1]


async def failed_run(app_db: Database, execution: Execution, tenant: uuid.UUID) -> uuid.UUID:
    """A run queued through a webhook and failed by the worker's own queue code."""
    step = pb.Step(id="check", type="validate")
    step.config.update({"schema": {"type": "string"}})
    workflow = await execution.stub.CreateWorkflow(
        pb.CreateWorkflowRequest(name="orders", steps=[step]), metadata=meta(tenant)
    )
    endpoint = await execution.stub.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(workflow_id=workflow.workflow.id, name="shop"),
        metadata=meta(tenant),
    )
    trigger = pb.TriggerWebhookRequest(tenant_id=str(tenant), secret=endpoint.secret)
    trigger.http_body.data, trigger.http_body.content_type = b'{"id": 1}', "application/json"
    run_id = uuid.UUID((await execution.stub.TriggerWebhook(trigger)).run_id)
    async with app_db.system(SystemPath.RUN_QUEUE) as session:
        queue = QueueRepository(session, "w-alerts")
        (claimed,) = await queue.start({tenant: 1}, timedelta(seconds=30))
        assert claimed.id == run_id
        failed = Outcome(run_id, claimed.attempt, "failed", "step 'check' failed: no")
        assert await queue.finish([failed]) == {run_id}
    return run_id


# --- destinations ------------------------------------------------------------------------------


async def test_destinations_are_checked_listed_and_deleted(
    execution: Execution, tenancy: Tenancy
) -> None:
    tenant = await tenancy.new_tenant()
    made = await destination(
        execution, tenant, " https://alerts.example.com/aias ", "quota.near", "run.failed"
    )
    created = made.alert_destination
    assert (created.url, list(created.events)) == (
        "https://alerts.example.com/aias",
        ["run.failed", "quota.near"],
    )
    assert made.secret.startswith("whsec_")
    signing.parse_secret(made.secret, "secret")

    for url, events, reason in (
        ("ftp://alerts.example.com", ["run.failed"], "INVALID_ALERT_URL"),
        ("https://user:pw@alerts.example.com", ["run.failed"], "INVALID_ALERT_URL"),
        ("https:///no-host", ["run.failed"], "INVALID_ALERT_URL"),
        ("https://alerts.example.com", [], "INVALID_ALERT_EVENTS"),
        ("https://alerts.example.com", ["run.succeeded"], "INVALID_ALERT_EVENTS"),
    ):
        code, found, message = await refused(
            execution.stub.CreateAlertDestination(
                pb.CreateAlertDestinationRequest(url=url, events=events), metadata=meta(tenant)
            )
        )
        assert (code, found) == (grpc.StatusCode.INVALID_ARGUMENT, reason), message
        assert "pw" not in message

    listed = await execution.stub.ListAlertDestinations(
        pb.ListAlertDestinationsRequest(), metadata=meta(tenant)
    )
    assert [d.id for d in listed.alert_destinations] == [created.id]
    await execution.stub.DeleteAlertDestination(
        pb.DeleteAlertDestinationRequest(destination_id=created.id), metadata=meta(tenant)
    )
    code, found, _ = await refused(
        execution.stub.DeleteAlertDestination(
            pb.DeleteAlertDestinationRequest(destination_id=created.id), metadata=meta(tenant)
        )
    )
    assert (code, found) == (grpc.StatusCode.NOT_FOUND, "ALERT_DESTINATION_NOT_FOUND")
    listed = await execution.stub.ListAlertDestinations(
        pb.ListAlertDestinationsRequest(), metadata=meta(tenant)
    )
    assert list(listed.alert_destinations) == []


# --- run.failed: signed, retried, given up, refused -------------------------------------------


async def test_a_failed_run_is_alerted_signed_and_delivered_on_the_retry_after_a_500(
    app_db: Database,
    database: LocalDatabase,
    execution: Execution,
    tenancy: Tenancy,
    receiver: Receiver,
) -> None:
    tenant = await tenancy.new_tenant()
    made = await destination(execution, tenant, receiver.endpoint("flaky", 500, 200))
    async with sending(app_db, database):
        run_id = await failed_run(app_db, execution, tenant)
        (delivery,) = await settled(execution, tenant, 1)

    first, second = await receiver.wait_for("flaky", 2)
    # One alert, two attempts: the same webhook-id, each signed at its own time.
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.id
    assert first.body == second.body
    for attempt in (first, second):
        assert attempt.headers["content-type"] == "application/json"
        payload = Webhook(made.secret).verify(attempt.body, attempt.headers)
        signing.verify(
            signing.parse_secret(made.secret, "secret"),
            attempt.headers["webhook-id"],
            attempt.headers["webhook-timestamp"],
            attempt.headers["webhook-signature"],
            attempt.body,
            time.time(),
        )
    assert payload["type"] == "run.failed"
    data = payload["data"]
    assert (data["tenant_id"], data["run_id"], data["error"], data["attempt"]) == (
        str(tenant),
        str(run_id),
        "step 'check' failed: no",
        1,
    )
    assert data["end_time"].endswith("Z")

    assert (delivery.event_type, delivery.state, delivery.attempt_count) == (
        "run.failed",
        DELIVERED,
        2,
    )
    assert [(a.attempt, a.http_status) for a in delivery.attempts] == [(1, 500), (2, 200)]
    assert delivery.attempts[0].error.startswith("ALERT_NOT_ACCEPTED: answered 500")
    assert delivery.attempts[1].error == ""
    assert (delivery.last_http_status, delivery.last_error) == (200, "")
    assert not delivery.HasField("next_attempt_time")
    assert json_format.MessageToDict(delivery.payload) == payload


async def test_a_receiver_that_keeps_failing_is_given_up_after_the_window(
    app_db: Database,
    database: LocalDatabase,
    execution: Execution,
    tenancy: Tenancy,
    receiver: Receiver,
) -> None:
    tenant = await tenancy.new_tenant()
    await destination(execution, tenant, receiver.endpoint("down", 503))
    window = RetrySchedule(QUICK.base, QUICK.cap, timedelta(seconds=1.5))
    async with sending(app_db, database, window) as registry:
        await failed_run(app_db, execution, tenant)
        (delivery,) = await settled(execution, tenant, 1)
        await asyncio.sleep(0.5)  # nothing more is sent once it has failed

    assert delivery.state == FAILED
    received = receiver.received["down"]
    assert delivery.attempt_count == len(received) >= 3
    assert [a.attempt for a in delivery.attempts] == list(range(1, len(received) + 1))
    assert {a.http_status for a in delivery.attempts} == {503}
    raised = delivery.create_time.ToDatetime(tzinfo=UTC).timestamp()
    assert max(r.time for r in received) - raised <= 1.5 + 0.5
    # Back-off: each wait at least three quarters of the doubled base, at most the cap's 1.25.
    gaps = [b.time - a.time for a, b in itertools.pairwise(received)]
    assert all(0.07 <= gap <= 0.4 * 1.25 + 0.3 for gap in gaps), gaps
    counted = {
        outcome: registry.get_sample_value(
            "aias_alert_attempts_total", {"event_type": "run.failed", "outcome": outcome}
        )
        for outcome in ("retrying", "failed")
    }
    assert counted == {"retrying": len(received) - 1, "failed": 1}


async def test_a_private_address_is_refused_without_the_allowlist(
    app_db: Database,
    database: LocalDatabase,
    execution: Execution,
    tenancy: Tenancy,
    receiver: Receiver,
) -> None:
    tenant = await tenancy.new_tenant()
    await destination(execution, tenant, receiver.endpoint("private"))
    window = RetrySchedule(QUICK.base, QUICK.cap, timedelta(seconds=0.5))
    async with sending(app_db, database, window, allow=AddressPolicy()):
        await failed_run(app_db, execution, tenant)
        (delivery,) = await settled(execution, tenant, 1)

    assert receiver.received["private"] == []
    assert delivery.state == FAILED
    assert delivery.attempt_count >= 2
    for attempt in delivery.attempts:
        assert attempt.http_status == 0
        assert attempt.error == (
            "HTTP_DESTINATION_REFUSED: 127.0.0.1 is a loopback address; "
            "AIAS_HTTP_STEP_ALLOW can allow it"
        )


async def test_a_deleted_destination_gets_nothing_more(
    app_db: Database,
    database: LocalDatabase,
    execution: Execution,
    tenancy: Tenancy,
    receiver: Receiver,
) -> None:
    tenant = await tenancy.new_tenant()
    made = await destination(execution, tenant, receiver.endpoint("gone"))
    # No sender runs: the alert waits, then its destination goes.
    await failed_run(app_db, execution, tenant)
    (waiting,) = await deliveries(execution, tenant)
    assert (waiting.state, waiting.attempt_count) == (PENDING, 0)
    await execution.stub.DeleteAlertDestination(
        pb.DeleteAlertDestinationRequest(destination_id=made.alert_destination.id),
        metadata=meta(tenant),
    )
    (given_up,) = await deliveries(execution, tenant)
    assert given_up.state == FAILED
    assert given_up.last_error.startswith("DESTINATION_DELETED")
    await failed_run(app_db, execution, tenant)
    assert len(await deliveries(execution, tenant)) == 1


# --- quota and billing --------------------------------------------------------------------------


async def test_quota_near_and_exceeded_are_raised_once_each(
    app_db: Database,
    database: LocalDatabase,
    execution: Execution,
    tenancy: Tenancy,
    receiver: Receiver,
) -> None:
    tenant = await tenancy.new_tenant()
    await tenancy.set_limits(tenant, runs_per_month=5)
    made = await destination(
        execution, tenant, receiver.endpoint("quota"), "quota.near", "quota.exceeded"
    )
    step = pb.Step(id="shape", type="transform")
    step.config.update({"expression": "id"})
    workflow = await execution.stub.CreateWorkflow(
        pb.CreateWorkflowRequest(name="orders", steps=[step]), metadata=meta(tenant)
    )
    endpoint = await execution.stub.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(workflow_id=workflow.workflow.id, name="shop"),
        metadata=meta(tenant),
    )
    trigger = pb.TriggerWebhookRequest(tenant_id=str(tenant), secret=endpoint.secret)
    trigger.http_body.data, trigger.http_body.content_type = b'{"id": 1}', "application/json"
    answers: list[grpc.StatusCode] = []
    for _ in range(7):
        try:
            await execution.stub.TriggerWebhook(trigger)
            answers.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            answers.append(error.code())
    assert answers == [grpc.StatusCode.OK] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2

    async with sending(app_db, database):
        exceeded, near = await settled(execution, tenant, 2)
    assert (near.event_type, exceeded.event_type) == ("quota.near", "quota.exceeded")
    assert (near.state, exceeded.state) == (DELIVERED, DELIVERED)
    bodies = [
        Webhook(made.secret).verify(r.body, r.headers)["data"]
        for r in await receiver.wait_for("quota", 2)
    ]
    assert [(d["limit"], d["limit_value"], d["used"], d["plan"]) for d in bodies] == [
        ("runs_per_month", 5, 4, "free"),
        ("runs_per_month", 5, 5, "free"),
    ]
    # Once per period: another process crossing the threshold raises nothing new.
    again = await execution.stub.RaiseAlert(
        pb.RaiseAlertRequest(
            tenant_id=str(tenant),
            event_type="quota.near",
            dedupe_key=f"quota.near:{bodies[0]['period_start_time']}",
        )
    )
    assert again.delivery_count == 0


async def test_billing_past_due_is_raised_through_raise_alert_and_survives_an_outage(
    app_db: Database,
    database: LocalDatabase,
    execution: Execution,
    tenancy: Tenancy,
    receiver: Receiver,
    fake_stripe: FakeStripe,
) -> None:
    async with billing_server(
        database, tenancy.address, configured(fake_stripe), execution.address
    ) as billing:
        tenant, customer = await linked_tenant(tenancy, billing)
        made = await destination(
            execution, tenant, receiver.endpoint("billing"), "billing.past_due"
        )
        sub = subscription_object(new_subscription_id(), customer, "pro")
        t = int(time.time()) + 1
        created = await billing.deliver(event("customer.subscription.created", sub, t))
        assert created.outcome == PROCESSED
        payment_failed = event("invoice.payment_failed", invoice_object(customer, sub["id"]), t + 1)

        # Execution cannot be reached: the event is applied, the alert waits, and the delivery
        # answers UNAVAILABLE so that Stripe delivers it again.
        async with billing_server(
            database, tenancy.address, configured(fake_stripe), NOWHERE
        ) as cut_off:
            code, reason, _ = await refused(cut_off.deliver(payment_failed))
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "EXECUTION_UNAVAILABLE")
        assert (await billing.account(tenant)).past_due is True
        assert await deliveries(execution, tenant) == []

        # Each repeat is a duplicate for billing; the first raises the alert, once.
        for _ in range(2):
            assert (await billing.deliver(payment_failed)).outcome == DUPLICATE
    async with sending(app_db, database):
        (delivery,) = await settled(execution, tenant, 1)

    (received,) = await receiver.wait_for("billing", 1)
    payload = Webhook(made.secret).verify(received.body, received.headers)
    assert (payload["type"], delivery.state) == ("billing.past_due", DELIVERED)
    assert payload["data"] == {
        "tenant_id": str(tenant),
        "customer_id": customer,
        "plan": "pro",
        "subscriptions": [{"id": sub["id"], "status": "active", "plan": "pro"}],
    }


async def test_a_reconcile_that_finds_a_tenant_past_due_raises_the_alert(
    app_db: Database,
    database: LocalDatabase,
    execution: Execution,
    tenancy: Tenancy,
    receiver: Receiver,
    fake_stripe: FakeStripe,
) -> None:
    async with billing_server(
        database, tenancy.address, configured(fake_stripe), execution.address
    ) as billing:
        tenant, customer = await linked_tenant(tenancy, billing)
        await destination(execution, tenant, receiver.endpoint("reconciled"), "billing.past_due")
        sub = fake_stripe.add_subscription(customer, "pro")
        created = int(time.time()) + 1
        await billing.deliver(event("customer.subscription.created", sub, created))
        # The subscription falls past due at Stripe; the webhook that said so never arrives.
        sub["status"] = "past_due"
        # Reconcile's answer is dated now, which must be after the event it overrides.
        await asyncio.sleep(max(0.0, created + 0.1 - time.time()))
        for _ in range(2):  # a second reconcile finds nothing new
            await billing.stub.Reconcile(billing_pb.ReconcileRequest(tenant_id=str(tenant)))
    async with sending(app_db, database):
        (delivery,) = await settled(execution, tenant, 1)
    assert (delivery.event_type, delivery.state) == ("billing.past_due", DELIVERED)
    (received,) = await receiver.wait_for("reconciled", 1)
    assert json.loads(received.body)["data"]["subscriptions"] == [
        {"id": sub["id"], "status": "past_due", "plan": "pro"}
    ]


# --- isolation and retention ------------------------------------------------------------------


async def test_tenant_b_never_sees_or_gets_tenant_as_alerts(
    app_db: Database,
    database: LocalDatabase,
    execution: Execution,
    tenancy: Tenancy,
    receiver: Receiver,
) -> None:
    a, b = await tenancy.new_tenant(), await tenancy.new_tenant()
    made = await destination(execution, a, receiver.endpoint("a"))
    a_destination = made.alert_destination.id
    async with sending(app_db, database):
        await failed_run(app_db, execution, a)
        await failed_run(app_db, execution, b)
        raised = await execution.stub.RaiseAlert(
            pb.RaiseAlertRequest(tenant_id=str(b), event_type="run.failed")
        )
        (delivered,) = await settled(execution, a, 1)
    assert raised.delivery_count == 0
    assert len(receiver.received["a"]) == 1

    listed = await execution.stub.ListAlertDestinations(
        pb.ListAlertDestinationsRequest(), metadata=meta(b)
    )
    assert list(listed.alert_destinations) == []
    assert await deliveries(execution, b) == []
    filtered = await execution.stub.ListAlertDeliveries(
        pb.ListAlertDeliveriesRequest(destination_id=a_destination), metadata=meta(b)
    )
    assert list(filtered.alert_deliveries) == []
    code, reason, _ = await refused(
        execution.stub.DeleteAlertDestination(
            pb.DeleteAlertDestinationRequest(destination_id=a_destination), metadata=meta(b)
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ALERT_DESTINATION_NOT_FOUND")
    assert [d.id for d in await deliveries(execution, a)] == [delivered.id]


async def test_settled_alerts_go_with_their_attempts_after_the_kept_time(
    app_db: Database,
    database: LocalDatabase,
    execution: Execution,
    tenancy: Tenancy,
    receiver: Receiver,
) -> None:
    tenant = await tenancy.new_tenant()
    await destination(execution, tenant, receiver.endpoint("kept"))
    waiting = await tenancy.new_tenant()
    later = await destination(execution, waiting, receiver.endpoint("later"))
    async with sending(app_db, database):
        await failed_run(app_db, execution, tenant)
        await settled(execution, tenant, 1)
    # A pending alert is never dropped, however old.
    await failed_run(app_db, execution, waiting)

    async with app_db.system(SystemPath.ALERT_OUTBOX) as session:
        assert await OutboxRepository(session).prune(timedelta(0), 1_000) >= 1
    assert await deliveries(execution, tenant) == []
    async with app_db.tenant(tenant) as session:
        attempts = await session.execute(text("SELECT count(*) FROM execution.alert_attempts"))
        assert attempts.scalar_one() == 0
    (pending,) = await deliveries(execution, waiting)
    assert pending.state == PENDING
    # Nothing is left for another test's sender to send.
    await execution.stub.DeleteAlertDestination(
        pb.DeleteAlertDestinationRequest(destination_id=later.alert_destination.id),
        metadata=meta(waiting),
    )


async def test_an_alert_whose_data_holds_nul_is_queued(
    execution: Execution, tenancy: Tenancy, receiver: Receiver
) -> None:
    # Billing passes on what Stripe sent (a customer's name, say); jsonb holds no NUL.
    tenant = await tenancy.new_tenant()
    await destination(execution, tenant, receiver.endpoint("nul"), "billing.past_due")
    data = json_format.ParseDict({"customer_name": "a\x00b"}, pb.RaiseAlertRequest().data)
    raised = await execution.stub.RaiseAlert(
        pb.RaiseAlertRequest(tenant_id=str(tenant), event_type="billing.past_due", data=data)
    )
    assert raised.delivery_count == 1
    (queued,) = await deliveries(execution, tenant)
    assert json_format.MessageToDict(queued.payload)["data"]["customer_name"] == "a\\x00b"
