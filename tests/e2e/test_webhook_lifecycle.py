"""Workflows and endpoints changed over HTTP, signed and repeated webhooks, the delivery log."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
from standardwebhooks import Webhook

from tests.e2e.client import ORDER, WORKFLOW, Tenant, expect, new_tenant, wait_for_run
from tests.e2e.conftest import USED_SECRETS


async def _endpoint(
    http: aiohttp.ClientSession, tenant: Tenant, workflow: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """A workflow and an endpoint for it: the creation response, secrets registered."""
    async with http.post("/api/workflows", json=workflow, headers=tenant.auth) as response:
        workflow_id = (await expect(response, 201))["workflow"]["id"]
    async with http.post(
        "/api/webhook-endpoints",
        json={"workflow_id": workflow_id, "name": "shop", **extra},
        headers=tenant.auth,
    ) as response:
        created: dict[str, Any] = await expect(response, 201)
    USED_SECRETS.update(s for s in (created["secret"], created["signing_secret"]) if s)
    return created


async def _artifact(http: aiohttp.ClientSession, tenant: Tenant, run_id: str) -> bytes:
    async with http.get("/api/artifacts", params={"run_id": run_id}, headers=tenant.auth) as r:
        artifact_id = (await expect(r, 200))["artifacts"][0]["id"]
    async with http.get(f"/api/artifacts/{artifact_id}/download", headers=tenant.auth) as r:
        return await r.read()


def _signed(signing_secret: str, body: bytes, sent: float | None = None) -> dict[str, str]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    when = datetime.fromtimestamp(time.time() if sent is None else sent, UTC)
    return {
        "Content-Type": "application/json",
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(int(when.timestamp())),
        "Webhook-Signature": Webhook(signing_secret).sign(msg_id, when, body.decode()),
    }


async def test_a_workflow_is_disabled_changed_and_deleted_over_http(
    http: aiohttp.ClientSession,
) -> None:
    tenant = await new_tenant(http)
    created = await _endpoint(http, tenant, WORKFLOW)
    url = "/api/" + created["webhook_endpoint"]["url"].split("/api/", 1)[1]
    workflow_id = created["webhook_endpoint"]["workflow_id"]
    path = f"/api/workflows/{workflow_id}"

    async with http.patch(path, json={"enabled": False}, headers=tenant.auth) as response:
        disabled = (await expect(response, 200))["workflow"]
    assert (disabled["enabled"], disabled["version"]) == (False, 1)
    async with http.post(url, json=ORDER) as response:
        assert (await expect(response, 409))["error"]["reason"] == "WORKFLOW_DISABLED"

    steps = [
        {"id": "shape", "type": "transform", "config": {"expression": "{order: id}"}},
        {"id": "save", "type": "artifact", "config": {"name": "summary.json", "format": "json"}},
    ]
    change = {"steps": steps, "enabled": True, "update_mask": "steps,enabled"}
    async with http.patch(path, json=change, headers=tenant.auth) as response:
        changed = (await expect(response, 200))["workflow"]
    assert (changed["enabled"], changed["version"]) == (True, 2)
    async with http.post(url, json=ORDER) as response:
        run = await wait_for_run(http, tenant, (await expect(response, 202))["run_id"])
    assert (run["status"], run["workflow_version"]) == ("succeeded", 2)
    assert await _artifact(http, tenant, run["id"]) == b'{"order":"A-1001"}'
    async with http.get(f"{path}/versions", headers=tenant.auth) as response:
        versions = (await expect(response, 200))["versions"]
    assert [v["version"] for v in versions] == [2, 1]

    async with http.delete(path, headers=tenant.auth) as response:
        assert await expect(response, 200) == {}
    async with http.get(path, headers=tenant.auth) as response:
        assert (await expect(response, 404))["error"]["reason"] == "WORKFLOW_NOT_FOUND"
    async with http.post(url, json=ORDER) as response:
        await expect(response, 404)
    async with http.get(f"/api/runs/{run['id']}/logs", headers=tenant.auth) as response:
        assert len((await expect(response, 200))["steps"]) == 2


async def test_signed_endpoint_rotation_and_the_delivery_log_over_http(
    http: aiohttp.ClientSession,
) -> None:
    tenant = await new_tenant(http)
    created = await _endpoint(http, tenant, WORKFLOW, generate_signing_secret=True)
    endpoint, key = created["webhook_endpoint"], created["signing_secret"]
    assert endpoint["signature_required"] is True
    old = f"/api/webhooks/{tenant.id}/{created['secret']}"
    body = b'{"id": "A-1", "items": []}'

    async with http.post(old, data=body, headers=_signed(key, body)) as response:
        await expect(response, 202)
    wrong = _signed(key, b"{}")
    async with http.post(old, data=body, headers=wrong) as response:
        assert (await expect(response, 401))["error"]["reason"] == "INVALID_SIGNATURE"
    stale = _signed(key, body, sent=time.time() - 600)
    async with http.post(old, data=body, headers=stale) as response:
        assert (await expect(response, 401))["error"]["reason"] == "STALE_SIGNATURE"

    rotate = f"/api/webhook-endpoints/{endpoint['id']}:rotate"
    async with http.post(rotate, json={"grace_period": "3600s"}, headers=tenant.auth) as response:
        rotated = await expect(response, 200)
    USED_SECRETS.add(rotated["secret"])
    new = f"/api/webhooks/{tenant.id}/{rotated['secret']}"
    assert rotated["webhook_endpoint"]["url"].endswith(new)
    for url in (old, new):
        async with http.post(url, data=body, headers=_signed(key, body)) as response:
            await expect(response, 202)

    patch = f"/api/webhook-endpoints/{endpoint['id']}"
    async with http.patch(patch, json={"enabled": False}, headers=tenant.auth) as response:
        assert (await expect(response, 200))["webhook_endpoint"]["enabled"] is False
    async with http.post(new, data=body, headers=_signed(key, body)) as response:
        assert (await expect(response, 404))["error"]["reason"] == "WEBHOOK_ENDPOINT_NOT_FOUND"
    async with http.delete(patch, headers=tenant.auth) as response:
        await expect(response, 200)

    log_path = "/api/webhook-deliveries"
    async with http.get(log_path, params={"endpoint_id": endpoint["id"]}, headers=tenant.auth) as r:
        deliveries = (await expect(r, 200))["webhook_deliveries"]
    assert [(d["http_status"], d["reason"]) for d in deliveries] == [
        (404, "WEBHOOK_ENDPOINT_NOT_FOUND"),
        (202, ""),
        (202, ""),
        (401, "STALE_SIGNATURE"),
        (401, "INVALID_SIGNATURE"),
        (202, ""),
    ]
    assert deliveries[0]["message"] == "the endpoint is disabled"
    assert all(d["receive_time"] and d["size_bytes"] == len(body) for d in deliveries[1:])

    async with http.post(
        "/api/api-keys", json={"name": "dev", "role": "member"}, headers=tenant.auth
    ) as response:
        member_key = (await expect(response, 201))["key"]
    USED_SECRETS.add(member_key)
    async with http.get(log_path, headers=Tenant(tenant.id, member_key).auth) as response:
        assert (await expect(response, 403))["error"]["reason"] == "ROLE_REQUIRED"


async def test_repeats_and_bodies_that_are_not_json_over_http(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http)
    wrap = {
        "name": "raw",
        "steps": [
            {
                "id": "shape",
                "type": "transform",
                "config": {"expression": "{kind: content_type, text: text}"},
            },
            {"id": "save", "type": "artifact", "config": {"name": "raw.json", "format": "json"}},
        ],
    }
    created = await _endpoint(http, tenant, wrap)
    url = f"/api/webhooks/{tenant.id}/{created['secret']}"
    headers = {"Content-Type": "text/plain", "Idempotency-Key": "delivery-1"}

    async with http.post(url, data=b"hello", headers=headers) as response:
        first = (await expect(response, 202))["run_id"]
    async with http.post(url, data=b"hello", headers=headers) as response:
        assert (await expect(response, 202))["run_id"] == first
    async with http.post(url, data=b"hello!", headers=headers) as response:
        assert (await expect(response, 422))["error"]["reason"] == "IDEMPOTENCY_KEY_REUSED"

    run = await wait_for_run(http, tenant, first)
    assert run["status"] == "succeeded", run
    assert await _artifact(http, tenant, first) == b'{"kind":"text/plain","text":"hello"}'
