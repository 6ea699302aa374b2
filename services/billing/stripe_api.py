"""Billing's outbound calls to the Stripe API, through the `stripe` library's async client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import stripe

from aias.core.errors import FailedPrecondition, Unavailable

DEFAULT_API_BASE = stripe.DEFAULT_API_BASE
# Stripe's own retries (with idempotency keys) cover brief network failures.
MAX_NETWORK_RETRIES = 2


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


@contextmanager
def _stripe_errors(what: str) -> Iterator[None]:
    """Stripe's failures as domain errors: retryable ones UNAVAILABLE, the rest explained."""
    try:
        yield
    except (stripe.APIConnectionError, stripe.RateLimitError):
        raise Unavailable("STRIPE_UNAVAILABLE", f"Stripe could not {what}; retry shortly") from None
    except (stripe.AuthenticationError, stripe.PermissionError):
        raise FailedPrecondition(
            "STRIPE_CREDENTIALS_REJECTED",
            f"Stripe refused the API key (AIAS_STRIPE_API_KEY) when asked to {what}",
        ) from None
    except stripe.StripeError as error:
        if (error.http_status or 500) >= 500:
            raise Unavailable(
                "STRIPE_UNAVAILABLE", f"Stripe failed to {what}; retry shortly"
            ) from None
        raise FailedPrecondition(
            "STRIPE_REQUEST_FAILED", f"Stripe refused to {what}: {error.user_message or error}"
        ) from None


class StripeApi:
    """The few Stripe API calls billing makes, against a configurable API base."""

    def __init__(self, api_key: str, api_base: str, timeout_seconds: float = 20.0) -> None:
        # One aiohttp session for the process, opened here (in the running loop) and closed
        # by `close`; the library's async client sends every request through it.
        self._session = aiohttp.ClientSession()
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            http_client=stripe.AIOHTTPClient(
                timeout=aiohttp.ClientTimeout(total=timeout_seconds), session=self._session
            ),
            max_network_retries=MAX_NETWORK_RETRIES,
        )

    async def close(self) -> None:
        await self._session.close()

    async def create_customer(self, tenant_id: uuid.UUID, name: str) -> str:
        """A customer for the tenant; the idempotency key makes a retried creation the same one."""
        with _stripe_errors("create a customer"):
            customer = await self._client.v1.customers.create_async(
                params={"name": name, "metadata": {"tenant_id": str(tenant_id)}},
                options={"idempotency_key": f"aias-customer-{tenant_id}"},
            )
        return customer.id

    async def price_id(self, lookup_key: str) -> str | None:
        """The active price with this lookup key, if any."""
        with _stripe_errors("look up a price"):
            prices = await self._client.v1.prices.list_async(
                params={"lookup_keys": [lookup_key], "active": True, "limit": 1}
            )
        return prices.data[0].id if prices.data else None

    async def create_checkout_session(
        self,
        customer_id: str,
        tenant_id: uuid.UUID,
        price_id: str,
        success_url: str,
        cancel_url: str,
    ) -> CheckoutSession:
        tenant = str(tenant_id)
        with _stripe_errors("create a Checkout Session"):
            session = await self._client.v1.checkout.sessions.create_async(
                params={
                    "mode": "subscription",
                    "customer": customer_id,
                    "client_reference_id": tenant,
                    "line_items": [{"price": price_id, "quantity": 1}],
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "metadata": {"tenant_id": tenant},
                    "subscription_data": {"metadata": {"tenant_id": tenant}},
                }
            )
        return CheckoutSession(session.id, session.url or "")

    async def create_portal_session(self, customer_id: str, return_url: str) -> str:
        with _stripe_errors("create a customer-portal session"):
            session = await self._client.v1.billing_portal.sessions.create_async(
                params={"customer": customer_id, "return_url": return_url}
            )
        return session.url

    async def subscriptions(self, customer_id: str) -> list[dict[str, Any]]:
        """Every subscription of a customer, ended ones included, newest first."""
        with _stripe_errors("list subscriptions"):
            page = await self._client.v1.subscriptions.list_async(
                params={"customer": customer_id, "status": "all", "limit": 100}
            )
            return [sub.to_dict() async for sub in page.auto_paging_iter()]
