"""The dashboard against the running suite: sign-in, sessions, CSRF, isolation, and a browser."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, async_playwright
from playwright.async_api import expect as see

from aias.core.launcher import Stack
from tests.e2e.client import (
    OPERATOR,
    ORDER,
    WORKFLOW,
    Tenant,
    expect,
    new_key,
    new_tenant,
    wait_for_run,
)
from tests.e2e.conftest import USED_SECRETS
from tests.e2e.test_walking_skeleton import EXPECTED_ARTIFACT

CHROMIUM = shutil.which("chromium")
# Flags for a headless Chromium in a container, with a fresh profile that calls nowhere.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STRICT_WORKFLOW = {
    "name": "strict orders",
    "steps": [
        {
            "id": "check",
            "type": "validate",
            "config": {"schema": {"type": "object", "required": ["customer"]}},
        },
        {"id": "save", "type": "artifact", "config": {"name": "order.json", "format": "json"}},
    ],
}
SCHEMA_ERROR = "input does not match the schema at (root): 'customer' is a required property"
CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
# Any URL a page could load or send the browser to that is not on the gateway itself.
EXTERNAL = re.compile(r"""(?:https?:)?//[^\s"'<>]+|url\(\s*['"]?(?!/)[a-z]+:""", re.IGNORECASE)


@dataclass
class Scene:
    """A tenant with a succeeded run (one artifact) and a failed one, and a member's key."""

    tenant: Tenant
    member: Tenant
    succeeded: dict[str, Any]
    failed: dict[str, Any]
    artifact: dict[str, Any]


async def _run(http: aiohttp.ClientSession, tenant: Tenant, workflow: dict[str, Any]) -> Any:
    async with http.post("/api/workflows", json=workflow, headers=tenant.auth) as response:
        created = (await expect(response, 201))["workflow"]
    async with http.post(
        "/api/webhook-endpoints",
        json={"workflow_id": created["id"], "name": workflow["name"]},
        headers=tenant.auth,
    ) as response:
        secret = (await expect(response, 201))["secret"]
    USED_SECRETS.add(secret)
    async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=ORDER) as response:
        run_id = (await expect(response, 202))["run_id"]
    return await wait_for_run(http, tenant, run_id)


async def make_scene(http: aiohttp.ClientSession) -> Scene:
    tenant = await new_tenant(http)
    succeeded, failed = await asyncio.gather(
        _run(http, tenant, WORKFLOW), _run(http, tenant, STRICT_WORKFLOW)
    )
    assert (succeeded["status"], failed["status"]) == ("succeeded", "failed")
    async with http.get(
        "/api/artifacts", params={"run_id": succeeded["id"]}, headers=tenant.auth
    ) as response:
        (artifact,) = (await expect(response, 200))["artifacts"]
    return Scene(tenant, await new_key(http, tenant, "member"), succeeded, failed, artifact)


@pytest.fixture(scope="module")
async def scene(stack: Stack) -> AsyncIterator[Scene]:
    async with aiohttp.ClientSession(base_url=stack.gateway_url) as http:
        yield await make_scene(http)


@pytest.fixture(scope="module")
async def other_scene(stack: Stack) -> AsyncIterator[Scene]:
    async with aiohttp.ClientSession(base_url=stack.gateway_url) as http:
        yield await make_scene(http)


