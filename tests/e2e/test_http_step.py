"""An http_request step through the running suite: allowed by plan, sent by the worker under
AIAS_HTTP_STEP_ALLOW, its answer flowing into the next steps, its credentials never logged."""

from __future__ import annotations

import json
import uuid

import aiohttp

from tests.e2e.client import ORDER, expect, new_tenant, wait_for_run
from tests.e2e.conftest import USED_SECRETS
from tests.remote_fake import Remote


async def test_an_http_request_step_calls_out_and_its_answer_flows_on(
    http: aiohttp.ClientSession,
) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    USED_SECRETS.add(token)
    async with Remote().running() as remote:
        workflow = {
            "name": "notify",
            "steps": [
                {
                    "id": "call",
                    "type": "http_request",
                    "config": {
                        "method": "POST",
                        "url": f"{remote.url}/echo?order={{{{ input.id }}}}",
                        "headers": {"Authorization": f"Bearer {token}", "X-Run": "{{ run.id }}"},
                        "body": {"json": "{order: id, total: sum(items[].price)}"},
                        "timeout_seconds": 5,
                    },
                },
                {"id": "keep", "type": "transform", "config": {"expression": "body.body"}},
                {
                    "id": "save",
                    "type": "artifact",
                    "config": {"name": "sent.txt", "format": "text"},
                },
            ],
        }
        free = await new_tenant(http)
        async with http.post("/api/workflows", json=workflow, headers=free.auth) as response:
            refused = (await expect(response, 403))["error"]
        assert refused["reason"] == "PLAN_LIMIT"
        assert "http_request" in refused["message"]

        tenant = await new_tenant(http, "starter")
        async with http.post("/api/workflows", json=workflow, headers=tenant.auth) as response:
            created = (await expect(response, 201))["workflow"]
        async with http.post(
            "/api/webhook-endpoints",
            json={"workflow_id": created["id"], "name": "shop"},
            headers=tenant.auth,
        ) as response:
            secret = (await expect(response, 201))["secret"]
        USED_SECRETS.add(secret)
        async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=ORDER) as response:
            run_id = (await expect(response, 202))["run_id"]
        run = await wait_for_run(http, tenant, run_id)

    assert run["status"] == "succeeded", run
    (seen,) = remote.seen
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert (headers["authorization"], headers["x-run"]) == (f"Bearer {token}", run_id)
    assert seen["query"] == "order=A-1001"
    sent = json.dumps({"order": "A-1001", "total": 19.75}, separators=(",", ":"))
    assert seen["body"] == sent
    async with http.get(f"/api/runs/{run_id}/logs", headers=tenant.auth) as response:
        steps = (await expect(response, 200))["steps"]
    assert [(s["step_id"], s["status"]) for s in steps] == [
        ("call", "succeeded"),
        ("keep", "succeeded"),
        ("save", "succeeded"),
    ]
    assert steps[0]["message"] == f"POST {remote.url}/echo answered 200 OK"
    async with http.get(
        "/api/artifacts", params={"run_id": run_id}, headers=tenant.auth
    ) as response:
        (artifact,) = (await expect(response, 200))["artifacts"]
    async with http.get(
        f"/api/artifacts/{artifact['id']}/download", headers=tenant.auth
    ) as response:
        assert await response.read() == sent.encode()
