"""What end-to-end tests do as an HTTP client: tenants, workflows, endpoints, waiting for runs."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.e2e.conftest import ADMIN_TOKEN, USED_SECRETS

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WORKFLOW = {
    "name": "orders",
    "steps": [
        {
            "id": "shape",
            "type": "transform",
            "config": {"expression": "{order: id, total: sum(items[].price)}"},
        },
        {"id": "save", "type": "artifact", "config": {"name": "summary.json", "format": "json"}},
    ],
}

# The card number stands for what a real webhook body carries that must never be logged.
CARD = f"4111-{uuid.uuid4().hex}"
USED_SECRETS.add(CARD)
ORDER = {"id": "A-1001", "items": [{"price": 12.5}, {"price": 7.25}], "card": CARD}


@dataclass
class Tenant:
    id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def expect(response: aiohttp.ClientResponse, status: int) -> Any:
    """The JSON body, after checking the status (the body is in the failure message)."""
    body = await response.json()
    assert response.status == status, body
    return body


async def new_tenant(http: aiohttp.ClientSession, plan: str = "free") -> Tenant:
    async with http.post(
        "/api/tenants",
        json={"name": f"Acme {uuid.uuid4().hex[:6]}", "plan": plan},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as response:
        body = await expect(response, 201)
    USED_SECRETS.add(body["admin_key"])
    return Tenant(body["tenant"]["id"], body["admin_key"])


async def new_key(http: aiohttp.ClientSession, owner: Tenant, role: str) -> Tenant:
    """Another API key of the owner's tenant, with this role."""
    async with http.post(
        "/api/api-keys", json={"name": role, "role": role}, headers=owner.auth
    ) as response:
        body = await expect(response, 201)
    assert body["api_key"]["role"] == role
    USED_SECRETS.add(body["key"])
    return Tenant(owner.id, body["key"])


async def new_endpoint(http: aiohttp.ClientSession, tenant: Tenant) -> tuple[dict[str, Any], str]:
    async with http.post("/api/workflows", json=WORKFLOW, headers=tenant.auth) as response:
        workflow = (await expect(response, 201))["workflow"]
    async with http.post(
        "/api/webhook-endpoints",
        json={"workflow_id": workflow["id"], "name": "shop"},
        headers=tenant.auth,
    ) as response:
        created = await expect(response, 201)
    USED_SECRETS.add(created["secret"])
    return created["webhook_endpoint"], created["secret"]


async def wait_for_run(http: aiohttp.ClientSession, tenant: Tenant, run_id: str) -> dict[str, Any]:
    for _ in range(200):
        async with http.get(f"/api/runs/{run_id}", headers=tenant.auth) as response:
            run: dict[str, Any] = (await expect(response, 200))["run"]
        if run["status"] not in ("queued", "running"):
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish: {run}")