@asynccontextmanager
async def browser_session(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies, as a browser does (also for the gateway's IP address)."""
    async with aiohttp.ClientSession(
        base_url=stack.gateway_url, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as session:
        yield session


async def form_token(session: aiohttp.ClientSession, path: str) -> str:
    async with session.get(path) as response:
        assert response.status == 200, path
        found = CSRF.search(await response.text())
    assert found is not None, f"no form token on {path}"
    return found.group(1)


async def sign_in(session: aiohttp.ClientSession, key: str) -> aiohttp.ClientResponse:
    """Posts the sign-in form as a browser would; the answer is read, redirects followed."""
    token = await form_token(session, "/dashboard/login")
    async with session.post(
        "/dashboard/login", data={"csrf_token": token, "api_key": key, "next": ""}
    ) as response:
        await response.read()
    return response


async def page(session: aiohttp.ClientSession, path: str, status: int = 200) -> str:
    async with session.get(path) as response:
        text = await response.text()
        assert response.status == status, (path, text[:2000])
    return text


def _cookie_attributes(header: str) -> dict[str, str]:
    name_value, *attributes = header.split(";")
    found = {"": name_value.strip()}
    for attribute in attributes:
        key, _, value = attribute.strip().partition("=")
        found[key.lower()] = value
    return found


async def test_sign_in_sets_an_encrypted_http_only_lax_cookie_that_expires(
    stack: Stack, scene: Scene
) -> None:
    async with browser_session(stack) as session:
        token = await form_token(session, "/dashboard/login")
        async with session.post(
            "/dashboard/login",
            data={"csrf_token": token, "api_key": scene.tenant.key, "next": "/dashboard/runs"},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/dashboard/runs"
            cookie = _cookie_attributes(response.headers["Set-Cookie"])

        assert cookie[""].startswith("aias_dashboard=")
        assert scene.tenant.key not in cookie[""], "the key is encrypted in the cookie"
        assert "httponly" in cookie
        assert cookie["samesite"] == "Lax"
        assert cookie["path"] == "/dashboard"
        assert cookie["max-age"] == str(8 * 3600)
        assert "expires" in cookie
        # The suite is served over plain HTTP (AIAS_PUBLIC_URL http://...): no Secure flag.
        assert "secure" not in cookie
        assert "Diagnostics" in await page(session, "/dashboard/diagnostics")


async def test_sign_out_ends_the_session(stack: Stack, scene: Scene) -> None:
    async with browser_session(stack) as session:
        assert (await sign_in(session, scene.tenant.key)).url.path == "/dashboard/diagnostics"
        token = await form_token(session, "/dashboard/runs")
        async with session.post(
            "/dashboard/logout", data={"csrf_token": token}, allow_redirects=False
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/dashboard/login?ended=signed_out"
            assert _cookie_attributes(response.headers["Set-Cookie"])["max-age"] == "0"
        async with session.get("/dashboard/diagnostics", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"].startswith("/dashboard/login?next=")


async def test_forms_without_the_sessions_token_are_refused(stack: Stack, scene: Scene) -> None:
    async with browser_session(stack) as session, browser_session(stack) as elsewhere:
        refused = "security token is missing or out of date"
        # No session at all, then a token from another session: both refused, nobody signed in.
        async with session.post("/dashboard/login", data={"api_key": scene.tenant.key}) as r:
            assert (r.status, refused in await r.text()) == (403, True)
        foreign = await form_token(elsewhere, "/dashboard/login")
        await form_token(session, "/dashboard/login")
        async with session.post(
            "/dashboard/login", data={"api_key": scene.tenant.key, "csrf_token": foreign}
        ) as response:
            assert response.status == 403
        await page(session, "/dashboard/login")

        await sign_in(session, scene.tenant.key)
        for data in ({}, {"csrf_token": ""}, {"csrf_token": foreign}):
            async with session.post("/dashboard/logout", data=data) as response:
                assert response.status == 403
                assert response.headers["Content-Type"].startswith("text/html")
        # Refused sign-outs changed nothing: the session still works.
        await page(session, "/dashboard/integrations")


async def test_a_members_key_is_refused_and_diagnostics_json_is_for_admins(
    stack: Stack, scene: Scene, http: aiohttp.ClientSession
) -> None:
    async with browser_session(stack) as session:
        response = await sign_in(session, scene.member.key)
        assert response.status == 403
        assert "The dashboard is for admins" in await response.text()
        async with session.get("/dashboard/diagnostics", allow_redirects=False) as after:
            assert after.status == 303, "no session was started"

    async with http.get("/api/diagnostics", headers=scene.member.auth) as refused:
        assert (await expect(refused, 403))["error"]["reason"] == "ROLE_REQUIRED"
    async with http.get("/api/diagnostics") as anonymous:
        assert anonymous.status == 401
    async with http.get("/api/integrations", headers=scene.member.auth) as catalog:
        types = {i["type"]: i["status"] for i in (await expect(catalog, 200))["integrations"]}
    assert (types["transform"], types["slack"]) == ("available", "coming_soon")


async def test_diagnostics_json_has_every_panel(scene: Scene, http: aiohttp.ClientSession) -> None:
    async with http.get("/api/diagnostics", headers=scene.tenant.auth) as response:
        body = await expect(response, 200)
    panels = body["panels"]
    assert body["tenant_id"] == scene.tenant.id
    assert {name: p["available"] for name, p in panels.items()} == {
        "services": True,
        "plan": True,
        "billing": True,
        "run_stats": True,
        "recent_runs": True,
        "webhook_endpoints": True,
        "webhook_deliveries": True,
        "alerts": True,
    }
    services = {
        s["name"]: (s["state"], bool(s["version"])) for s in panels["services"]["data"]["services"]
    }
    assert services == dict.fromkeys(
        ("gateway", "tenancy", "execution", "artifacts", "billing"), ("serving", True)
    )
    assert panels["plan"]["data"]["tenant"]["plan"] == "free"
    assert panels["billing"]["data"]["account"]["past_due"] is False
    stats = panels["run_stats"]["data"]
    hour = {row["status"]: row["count"] for row in stats["last_hour"]}
    assert (hour["succeeded"], hour["failed"], stats["queued_runs"]) == (1, 1, 0)
    (failure,) = stats["latest_failures"]
    assert (failure["run"]["id"], failure["step_id"], failure["error"]) == (
        scene.failed["id"],
        "check",
        SCHEMA_ERROR,
    )
    recent = {run["id"] for run in panels["recent_runs"]["data"]["runs"]}
    assert recent == {scene.succeeded["id"], scene.failed["id"]}
    assert len(panels["webhook_endpoints"]["data"]["webhook_endpoints"]) == 2
    accepted = panels["webhook_deliveries"]["data"]["webhook_deliveries"]
    assert {(d["run_id"], d["http_status"]) for d in accepted} == {
        (scene.succeeded["id"], 202),
        (scene.failed["id"], 202),
    }
    assert panels["alerts"]["data"] == {"alert_destinations": [], "alert_deliveries": []}


async def _signed_in_until_ended(session: aiohttp.ClientSession) -> str:
    """Where the dashboard sends the session once its key or tenant no longer passes."""
    for _ in range(100):
        async with session.get("/dashboard/diagnostics", allow_redirects=False) as response:
            if response.status == 303:
                return response.headers["Location"]
            assert response.status == 200
        await asyncio.sleep(0.1)
    raise AssertionError("the session did not end within 10 s")


async def test_a_revoked_key_or_suspended_tenant_ends_the_session(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    owner = await new_tenant(http)
    async with http.post(
        "/api/api-keys", json={"name": "laptop", "role": "admin"}, headers=owner.auth
    ) as response:
        created = await expect(response, 201)
    USED_SECRETS.add(created["key"])
    async with browser_session(stack) as revoked, browser_session(stack) as suspended:
        await sign_in(revoked, created["key"])
        await sign_in(suspended, owner.key)
        await page(revoked, "/dashboard/diagnostics")

        async with http.delete(
            f"/api/api-keys/{created['api_key']['id']}", headers=owner.auth
        ) as response:
            await expect(response, 200)
        assert await _signed_in_until_ended(revoked) == "/dashboard/login?ended=revoked"
        assert "no longer valid" in await page(revoked, "/dashboard/login?ended=revoked")
        async with revoked.get("/dashboard/runs", allow_redirects=False) as response:
            assert response.headers["Location"].startswith("/dashboard/login?next=")

        async with http.patch(
            f"/api/tenants/{owner.id}", json={"status": "suspended"}, headers=OPERATOR
        ) as response:
            await expect(response, 200)
        assert await _signed_in_until_ended(suspended) == "/dashboard/login?ended=suspended"


async def test_tenant_b_never_sees_tenant_a_on_any_page(
    stack: Stack, scene: Scene, other_scene: Scene
) -> None:
    a, b = scene, other_scene
    secrets_of_a = {
        a.tenant.id,
        a.succeeded["id"],
        a.failed["id"],
        a.succeeded["workflow_id"],
        a.failed["workflow_id"],
        a.artifact["id"],
        a.artifact["sha256"],
    }
    async with browser_session(stack) as session:
        await sign_in(session, b.tenant.key)
        seen = {
            path: await page(session, path, status)
            for path, status in (
                ("/dashboard/diagnostics", 200),
                ("/dashboard/runs", 200),
                ("/dashboard/runs?status=failed", 200),
                (f"/dashboard/runs?workflow_id={a.failed['workflow_id']}", 200),
                (f"/dashboard/runs/{b.failed['id']}", 200),
                (f"/dashboard/runs/{a.failed['id']}", 404),
                (f"/dashboard/runs/{a.succeeded['id']}", 404),
                (f"/dashboard/artifacts/{a.artifact['id']}/download", 404),
                ("/dashboard/integrations", 200),
            )
        }
        async with session.get("/api/diagnostics", headers=b.tenant.auth) as response:
            seen["/api/diagnostics"] = await response.text()

    assert b.failed["id"] in seen["/dashboard/diagnostics"]
    assert SCHEMA_ERROR.replace("'", "&#39;") in seen["/dashboard/diagnostics"]
    for path, text in seen.items():
        # A's ids may appear only where B typed them: in the path it asked for.
        leaked = {secret for secret in secrets_of_a if secret in text and secret not in path}
        assert leaked == set(), f"{path} shows tenant A's {leaked}"


async def test_no_page_names_an_external_url(stack: Stack, scene: Scene) -> None:
    async with browser_session(stack) as session:
        pages = {"/dashboard/login": await page(session, "/dashboard/login")}
        await sign_in(session, scene.tenant.key)
        for path in (
            "/dashboard/diagnostics",
            "/dashboard/runs",
            "/dashboard/runs?status=failed",
            f"/dashboard/runs/{scene.succeeded['id']}",
            f"/dashboard/runs/{scene.failed['id']}",
            "/dashboard/runs/00000000-0000-0000-0000-000000000000",
            "/dashboard/integrations",
            "/dashboard/static/dashboard.css",
        ):
            async with session.get(path) as response:
                pages[path] = await response.text()
                if not path.endswith(".css"):
                    policy = response.headers["Content-Security-Policy"]
                    assert "default-src 'none'" in policy
                    assert response.headers["Cache-Control"] == "no-store"
    for path, text in pages.items():
        assert EXTERNAL.findall(text) == [], path
        assert "<script" not in text, path


# The page's cumulative layout shift since it loaded, as Chromium measures it.
LAYOUT_SHIFT = """() => new Promise(resolve => {
  let total = 0;
  new PerformanceObserver(list => {
    for (const entry of list.getEntries()) total += entry.value;
  }).observe({type: "layout-shift", buffered: true});
  setTimeout(() => resolve(total), 300);
})"""


async def _panel_boxes(page: Page) -> list[Any]:
    return [await panel.bounding_box() for panel in await page.locator(".panel").all()]


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (make test installs Debian's chromium as root)"
)
async def test_an_admin_uses_the_dashboard_in_a_browser(
    stack: Stack, scene: Scene, tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            desk = await browser.new_context(
                base_url=stack.gateway_url, viewport={"width": 1280, "height": 900}
            )
            tab = await desk.new_page()

            await tab.goto("/dashboard/diagnostics")
            await see(tab).to_have_url(re.compile(r"/dashboard/login\?next="))
            await tab.screenshot(path=shots / "01-sign-in.png", full_page=True)
            await tab.fill("#api_key", scene.tenant.key)
            await tab.click("main button[type=submit]")
            await see(tab).to_have_url(re.compile(r"/dashboard/diagnostics$"))
            await see(tab.locator(".panel-recent_runs")).to_contain_text(scene.failed["id"][:8])
            failures = tab.locator(".panel-run_stats .failures")
            await see(failures).to_contain_text("check")
            await see(failures).to_contain_text(SCHEMA_ERROR)
            await see(tab.locator(".panel-services")).not_to_contain_text("unavailable")
            await tab.screenshot(path=shots / "02-diagnostics.png", full_page=True)

            before = await _panel_boxes(tab)
            await tab.reload()
            assert await tab.evaluate(LAYOUT_SHIFT) < 0.01
            assert await _panel_boxes(tab) == before

            await tab.click("nav >> text=Integrations")
            await see(tab.locator(".badge-soon").first).to_have_text("Coming soon")
            await see(tab.locator(".integration", has_text="Slack message")).to_contain_text(
                "Coming soon"
            )
            await tab.screenshot(path=shots / "03-integrations.png", full_page=True)

            await tab.click("nav >> text=Runs")
            await see(tab.locator("table.runs tbody tr")).to_have_count(2)
            await tab.screenshot(path=shots / "04-runs.png", full_page=True)
            await tab.select_option("select[name=status]", "failed")
            await tab.click("form.filters button")
            await see(tab.locator("table.runs tbody tr")).to_have_count(1)
            await tab.screenshot(path=shots / "05-runs-failed.png", full_page=True)

            await tab.click(f"text={scene.failed['id'][:8]}")
            step = tab.locator(".timeline .step", has_text="check")
            await see(step).to_contain_text("failed")
            await see(step.locator("pre.error")).to_have_text(SCHEMA_ERROR)
            await tab.screenshot(path=shots / "06-run-failed.png", full_page=True)

            await tab.goto(f"/dashboard/runs/{scene.succeeded['id']}")
            await see(tab.locator(".timeline .step")).to_have_count(2)
            await see(tab.locator(".timeline")).to_contain_text("wrote summary.json")
            async with tab.expect_download() as downloading:
                await tab.get_by_role("link", name="summary.json").click()
            download = await downloading.value
            assert download.suggested_filename == "summary.json"
            saved = Path(await download.path())
            assert await asyncio.to_thread(saved.read_bytes) == EXPECTED_ARTIFACT
            await tab.screenshot(path=shots / "07-run-succeeded.png", full_page=True)

            phone = await browser.new_context(
                base_url=stack.gateway_url,
                viewport={"width": 390, "height": 844},
                storage_state=await desk.storage_state(),
            )
            small = await phone.new_page()
            for name, path in (
                ("08-diagnostics-phone", "/dashboard/diagnostics"),
                ("09-run-phone", f"/dashboard/runs/{scene.failed['id']}"),
            ):
                await small.goto(path)
                width = await small.evaluate("() => document.documentElement.scrollWidth")
                assert width <= 390, f"{path} is {width} px wide on a phone"
                await small.screenshot(path=shots / f"{name}.png", full_page=True)

            await tab.click("text=Sign out")
            await see(tab.locator(".notice")).to_have_text("You are signed out.")
            await tab.screenshot(path=shots / "10-signed-out.png", full_page=True)
            await tab.goto("/dashboard/runs")
            await see(tab).to_have_url(re.compile(r"/dashboard/login\?next="))

            await tab.fill("#api_key", scene.member.key)
            await tab.click("main button[type=submit]")
            await see(tab.locator(".notice-error")).to_contain_text("The dashboard is for admins")
            await tab.screenshot(path=shots / "11-member-refused.png", full_page=True)
        finally:
            await browser.close()
    assert len(list(shots.glob("*.png"))) == 11
