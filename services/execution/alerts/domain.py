"""Alert rules: event types, destinations, the retry schedule and the body receivers get."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from aias.core.destinations import checked_url
from aias.core.errors import InvalidArgument, clip
from aias.services.execution.steps import canonical_json

RUN_FAILED = "run.failed"
QUOTA_NEAR = "quota.near"
QUOTA_EXCEEDED = "quota.exceeded"
BILLING_PAST_DUE = "billing.past_due"
EVENT_TYPES = (RUN_FAILED, QUOTA_NEAR, QUOTA_EXCEEDED, BILLING_PAST_DUE)
# quota.near fires once the month's reserved runs reach this share of the limit.
NEAR_PERCENT = 80
# Each alert fans out to every subscribed destination; this bounds the fan-out.
MAX_DESTINATIONS = 20
MAX_DEDUPE_KEY_CHARS = 200
# A receiver answers an alert with a status; whatever body it adds is read up to this and dropped.
MAX_RESPONSE_BYTES = 64 * 1024
ERROR_EXCERPT_CHARS = 200


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def validate_url(url: str) -> str:
    """The URL as stored, or InvalidArgument: http(s), a host, no user name or password.

    Where the host resolves to is checked when each alert is sent, as for http_request steps.
    """
    url = url.strip()
    try:
        checked_url(url)
    except ValueError as error:
        raise InvalidArgument("INVALID_ALERT_URL", f"url {error}", field="url") from None
    return url


def validate_events(events: Iterable[str]) -> list[str]:
    """The event types, each once, in catalog order; at least one, every one known."""
    wanted = {event.strip() for event in events}
    if not wanted:
        raise InvalidArgument(
            "INVALID_ALERT_EVENTS",
            f"events must name at least one of {', '.join(EVENT_TYPES)}",
            field="events",
        )
    for event in sorted(wanted):
        check_event_type(event, "events")
    return [event for event in EVENT_TYPES if event in wanted]


def check_event_type(event: str, field: str) -> str:
    if event not in EVENT_TYPES:
        raise InvalidArgument(
            "INVALID_ALERT_EVENTS",
            f"{clip(repr(event))} is not an alert event; use {', '.join(EVENT_TYPES)}",
            field=field,
        )
    return event


def check_dedupe_key(key: str) -> str | None:
    """The key to store, None when there is none."""
    if len(key) > MAX_DEDUPE_KEY_CHARS:
        raise InvalidArgument(
            "INVALID_DEDUPE_KEY",
            f"dedupe_key is longer than {MAX_DEDUPE_KEY_CHARS} characters",
            field="dedupe_key",
        )
    return key or None


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential back-off with jitter, within a window that starts when the alert is raised.

    After the n-th failed attempt the next one waits `base * 2^(n-1)`, at most `cap`, give or take
    a quarter (so receivers that failed together are not retried together). An attempt that would
    start after the window ends is not made: the delivery has failed.
    """

    base: timedelta = timedelta(seconds=10)
    cap: timedelta = timedelta(hours=1)
    window: timedelta = timedelta(hours=24)

    def next_attempt(
        self,
        failed_attempts: int,
        raised: datetime,
        now: datetime,
        jitter: Callable[[], float] = random.random,
    ) -> datetime | None:
        """When to try again after `failed_attempts` failures, or None once that is too late."""
        delay = min(self.cap, self.base * 2 ** min(failed_attempts - 1, 32))
        at = now + delay * (0.75 + 0.5 * jitter())
        return at if at <= raised + self.window else None


def delivered(http_status: int) -> bool:
    """Any 2xx is a delivery. Everything else (3xx, 4xx, 5xx, no answer) is retried, as Standard
    Webhooks senders do: a receiver that answers 401 or 404 today may be fixed within the window,
    and redirects are not followed (a receiver gives its final URL)."""
    return 200 <= http_status < 300


def answer_error(http_status: int, reason: str, body: bytes) -> str:
    """What an attempt records of an answer that is not a delivery."""
    excerpt = body.decode("utf-8", errors="replace").strip()[:ERROR_EXCERPT_CHARS]
    answered = f"ALERT_NOT_ACCEPTED: answered {http_status} {reason}".rstrip()
    return f"{answered}: {excerpt}" if excerpt else answered


def rfc3339(moment: datetime) -> str:
    """A time as alert payloads write it, in UTC to the microsecond (as the trigger that raises
    run.failed writes it too)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def envelope(event_type: str, raised: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """What receivers get, in the Standard Webhooks payload shape."""
    return {"type": event_type, "timestamp": rfc3339(raised), "data": data}


def body(event_type: str, raised: datetime, data: dict[str, Any]) -> bytes:
    """The bytes every attempt posts and signs: the envelope as canonical JSON."""
    return canonical_json(envelope(event_type, raised, data))
