"""Tenancy's public routes over HTTP: keys, members, roles, operator routes, limits as users see them."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.e2e.client import OPERATOR, Tenant, expect, new_endpoint, new_key, new_tenant
from tests.e2e.conftest import USED_SECRETS

# The documented bound for a revoked key (the gateway's key cache TTL); the push makes it ~instant.
REVOCATION_BOUND_SECONDS = 10.0


async def test_keys_are_created_listed_and_revoked_everywhere(http: aiohttp.ClientSession) -> None:
    owner = await new_tenant(http)
    async with http.post(
        "/api/api-keys", json={"name": "ci", "role": "member"}, headers=owner.auth
    ) as response:
        created = await expect(response, 201)
    USED_SECRETS.add(created["key"])
    member = Tenant(owner.id, created["key"])
    async with http.get("/api/workflows", headers=member.auth) as response:
        await expect(response, 200)
    async with http.get("/api/api-keys", headers=owner.auth) as response:
        listed = (await expect(response, 200))["api_keys"]
    shown = {k["id"]: k for k in listed}[created["api_key"]["id"]]
    assert set(shown) == {
        "id",
        "prefix",
        "name",
        "role",
        "member_id",
        "create_time",
        "last_used_time",
    }
    assert shown["last_used_time"] is not None
    assert member.key.startswith(shown["prefix"])

    async with http.delete(f"/api/api-keys/{created['api_key']['id']}", headers=owner.auth) as r:
        await expect(r, 200)
    revoked = time.monotonic()
    while True:
        async with http.get("/api/workflows", headers=member.auth) as response:
            if response.status == 401:
                assert (await response.json())["error"]["reason"] == "INVALID_API_KEY"
                break
        assert time.monotonic() - revoked < REVOCATION_BOUND_SECONDS
        await asyncio.sleep(0.05)
    # Tenancy's push evicts the key from the gateway's cache at once.
    assert time.monotonic() - revoked < 2.0


async def test_members_cannot_manage_keys_endpoints_or_people(http: aiohttp.ClientSession) -> None:
    owner = await new_tenant(http)
    member = await new_key(http, owner, "member")
    endpoint, _secret = await new_endpoint(http, owner)
    refused = [
        http.post("/api/api-keys", json={"name": "x"}, headers=member.auth),
        http.get("/api/api-keys", headers=member.auth),
        http.post("/api/members", json={"email": "a@example.com"}, headers=member.auth),
        http.post(
            "/api/webhook-endpoints",
            json={"workflow_id": endpoint["workflow_id"], "name": "x"},
            headers=member.auth,
        ),
    ]
    for request in refused:
        async with request as response:
            error = (await expect(response, 403))["error"]
        assert (error["reason"], error["status"]) == ("ROLE_REQUIRED", "PERMISSION_DENIED")
    async with http.get("/api/members", headers=member.auth) as response:
        await expect(response, 200)


async def test_admins_manage_members_and_owners_manage_admins(http: aiohttp.ClientSession) -> None:
    owner = await new_tenant(http)
    admin = await new_key(http, owner, "admin")
    async with http.post(
        "/api/members", json={"email": "bo@example.com", "role": "member"}, headers=admin.auth
    ) as response:
        bo = (await expect(response, 201))["member"]
    async with http.patch(
        f"/api/members/{bo['id']}", json={"role": "admin"}, headers=admin.auth
    ) as response:
        assert (await expect(response, 403))["error"]["reason"] == "OWNER_REQUIRED"
    async with http.patch(
        f"/api/members/{bo['id']}", json={"role": "admin"}, headers=owner.auth
    ) as response:
        assert (await expect(response, 200))["member"]["role"] == "admin"
    async with http.delete(f"/api/members/{bo['id']}", headers=admin.auth) as response:
        assert (await expect(response, 403))["error"]["reason"] == "OWNER_REQUIRED"
    async with http.delete(f"/api/members/{bo['id']}", headers=owner.auth) as response:
        await expect(response, 200)


async def test_tenant_b_never_reaches_tenant_a(http: aiohttp.ClientSession) -> None:
    a = await new_tenant(http)
    b = await new_tenant(http)
    async with http.post("/api/api-keys", json={"name": "a-key"}, headers=a.auth) as response:
        a_key = (await expect(response, 201))["api_key"]
    async with http.post(
        "/api/members", json={"email": "only-a@example.com"}, headers=a.auth
    ) as response:
        a_member = (await expect(response, 201))["member"]
    for method, path, body in (
        ("DELETE", f"/api/api-keys/{a_key['id']}", None),
        ("PATCH", f"/api/members/{a_member['id']}", {"name": "x"}),
        ("DELETE", f"/api/members/{a_member['id']}", None),
    ):
        async with http.request(method, path, json=body, headers=b.auth) as response:
            assert (await expect(response, 404))["error"]["status"] == "NOT_FOUND"
    for path, field in (("/api/api-keys", "api_keys"), ("/api/members", "members")):
        async with http.get(path, headers=b.auth) as response:
            listed = (await expect(response, 200))[field]
        assert a_key["id"] not in str(listed)
        assert a_member["id"] not in str(listed)
    async with http.get("/api/tenants/me", headers=b.auth) as response:
        assert (await expect(response, 200))["tenant"]["id"] == b.id
    # Tenant keys cannot use operator routes.
    async with http.patch(f"/api/tenants/{a.id}", json={"plan": "pro"}, headers=b.auth) as r:
        assert (await expect(r, 401))["error"]["reason"] == "INVALID_OPERATOR_TOKEN"


async def test_operator_suspends_and_resumes_a_tenant(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http)
    _endpoint, secret = await new_endpoint(http, tenant)
    async with http.get("/api/tenants?page_size=100", headers=OPERATOR) as response:
        assert (await expect(response, 200))["tenants"]
    async with http.patch(
        f"/api/tenants/{tenant.id}", json={"status": "suspended"}, headers=OPERATOR
    ) as response:
        assert (await expect(response, 200))["tenant"]["status"] == "suspended"
    for method, path, auth in (
        ("GET", "/api/workflows", tenant.auth),
        ("POST", f"/api/webhooks/{tenant.id}/{secret}", {}),
    ):
        for _ in range(40):
            async with http.request(method, path, json={"id": 1}, headers=auth) as response:
                if response.status == 403:
                    assert (await response.json())["error"]["reason"] == "TENANT_SUSPENDED"
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the suspended tenant was still served after 2 s")
    async with http.patch(
        f"/api/tenants/{tenant.id}", json={"status": "active"}, headers=OPERATOR
    ) as response:
        await expect(response, 200)
    for _ in range(40):
        async with http.get("/api/workflows", headers=tenant.auth) as response:
            if response.status == 200:
                break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the resumed tenant was still refused after 2 s")


async def test_webhook_rate_limit_answers_429_with_retry_after(http: aiohttp.ClientSession) -> None:
    tenant = await new_tenant(http, "enterprise")
    async with http.patch(
        f"/api/tenants/{tenant.id}",
        json={"limit_overrides": {"webhook_requests_per_second": 1, "webhook_burst": 3}},
        headers=OPERATOR,
    ) as response:
        limits = (await expect(response, 200))["limits"]
    assert (limits["webhook_burst"], limits["runs_per_month"]) == (3, None)
    _endpoint, secret = await new_endpoint(http, tenant)

    async def deliver() -> aiohttp.ClientResponse:
        async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json={"id": 1}) as response:
            await response.read()
            return response

    answers = await asyncio.gather(*(deliver() for _ in range(5)))
    assert sorted(r.status for r in answers) == [202, 202, 202, 429, 429]
    limited = next(r for r in answers if r.status == 429)
    assert 1 <= int(limited.headers["Retry-After"]) <= 3
    async with http.get("/api/tenants/me", headers=tenant.auth) as response:
        me = await expect(response, 200)
    assert (me["tenant"]["plan"], me["usage"]["runs"] >= 3) == ("enterprise", True)
