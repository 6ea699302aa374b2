"""The dashboard against fake backends: panels that degrade, deadlines, run actions, filters."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from pytest_aiohttp import AiohttpClient

from aias.artifacts.v1 import artifacts_service_pb2 as artifacts_pb
from aias.core.context import Caller
from aias.execution.v1 import execution_service_pb2 as execution_pb
from aias.gateway.app import ENTITLEMENT_CHANGES, init_app
from aias.gateway.backends import Backends
from aias.gateway.dashboard.actions import RunAction, offered
from aias.gateway.dashboard.client import Reader, Stubs
from aias.gateway.dashboard.panels import PANELS, load_panels, usage_bar
from aias.gateway.dashboard.render import age, duration, parse_time, size, utc
from aias.gateway.dashboard.state import DASHBOARD
from aias.gateway.server import serving
from tests.conftest import INTERNAL_TOKEN
from tests.unit.test_gateway_app import (
    API_KEY,
    CONNECT_SECONDS,
    TENANT_ID,
    FakeArtifacts,
    FakeExecution,
    Fakes,
    gateway_settings,
    running_fakes,
)
from tests.unit.test_gateway_hostile import exchange, request

Client = TestClient[Request, Application]
CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


class SlowExecution(FakeExecution):
    """Answers a run's log; when `hang` is set, hangs on the run statistics as an overloaded
    backend would (otherwise they are empty)."""

    hang = False

    async def ListRunLogs(
        self, request: execution_pb.ListRunLogsRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.ListRunLogsResponse:
        return execution_pb.ListRunLogsResponse()

    async def GetRunStats(
        self, request: execution_pb.GetRunStatsRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.GetRunStatsResponse:
        if self.hang:
            await asyncio.sleep(30)
        return execution_pb.GetRunStatsResponse()


def _stamped(message: Any, field: str, seconds: int) -> Any:
    getattr(message, field).FromSeconds(seconds)
    return message


class ListingExecution(SlowExecution):
    """Also lists an endpoint, its deliveries (one to an endpoint since deleted) and alerts."""

    async def ListWebhookEndpoints(
        self, request: execution_pb.ListWebhookEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.ListWebhookEndpointsResponse:
        endpoint = execution_pb.WebhookEndpoint(id="ep-1", name="shop", enabled=True)
        return execution_pb.ListWebhookEndpointsResponse(webhook_endpoints=[endpoint])

    async def ListWebhookDeliveries(
        self, request: execution_pb.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.ListWebhookDeliveriesResponse:
        accepted = execution_pb.WebhookDelivery(
            id="d-1", endpoint_id="ep-1", http_status=202, size_bytes=2048, run_id="run-accepted"
        )
        refused = execution_pb.WebhookDelivery(
            id="d-2",
            endpoint_id="ep-gone-1",
            http_status=401,
            reason="INVALID_SIGNATURE",
            message="no signature in webhook-signature matches",
            size_bytes=10,
        )
        return execution_pb.ListWebhookDeliveriesResponse(
            webhook_deliveries=[
                _stamped(accepted, "receive_time", 1714557600),
                _stamped(refused, "receive_time", 1714557500),
            ]
        )

    async def ListAlertDestinations(
        self, request: execution_pb.ListAlertDestinationsRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.ListAlertDestinationsResponse:
        destination = execution_pb.AlertDestination(
            id="ad-1", url="https://ops.example.com/hooks/aias?token=t0p", events=["run.failed"]
        )
        return execution_pb.ListAlertDestinationsResponse(
            alert_destinations=[_stamped(destination, "create_time", 1714550000)]
        )

    async def ListAlertDeliveries(
        self, request: execution_pb.ListAlertDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> execution_pb.ListAlertDeliveriesResponse:
        alert = execution_pb.AlertDelivery(
            id="al-1",
            destination_id="ad-1",
            event_type="run.failed",
            state=execution_pb.ALERT_DELIVERY_STATE_PENDING,
            attempt_count=1,
            last_http_status=503,
            last_error="ALERT_NOT_ACCEPTED: answered 503 Service Unavailable",
            attempts=[
                _stamped(
                    execution_pb.AlertAttempt(
                        attempt=1,
                        http_status=503,
                        error="ALERT_NOT_ACCEPTED: answered 503 Service Unavailable",
                        duration_ms=42,
                    ),
                    "attempt_time",
                    1714557610,
                )
            ],
        )
        alert.payload.update({"type": "run.failed", "data": {"run_id": "run-failed-1"}})
        _stamped(alert, "create_time", 1714557605)
        _stamped(alert, "next_attempt_time", 1714557630)
        return execution_pb.ListAlertDeliveriesResponse(alert_deliveries=[alert])


class ListingArtifacts(FakeArtifacts):
    async def ListArtifacts(
        self, request: artifacts_pb.ListArtifactsRequest, context: grpc.aio.ServicerContext
    ) -> artifacts_pb.ListArtifactsResponse:
        return artifacts_pb.ListArtifactsResponse()


@dataclass
class DashboardFakes(Fakes):
    execution: FakeExecution = field(default_factory=ListingExecution)
    artifacts: FakeArtifacts = field(default_factory=ListingArtifacts)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with running_fakes(DashboardFakes()) as running:
        yield running


async def _client(aiohttp_client: AiohttpClient, fakes: Fakes, **settings: str) -> Client:
    client = await aiohttp_client(init_app(gateway_settings(fakes.addresses, **settings)))
    await asyncio.wait_for(client.app[ENTITLEMENT_CHANGES].connected.wait(), CONNECT_SECONDS)
    return client


@pytest.fixture
async def client(fakes: Fakes, aiohttp_client: AiohttpClient) -> Client:
    return await _client(aiohttp_client, fakes)


async def _token(client: Client, path: str) -> str:
    response = await client.get(path)
    found = CSRF.search(await response.text())
    assert found is not None, path
    return found.group(1)


async def _sign_in(client: Client) -> None:
    token = await _token(client, "/dashboard/login")
    response = await client.post(
        "/dashboard/login",
        data={"csrf_token": token, "api_key": API_KEY, "next": ""},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard/diagnostics"


# --- rendering ----------------------------------------------------------------------------


def test_times_are_utc_with_their_age() -> None:
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert utc("2026-11-26T11:57:00.123456789Z") == "2026-11-26 11:57:00 UTC"
    assert parse_time("2026-11-26T13:57:00+02:00") == datetime(2026, 11, 26, 11, 57, tzinfo=UTC)
    assert utc(None) == "—"
    assert [age(t, now) for t in ("2026-11-26T11:59:58Z", "2026-11-26T11:59:18Z")] == [
        "just now",
        "42 s ago",
    ]
    assert age("2026-11-26T09:00:00Z", now) == "3 h ago"
    assert age("2026-11-24T11:00:00Z", now) == "2 d ago"
    assert age("2026-12-01T00:00:00Z", now) == "in 4 d"
    assert age(None, now) == ""


def test_durations_and_sizes_read_naturally() -> None:
    assert [duration(ms) for ms in (0, 850, 1234, 125_000, 3_780_000)] == [
        "0 ms",
        "850 ms",
        "1.2 s",
        "2 min 5 s",
        "1 h 3 min",
    ]
    assert [size(n) for n in (None, 512, 1536, 100 * 1024**2, 5 * 1024**5)] == [
        "—",
        "512 B",
        "1.5 KiB",
        "100.0 MiB",
        "5120.0 TiB",
    ]


def test_usage_bars_are_capped_and_say_when_there_is_no_limit() -> None:
    assert usage_bar("Runs", "count", 64, 1000)["percent"] == pytest.approx(6.4)
    assert usage_bar("Runs", "count", 5000, 1000)["percent"] == 100.0
    assert usage_bar("Runs", "count", 1, 0)["percent"] == 100.0
    assert usage_bar("Runs", "count", 1, None)["percent"] is None


# --- panels -------------------------------------------------------------------------------


async def test_a_failing_backend_leaves_its_panel_unavailable_not_the_page(
    client: Client, fakes: Fakes
) -> None:
    assert isinstance(fakes.execution, SlowExecution)
    fakes.execution.hang = True
    await _sign_in(client)
    started = time.monotonic()
    response = await client.get("/dashboard/diagnostics")
    elapsed = time.monotonic() - started

    text = await response.text()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    # Tenancy answers; billing lacks the RPC, execution ListRuns; execution's stats hang past
    # the deadline.
    assert "Acme" in text
    panels = re.findall(r'<section class="card panel panel-(\w+)".*?</section>', text, re.S)
    assert panels == [panel.name for panel in PANELS]
    assert text.count("<strong>Unavailable.</strong>") == 3
    assert "the billing service failed (UNIMPLEMENTED)" in text
    assert elapsed < 3.0 + 2.0, "the page waits for the deadline, not the backend"


async def test_panels_are_loaded_at_once_within_the_deadline(fakes: Fakes) -> None:
    assert isinstance(fakes.execution, SlowExecution)
    fakes.execution.hang = True
    backends = Backends(fakes.addresses, INTERNAL_TOKEN)
    reader = Reader(Stubs(backends), Caller("r1", TENANT_ID, "key:k1", "admin"), 0.3)
    started = time.monotonic()
    try:
        loaded = {item.panel.name: item for item in await load_panels(PANELS, reader)}
    finally:
        await backends.close()

    assert time.monotonic() - started < 1.5
    assert loaded["run_stats"].data is None
    assert "DEADLINE_EXCEEDED" in loaded["run_stats"].error
    assert loaded["plan"].error == ""
    assert loaded["plan"].as_json()["data"]["tenant"]["name"] == "Acme"
    services = loaded["services"].as_json()["data"]["services"]
    assert [s["state"] for s in services] == ["serving"] * 5


async def test_diagnostics_json_keeps_the_error_of_an_unavailable_panel(client: Client) -> None:
    response = await client.get("/api/diagnostics", headers={"Authorization": f"Bearer {API_KEY}"})

    body = await response.json()
    assert response.status == 200
    assert body["panels"]["billing"] == {
        "title": "Billing",
        "available": False,
        "data": None,
        "error": "the billing service failed (UNIMPLEMENTED); quote the request id",
    }


async def test_webhook_deliveries_and_alerts_show_what_execution_lists(client: Client) -> None:
    await _sign_in(client)
    text = await (await client.get("/dashboard/diagnostics")).text()
    deliveries = re.search(r'<section[^>]*panel-webhook_deliveries".*?</section>', text, re.S)
    alerts = re.search(r'<section[^>]*panel-alerts".*?</section>', text, re.S)
    assert deliveries is not None
    assert alerts is not None
    shown = deliveries.group(0)
    for expected in (
        "shop",
        "ep-gone-",
        "(deleted)",
        "accepted",
        "refused",
        "INVALID_SIGNATURE",
        "no signature in webhook-signature matches",
        "2.0 KiB",
        'href="/dashboard/runs/run-accepted"',
    ):
        assert expected in shown, expected
    shown = alerts.group(0)
    for expected in (
        "ops.example.com/hooks/aias",
        "run.failed",
        "status-pending",
        'href="/dashboard/runs/run-failed-1"',
        "1 attempt ·",
        "ALERT_NOT_ACCEPTED: answered 503 Service Unavailable",
        "42 ms",
    ):
        assert expected in shown, expected
    # A destination is named, never linked, and its query (a token, perhaps) is not shown.
    assert "https://ops.example.com" not in shown
    assert "t0p" not in text

    body = await (
        await client.get("/api/diagnostics", headers={"Authorization": f"Bearer {API_KEY}"})
    ).json()
    alerts_json = body["panels"]["alerts"]["data"]
    assert alerts_json["alert_deliveries"][0]["state"] == "pending"
    assert alerts_json["alert_destinations"][0]["label"] == "ops.example.com/hooks/aias"


# --- sessions -----------------------------------------------------------------------------


async def test_the_cookie_is_secure_when_the_public_url_is_https(
    fakes: Fakes, aiohttp_client: AiohttpClient
) -> None:
    client = await _client(aiohttp_client, fakes, public_url="https://aias.example.com")
    response = await client.get("/dashboard/login")

    cookie = response.headers["Set-Cookie"]
    assert "; Secure" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


async def test_a_tampered_cookie_is_no_session(client: Client) -> None:
    await _sign_in(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/dashboard/"))
    value = cookie["aias_dashboard"].value
    client.session.cookie_jar.update_cookies(
        {"aias_dashboard": value[:-4] + ("AAAA" if value[-4:] != "AAAA" else "BBBB")},
        client.make_url("/dashboard/"),
    )

    response = await client.get("/dashboard/runs", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard/login?next=%2Fdashboard%2Fruns"


async def test_a_cookie_that_is_not_even_text_is_no_session(fakes: Fakes) -> None:
    async with serving(gateway_settings(fakes.addresses)) as port:
        for cookie in (b"aias_dashboard=\xff\xfe", b"aias_dashboard=not-fernet", b"\xff"):
            raw = request("GET", "/dashboard/login", {"Cookie": cookie})
            reply = await exchange(port, raw)
            assert reply.status == 200, (cookie, reply.body[:200])
            assert b"<h1>Sign in</h1>" in reply.body


async def test_sign_in_goes_back_only_to_a_dashboard_page(client: Client) -> None:
    for wanted, landing in (
        ("/dashboard/integrations", "/dashboard/integrations"),
        ("https://evil.example/", "/dashboard/diagnostics"),
        ("//evil.example/dashboard/x", "/dashboard/diagnostics"),
        ("/api/tenants", "/dashboard/diagnostics"),
    ):
        token = await _token(client, "/dashboard/login")
        response = await client.post(
            "/dashboard/login",
            data={"csrf_token": token, "api_key": API_KEY, "next": wanted},
            allow_redirects=False,
        )
        assert response.headers["Location"] == landing, wanted
        client.session.cookie_jar.clear()


# --- runs ---------------------------------------------------------------------------------


async def test_a_run_action_is_a_button_that_calls_its_rpc_with_the_form_token(
    client: Client, fakes: Fakes
) -> None:
    # GetRun and ListRunLogs stand in for action RPCs: they take a run id, as cancel and retry
    # do; GetRun answers with a run (as a retry does with its new one), ListRunLogs does not.
    client.app[DASHBOARD].run_actions = offered(
        [
            RunAction("recheck", "Check again", "GetRun", frozenset({"queued"})),
            RunAction("relog", "Read the log", "ListRunLogs", frozenset({"queued"})),
            RunAction("later", "Later", "ListRunLogs", frozenset({"succeeded"})),
        ]
    )
    await _sign_in(client)
    page = await (await client.get("/dashboard/runs/run-7")).text()
    assert 'action="/dashboard/runs/run-7/actions/recheck"' in page
    assert "Check again" in page
    assert "Read the log" in page
    assert "/actions/later" not in page, "not offered for a queued run"
    token = await _token(client, "/dashboard/runs/run-7")

    refused = await client.post("/dashboard/runs/run-7/actions/recheck", data={})
    assert refused.status == 403
    calls_before = len(fakes.execution.requests)
    done = await client.post(
        "/dashboard/runs/run-7/actions/recheck",
        data={"csrf_token": token},
        allow_redirects=False,
    )
    assert done.status == 303
    assert done.headers["Location"] == "/dashboard/runs/run-7?done=recheck"
    assert fakes.execution.requests[calls_before:] == [execution_pb.GetRunRequest(run_id="run-7")]
    relogged = await client.post(
        "/dashboard/runs/run-7/actions/relog", data={"csrf_token": token}, allow_redirects=False
    )
    assert relogged.headers["Location"] == "/dashboard/runs/run-7?done=relog"
    unknown = await client.post("/dashboard/runs/run-7/actions/launch", data={"csrf_token": token})
    assert unknown.status == 404


def test_only_actions_whose_rpc_execution_declares_with_a_run_id_are_offered() -> None:
    assert offered(
        [
            RunAction("a", "A", "NoSuchRpc", frozenset()),
            RunAction("b", "B", "ListRuns", frozenset()),  # takes no run_id
            RunAction("c", "C", "GetRun", frozenset()),
        ]
    ) == {"c": RunAction("c", "C", "GetRun", frozenset())}


async def test_a_bad_status_filter_is_an_error_page(client: Client) -> None:
    await _sign_in(client)
    response = await client.get("/dashboard/runs?status=exploded")

    assert response.status == 400
    assert "status must be one of queued, running, succeeded" in await response.text()


async def test_a_form_larger_than_a_dashboard_form_is_refused_unread(client: Client) -> None:
    await _sign_in(client)
    token = await _token(client, "/dashboard/runs/run-7")

    response = await client.post(
        "/dashboard/logout", data={"csrf_token": token, "filler": "x" * 20_000}
    )
    assert response.status == 413
    assert (await client.get("/dashboard/runs/run-7", allow_redirects=False)).status == 200
