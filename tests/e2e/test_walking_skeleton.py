"""The core path over HTTP, every hop a real RPC between real processes."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest

from tests.e2e.client import ORDER, expect, new_endpoint, new_tenant, wait_for_run

EXPECTED_ARTIFACT = b'{"order":"A-1001","total":19.75}'


async def test_webhook_to_artifact(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http)
    endpoint, secret = await new_endpoint(http, tenant)
    assert endpoint["url"].endswith(f"/api/webhooks/{tenant.id}/{secret}")
    assert set(endpoint) == {
        "id",
        "tenant_id",
        "workflow_id",
        "name",
        "enabled",
        "url",
        "create_time",
        "signature_required",
        "previous_secret_expire_time",
    }

    async with http.get(
        "/api/webhook-endpoints", params={"tenant_id": tenant.id}, headers=tenant.auth
    ) as response:
        listed = await expect(response, 200)
    assert [e["id"] for e in listed["webhook_endpoints"]] == [endpoint["id"]]
    assert listed["next_page_token"] == ""
    assert secret not in str(listed)

    async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=ORDER) as response:
        accepted = await expect(response, 202)
    assert accepted["status"] == "queued"

    run = await wait_for_run(http, tenant, accepted["run_id"])
    assert run["status"] == "succeeded", run
    assert run["workflow_id"] == endpoint["workflow_id"]
    assert run["workflow_version"] == 1
    assert run["attempt"] == 1
    assert run["error"] == ""
    assert all(run[key] for key in ("create_time", "start_time", "end_time"))

    async with http.get(f"/api/runs/{run['id']}/logs", headers=tenant.auth) as response:
        steps = (await expect(response, 200))["steps"]
    assert [(s["step_id"], s["type"], s["status"]) for s in steps] == [
        ("shape", "transform", "succeeded"),
        ("save", "artifact", "succeeded"),
    ]
    assert steps[0]["output_sha256"] == hashlib.sha256(EXPECTED_ARTIFACT).hexdigest()
    assert steps[0]["output_bytes"] == len(EXPECTED_ARTIFACT)

    async with http.get(
        "/api/artifacts", params={"run_id": run["id"]}, headers=tenant.auth
    ) as response:
        artifacts = (await expect(response, 200))["artifacts"]
    assert len(artifacts) == 1
    artifact = artifacts[0]
    assert (artifact["name"], artifact["step_id"], artifact["media_type"]) == (
        "summary.json",
        "save",
        "application/json",
    )
    assert artifact["sha256"] == hashlib.sha256(EXPECTED_ARTIFACT).hexdigest()
    assert artifact["size_bytes"] == len(EXPECTED_ARTIFACT)

    async with http.get(f"/api/artifacts/{artifact['id']}", headers=tenant.auth) as response:
        assert (await expect(response, 200))["artifact"] == artifact

    async with http.get(
        f"/api/artifacts/{artifact['id']}/download", headers=tenant.auth
    ) as response:
        assert response.status == 200
        assert await response.read() == EXPECTED_ARTIFACT
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["Content-Length"] == str(len(EXPECTED_ARTIFACT))
        assert response.headers["ETag"] == f'"{artifact["sha256"]}"'


async def test_body_over_the_plan_limit_is_413_and_queues_nothing(
    http: aiohttp.ClientSession,
) -> None:
    tenant = await new_tenant(http)
    _endpoint, secret = await new_endpoint(http, tenant)
    big = {"id": "x", "items": [], "note": "x" * (300 * 1024)}
    async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=big) as response:
        assert (await expect(response, 413))["error"]["reason"] == "PAYLOAD_TOO_LARGE"
    async with http.get("/api/runs", headers=tenant.auth) as response:
        assert (await expect(response, 200))["runs"] == []


async def test_tenant_sees_itself_with_its_plan(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http)
    async with http.get("/api/tenants/me", headers=tenant.auth) as response:
        body = await expect(response, 200)
    assert body["tenant"]["id"] == tenant.id
    assert (body["tenant"]["plan"], body["tenant"]["status"]) == ("free", "active")
    assert body["limits"]["webhook_payload_bytes"] == 256 * 1024
    assert body["limits"]["allowed_step_types"] == {
        "types": ["artifact", "filter", "template", "transform", "validate"]
    }
    assert (body["usage"]["runs"], body["role"]) == (0, "owner")
    assert "admin_key" not in body


async def test_same_input_gives_byte_equal_artifacts(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http)
    _endpoint, secret = await new_endpoint(http, tenant)
    digests = set()
    for _ in range(2):
        async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=ORDER) as response:
            run = await wait_for_run(http, tenant, (await expect(response, 202))["run_id"])
        async with http.get(
            "/api/artifacts", params={"run_id": run["id"]}, headers=tenant.auth
        ) as response:
            digests.add((await expect(response, 200))["artifacts"][0]["sha256"])
    assert digests == {hashlib.sha256(EXPECTED_ARTIFACT).hexdigest()}


async def test_wrong_tenant_or_secret_is_the_same_404(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http)
    other = await new_tenant(http)
    _endpoint, secret = await new_endpoint(http, tenant)
    bodies = []
    for path in (
        f"/api/webhooks/{tenant.id}/not-the-secret",
        f"/api/webhooks/{other.id}/{secret}",
        f"/api/webhooks/not-a-uuid/{secret}",
    ):
        async with http.post(path, json=ORDER) as response:
            error = (await expect(response, 404))["error"]
        bodies.append((error["reason"], error["message"]))
    assert len(set(bodies)) == 1
    assert bodies[0][0] == "WEBHOOK_ENDPOINT_NOT_FOUND"
    async with http.get("/api/runs", headers=tenant.auth) as response:
        assert (await expect(response, 200))["runs"] == []


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer aias_0_0_x", "Basic abc"])
async def test_missing_or_bad_api_key_is_401(
    http: aiohttp.ClientSession, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    async with http.get("/api/workflows", headers=headers) as response:
        error = (await expect(response, 401))["error"]
    assert error["status"] == "UNAUTHENTICATED"
    assert error["request_id"]


async def test_operator_route_needs_the_operator_token(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http)
    for headers in ({}, tenant.auth):
        async with http.post("/api/tenants", json={"name": "x"}, headers=headers) as response:
            assert response.status == 401


async def test_another_tenants_run_and_artifact_are_404(http: aiohttp.ClientSession) -> None:
    owner = await new_tenant(http)
    stranger = await new_tenant(http)
    _endpoint, secret = await new_endpoint(http, owner)
    async with http.post(f"/api/webhooks/{owner.id}/{secret}", json=ORDER) as response:
        run = await wait_for_run(http, owner, (await expect(response, 202))["run_id"])
    async with http.get(
        "/api/artifacts", params={"run_id": run["id"]}, headers=owner.auth
    ) as response:
        artifact_id = (await expect(response, 200))["artifacts"][0]["id"]
    for path in (
        f"/api/runs/{run['id']}",
        f"/api/runs/{run['id']}/logs",
        f"/api/artifacts/{artifact_id}",
        f"/api/artifacts/{artifact_id}/download",
    ):
        async with http.get(path, headers=stranger.auth) as response:
            assert response.status == 404, path
    async with http.get(
        "/api/artifacts", params={"run_id": run["id"]}, headers=stranger.auth
    ) as response:
        assert (await expect(response, 200))["artifacts"] == []


async def test_listing_another_tenants_endpoints_is_refused(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http)
    other = await new_tenant(http)
    async with http.get(
        "/api/webhook-endpoints", params={"tenant_id": other.id}, headers=tenant.auth
    ) as response:
        assert (await expect(response, 403))["error"]["reason"] == "TENANT_MISMATCH"


async def test_wrong_method_is_405_with_allow(http: aiohttp.ClientSession) -> None:
    async with http.delete("/api/stripe/webhook") as response:
        error = (await expect(response, 405))["error"]
        assert response.headers["Allow"] == "POST"
    assert error["status"]
    async with http.get("/api/no-such-thing") as response:
        await expect(response, 404)


async def test_bad_workflow_gets_a_reason_and_nothing_is_stored(
    http: aiohttp.ClientSession,
) -> None:
    tenant = await new_tenant(http)
    bad = {"name": "x", "steps": [{"id": "s", "type": "slack", "config": {}}]}
    async with http.post("/api/workflows", json=bad, headers=tenant.auth) as response:
        assert (await expect(response, 400))["error"]["reason"] == "STEP_TYPE_COMING_SOON"
    async with http.get("/api/workflows", headers=tenant.auth) as response:
        assert (await expect(response, 200))["workflows"] == []


async def test_idempotency_key_returns_the_first_run(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http)
    _endpoint, secret = await new_endpoint(http, tenant)
    headers = {"Idempotency-Key": "delivery-1"}
    async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=ORDER, headers=headers) as r:
        first = (await expect(r, 202))["run_id"]
    async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=ORDER, headers=headers) as r:
        assert r.status == 202  # as the first answer was
        assert (await r.json())["run_id"] == first
    async with http.get("/api/runs", headers=tenant.auth) as response:
        assert [run["id"] for run in (await expect(response, 200))["runs"]] == [first]


async def test_health_endpoints(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
    async with http.get("/readyz") as response:
        body = await expect(response, 200)
    assert set(body["backends"]) == {"tenancy", "execution", "artifacts", "billing"}
