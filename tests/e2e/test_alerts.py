"""Alerts through the running suite: a failed run reaches a receiver signed, and the dashboard shows it."""

from __future__ import annotations

import asyncio

import aiohttp
from standardwebhooks import Webhook

from aias.core.launcher import Stack
from tests.alert_receiver import Receiver
from tests.e2e.client import ORDER, expect, new_key, new_tenant, wait_for_run
from tests.e2e.conftest import USED_SECRETS
from tests.e2e.test_dashboard import STRICT_WORKFLOW, browser_session, page, sign_in


async def test_a_failed_run_reaches_the_receiver_signed_and_the_dashboard_shows_it(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    tenant = await new_tenant(http)
    member = await new_key(http, tenant, "member")
    async with Receiver().running() as receiver:
        url = receiver.endpoint("ops")
        async with http.post(
            "/api/alert-destinations",
            json={"url": url, "events": ["run.failed"]},
            headers=member.auth,
        ) as response:
            assert (await expect(response, 403))["error"]["reason"] == "ROLE_REQUIRED"
        async with http.post(
            "/api/alert-destinations",
            json={"url": url, "events": ["run.failed", "quota.near"]},
            headers=tenant.auth,
        ) as response:
            created = await expect(response, 201)
        secret = created["secret"]
        USED_SECRETS.add(secret)
        destination = created["alert_destination"]
        assert (destination["url"], destination["events"]) == (url, ["run.failed", "quota.near"])
        async with http.get("/api/alert-destinations", headers=tenant.auth) as response:
            listed = await expect(response, 200)
        assert [d["id"] for d in listed["alert_destinations"]] == [destination["id"]]
        assert "secret" not in str(listed)

        # A run that fails in the real worker: the execution-alerts process sends the alert.
        async with http.post(
            "/api/workflows", json=STRICT_WORKFLOW, headers=tenant.auth
        ) as response:
            workflow = (await expect(response, 201))["workflow"]
        async with http.post(
            "/api/webhook-endpoints",
            json={"workflow_id": workflow["id"], "name": "shop"},
            headers=tenant.auth,
        ) as response:
            endpoint_secret = (await expect(response, 201))["secret"]
        USED_SECRETS.add(endpoint_secret)
        async with http.post(
            f"/api/webhooks/{tenant.id}/{endpoint_secret}", json=ORDER
        ) as response:
            run_id = (await expect(response, 202))["run_id"]
        assert (await wait_for_run(http, tenant, run_id))["status"] == "failed"
        (received,) = await receiver.wait_for("ops", 1)

    payload = Webhook(secret).verify(received.body, received.headers)
    assert (payload["type"], payload["data"]["run_id"], payload["data"]["tenant_id"]) == (
        "run.failed",
        run_id,
        tenant.id,
    )
    assert received.headers["user-agent"].startswith("AIAS-Alerts/")
    for _ in range(50):
        async with http.get("/api/alert-deliveries", headers=tenant.auth) as response:
            (delivery,) = (await expect(response, 200))["alert_deliveries"]
        if delivery["state"] != "pending":
            break
        await asyncio.sleep(0.1)
    assert (delivery["id"], delivery["state"], delivery["attempt_count"]) == (
        received.headers["webhook-id"],
        "delivered",
        1,
    )
    assert [(a["attempt"], a["http_status"], a["error"]) for a in delivery["attempts"]] == [
        (1, 200, "")
    ]

    # The diagnostics page and its JSON show the alert and the webhook delivery behind the run.
    async with http.get("/api/diagnostics", headers=tenant.auth) as response:
        panels = (await expect(response, 200))["panels"]
    alerts = panels["alerts"]["data"]
    assert [d["state"] for d in alerts["alert_deliveries"]] == ["delivered"]
    (webhook_delivery,) = panels["webhook_deliveries"]["data"]["webhook_deliveries"]
    assert (webhook_delivery["run_id"], webhook_delivery["endpoint_name"]) == (run_id, "shop")
    async with browser_session(stack) as session:
        await sign_in(session, tenant.key)
        text = await page(session, "/dashboard/diagnostics")
    assert 'class="card panel panel-alerts"' in text
    assert 'class="card panel panel-webhook_deliveries"' in text
    assert f'href="/dashboard/runs/{run_id}"' in text
    assert "status-delivered" in text
    assert f"<code>{url.removeprefix('http://')}</code>" in text

    async with http.delete(
        f"/api/alert-destinations/{destination['id']}", headers=tenant.auth
    ) as response:
        await expect(response, 200)
    async with http.get("/api/alert-destinations", headers=tenant.auth) as response:
        assert (await expect(response, 200))["alert_destinations"] == []
