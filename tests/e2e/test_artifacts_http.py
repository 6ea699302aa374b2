"""Artifacts over HTTP: metadata, the workflow filter, deletion by admins and the storage it frees."""

from __future__ import annotations

import uuid

import aiohttp

from tests.e2e.client import ORDER, Tenant, expect, new_endpoint, new_key, new_tenant, wait_for_run

METADATA = {
    "id",
    "run_id",
    "workflow_id",
    "step_id",
    "name",
    "media_type",
    "size_bytes",
    "sha256",
    "create_time",
    "expire_time",
}


async def storage_used(http: aiohttp.ClientSession, tenant: Tenant) -> int:
    async with http.get("/api/tenants/me", headers=tenant.auth) as response:
        return int((await expect(response, 200))["usage"]["artifact_storage_bytes"])


async def test_admins_delete_artifacts_and_get_their_storage_back(
    http: aiohttp.ClientSession,
) -> None:
    owner = await new_tenant(http)
    member = await new_key(http, owner, "member")
    admin = await new_key(http, owner, "admin")
    stranger = await new_tenant(http)
    endpoint, secret = await new_endpoint(http, owner)
    async with http.post(f"/api/webhooks/{owner.id}/{secret}", json=ORDER) as response:
        run = await wait_for_run(http, owner, (await expect(response, 202))["run_id"])
    assert run["status"] == "succeeded", run

    async with http.get(
        "/api/artifacts", params={"workflow_id": endpoint["workflow_id"]}, headers=member.auth
    ) as response:
        listed = await expect(response, 200)
    (artifact,) = listed["artifacts"]
    assert set(artifact) == METADATA
    assert (artifact["run_id"], artifact["workflow_id"]) == (run["id"], endpoint["workflow_id"])
    assert artifact["expire_time"] > artifact["create_time"]
    async with http.get(
        "/api/artifacts", params={"workflow_id": str(uuid.uuid4())}, headers=member.auth
    ) as response:
        assert (await expect(response, 200))["artifacts"] == []
    assert await storage_used(http, owner) == int(artifact["size_bytes"])

    path = f"/api/artifacts/{artifact['id']}"
    async with http.delete(path, headers=member.auth) as response:
        assert (await expect(response, 403))["error"]["reason"] == "ROLE_REQUIRED"
    async with http.delete(path, headers=stranger.auth) as response:
        assert (await expect(response, 404))["error"]["reason"] == "ARTIFACT_NOT_FOUND"
    async with http.get(path, headers=member.auth) as response:
        await expect(response, 200)

    async with http.delete(path, headers=admin.auth) as response:
        assert await expect(response, 200) == {}

    for gone in (path, f"{path}/download"):
        async with http.get(gone, headers=owner.auth) as response:
            assert response.status == 404, gone
    async with http.delete(path, headers=owner.auth) as response:
        await expect(response, 404)
    assert await storage_used(http, owner) == 0
    # The run and its logs are the run's, not the artifact's: they stay.
    async with http.get(f"/api/runs/{run['id']}/logs", headers=owner.auth) as response:
        steps = (await expect(response, 200))["steps"]
    assert [s["status"] for s in steps] == ["succeeded", "succeeded"]
