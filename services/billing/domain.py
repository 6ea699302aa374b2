"""Billing rules: verifying Stripe deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe

from aias.core.errors import FailedPrecondition, InvalidArgument

SIGNATURE_TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class VerifiedEvent:
    id: str
    type: str
    created: datetime
    payload: dict[str, Any]


def verify(payload: bytes, signature: str, webhook_secret: str) -> VerifiedEvent:
    """Checks the Stripe-Signature over the exact bytes (with stripe's own verifier)."""
    if not webhook_secret:
        raise FailedPrecondition(
            "BILLING_NOT_CONFIGURED",
            "billing has no Stripe webhook secret (AIAS_STRIPE_WEBHOOK_SECRET)",
            {"http_status": "503"},
        )
    if not signature:
        raise InvalidArgument("MISSING_SIGNATURE", "the Stripe-Signature header is missing")
    try:
        event = stripe.Webhook.construct_event(
            payload, signature, webhook_secret, tolerance=SIGNATURE_TOLERANCE_SECONDS
        )
    except stripe.SignatureVerificationError:
        raise InvalidArgument(
            "INVALID_SIGNATURE",
            "the Stripe-Signature does not match the body, or is older than "
            f"{SIGNATURE_TOLERANCE_SECONDS} seconds",
        ) from None
    except ValueError:
        raise InvalidArgument("INVALID_PAYLOAD", "the body is not a Stripe event") from None
    return VerifiedEvent(
        id=event.id,
        type=event.type,
        created=datetime.fromtimestamp(event.created, UTC),
        payload=event.to_dict(),
    )
