"""Runs over HTTP: following one as it happens (NDJSON and SSE), cancel, retry and list filters."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.e2e.client import OPERATOR, ORDER, Tenant, expect, new_endpoint, new_tenant


async def _events(
    http: aiohttp.ClientSession, tenant: Tenant, run_id: str, accept: str
) -> list[dict[str, Any]]:
    """Every item of the run's event stream, read until the stream ends."""
    headers = {**tenant.auth, "Accept": accept}
    async with http.get(f"/api/runs/{run_id}/events", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == accept
        body = (await response.read()).decode()
    if accept == "text/event-stream":
        return [json.loads(event.removeprefix("data: ")) for event in body.split("\n\n") if event]
    return [json.loads(line) for line in body.splitlines()]


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
async def test_a_run_is_followed_until_it_ends(http: aiohttp.ClientSession, accept: str) -> None:
    tenant = await new_tenant(http)
    _endpoint, secret = await new_endpoint(http, tenant)
    async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=ORDER) as response:
        run_id = (await expect(response, 202))["run_id"]

    items = await _events(http, tenant, run_id, accept)

    runs = [item["run"] for item in items if item["run"]]
    steps = [(item["step"]["step_id"], item["step"]["status"]) for item in items if item["step"]]
    assert items[0]["run"]["id"] == run_id
    assert runs[-1]["status"] == "succeeded"
    assert steps == [("shape", "succeeded"), ("save", "succeeded")]


async def test_cancel_retry_and_list_filters(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http, "enterprise")
    # No run of this tenant may run, so its runs stay queued until they are cancelled.
    async with http.patch(
        f"/api/tenants/{tenant.id}",
        json={"limit_overrides": {"concurrent_runs": 0}},
        headers=OPERATOR,
    ) as response:
        await expect(response, 200)
    endpoint, secret = await new_endpoint(http, tenant)
    async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=ORDER) as response:
        run_id = (await expect(response, 202))["run_id"]

    async with http.post(f"/api/runs/{run_id}:retry", headers=tenant.auth) as response:
        assert (await expect(response, 409))["error"]["reason"] == "RUN_NOT_FINISHED"
    async with http.post(f"/api/runs/{run_id}:cancel", headers=tenant.auth) as response:
        cancelled = (await expect(response, 200))["run"]
    assert cancelled["status"] == "cancelled"
    async with http.post(f"/api/runs/{run_id}:cancel", headers=tenant.auth) as response:
        assert (await expect(response, 409))["error"]["reason"] == "RUN_FINISHED"
    async with http.post(f"/api/runs/{run_id}:retry", headers=tenant.auth) as response:
        retried = (await expect(response, 202))["run"]
    assert (retried["status"], retried["retry_of"]) == ("queued", run_id)
    assert retried["workflow_version"] == cancelled["workflow_version"]

    async def listed(**query: str) -> list[str]:
        async with http.get("/api/runs", params=query, headers=tenant.auth) as response:
            return [run["id"] for run in (await expect(response, 200))["runs"]]

    workflow = endpoint["workflow_id"]
    assert await listed(status="cancelled") == [run_id]
    assert await listed(status="queued", workflow_id=workflow) == [retried["id"]]
    assert await listed(create_time_after=cancelled["create_time"]) == [retried["id"]]
    assert await listed(create_time_before=retried["create_time"]) == [run_id]
    async with http.get("/api/runs", params={"status": "lost"}, headers=tenant.auth) as response:
        assert (await expect(response, 400))["error"]["reason"] == "INVALID_FIELD_VALUE"
    async with http.post(f"/api/runs/{retried['id']}:cancel", headers=tenant.auth) as response:
        await expect(response, 200)
