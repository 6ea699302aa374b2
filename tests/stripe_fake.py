"""A local Stripe for tests: a fake API server that records requests, and signed events."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import stripe
from aiohttp import web
from multidict import MultiDictProxy

API_KEY = "sk_test_aias_fake"
PARAMS = web.RequestKey("params", dict[str, str])
WEBHOOK_SECRET = "whsec_aias_test_secret"
LOOKUP_KEYS = ("starter", "pro", "business", "pro_yearly")


@dataclass
class Recorded:
    """One request the fake received: method, path, query and form fields, headers."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeStripe:
    """Answers the few Stripe API calls billing makes with Stripe-shaped objects.

    It runs on its own thread and event loop, so it serves requests from the processes
    of the end-to-end suite whatever the test's own loop is doing.
    """

    requests: list[Recorded] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    port: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _by_idempotency_key: dict[str, str] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:10]}{next(self._ids)}"

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def add_subscription(
        self, customer: str, lookup_key: str, status: str = "active", **fields: Any
    ) -> dict[str, Any]:
        """A subscription Stripe knows of (and lists), as webhooks would have described it."""
        sub = subscription_object(self.new_id("sub"), customer, lookup_key, status, **fields)
        self.subscriptions[sub["id"]] = sub
        return sub

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            runner = web.AppRunner(self._app())
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-stripe", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Stripe server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # -- the API ---------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/v1/customers", self._create_customer)
        app.router.add_get("/v1/prices", self._list_prices)
        app.router.add_post("/v1/checkout/sessions", self._create_checkout_session)
        app.router.add_post("/v1/billing_portal/sessions", self._create_portal_session)
        app.router.add_get("/v1/subscriptions", self._list_subscriptions)
        app.router.add_get("/v1/subscriptions/{id}", self._get_subscription)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        form: MultiDictProxy[Any] = await request.post()
        params = {**request.query, **{key: str(value) for key, value in form.items()}}
        request[PARAMS] = params
        self.requests.append(Recorded(request.method, request.path, params, dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        response: web.StreamResponse = await handler(request)
        return response

    async def _create_customer(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        key = request.headers.get("Idempotency-Key", "")
        if key in self._by_idempotency_key:
            return web.json_response(self.customers[self._by_idempotency_key[key]])
        customer: dict[str, Any] = {
            "id": self.new_id("cus"),
            "object": "customer",
            "name": params.get("name"),
            "metadata": _nested(params, "metadata"),
            "created": int(time.time()),
            "livemode": False,
        }
        self.customers[customer["id"]] = customer
        if key:
            self._by_idempotency_key[key] = customer["id"]
        return web.json_response(customer)

    async def _list_prices(self, request: web.Request) -> web.Response:
        wanted = [v for k, v in request[PARAMS].items() if k.startswith("lookup_keys[")]
        prices = [price_object(key) for key in wanted if key in LOOKUP_KEYS]
        return web.json_response(_list("/v1/prices", prices))

    async def _create_checkout_session(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        session_id = self.new_id("cs_test")
        return web.json_response(
            {
                "id": session_id,
                "object": "checkout.session",
                "mode": params.get("mode"),
                "customer": params.get("customer"),
                "client_reference_id": params.get("client_reference_id"),
                "metadata": _nested(params, "metadata"),
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "url": f"https://checkout.stripe.test/c/pay/{session_id}",
                "status": "open",
            }
        )

    async def _create_portal_session(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        session_id = self.new_id("bps")
        return web.json_response(
            {
                "id": session_id,
                "object": "billing_portal.session",
                "customer": params.get("customer"),
                "return_url": params.get("return_url"),
                "url": f"https://billing.stripe.test/p/session/{session_id}",
            }
        )

    async def _list_subscriptions(self, request: web.Request) -> web.Response:
        customer = request.query.get("customer")
        subs = [s for s in self.subscriptions.values() if s["customer"] == customer]
        return web.json_response(_list("/v1/subscriptions", list(reversed(subs))))

    async def _get_subscription(self, request: web.Request) -> web.Response:
        sub = self.subscriptions.get(request.match_info["id"])
        if sub is None:
            return _error(404, "invalid_request_error", "No such subscription")
        return web.json_response(sub)


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


def _list(url: str, data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "url": url, "has_more": False, "data": data}


def _nested(params: dict[str, str], name: str) -> dict[str, str]:
    """`metadata[tenant_id]=x` form fields as {"tenant_id": "x"}."""
    prefix = f"{name}["
    return {k[len(prefix) : -1]: v for k, v in params.items() if k.startswith(prefix)}


# -- Stripe-shaped objects and signed events --------------------------------------------------


def price_object(lookup_key: str) -> dict[str, Any]:
    return {
        "id": f"price_{lookup_key}",
        "object": "price",
        "active": True,
        "currency": "eur",
        "lookup_key": lookup_key,
        "recurring": {"interval": "year" if "yearly" in lookup_key else "month"},
        "unit_amount": 4900,
    }


def subscription_object(
    sub_id: str,
    customer: str,
    lookup_key: str,
    status: str = "active",
    *,
    cancel_at_period_end: bool = False,
    current_period_end: int | None = None,
) -> dict[str, Any]:
    """A subscription in the current API shape: the period is on the subscription item."""
    now = int(time.time())
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "created": now,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_{sub_id}",
                    "object": "subscription_item",
                    "current_period_start": now,
                    "current_period_end": current_period_end or now + 30 * 86400,
                    "price": price_object(lookup_key),
                    "quantity": 1,
                }
            ],
        },
        "metadata": {},
        "livemode": False,
    }


def invoice_object(customer: str, subscription: str) -> dict[str, Any]:
    """An invoice in the current API shape: its subscription is under `parent`."""
    return {
        "id": f"in_{uuid.uuid4().hex[:12]}",
        "object": "invoice",
        "customer": customer,
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": subscription},
        },
        "status": "paid",
    }


def checkout_object(customer: str, tenant_id: str, subscription: str = "") -> dict[str, Any]:
    return {
        "id": f"cs_test_{uuid.uuid4().hex[:12]}",
        "object": "checkout.session",
        "mode": "subscription",
        "customer": customer,
        "client_reference_id": tenant_id,
        "metadata": {"tenant_id": tenant_id},
        "subscription": subscription or None,
        "status": "complete",
    }


def event(event_type: str, obj: dict[str, Any], created: int, event_id: str = "") -> bytes:
    """A Stripe event body, serialised the way Stripe sends it."""
    body = {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "type": event_type,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
    }
    return json.dumps(body, indent=2).encode()


def signature(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header, computed by the library's own test helper."""
    header: str = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret, timestamp or int(time.time())
    )
    return header
