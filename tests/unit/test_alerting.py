"""Alert rules without I/O: event types, destination URLs, the retry schedule, the body sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from aias.core.errors import InvalidArgument
from aias.services.execution.alerts.domain import (
    RetrySchedule,
    answer_error,
    body,
    delivered,
    validate_events,
    validate_url,
)

RAISED = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
SCHEDULE = RetrySchedule()  # 10 s doubling, capped at 1 h, within 24 h


def test_events_are_known_deduplicated_and_in_catalog_order() -> None:
    assert validate_events(["quota.exceeded", " run.failed", "run.failed"]) == [
        "run.failed",
        "quota.exceeded",
    ]
    for events in ([], ["run.succeeded"], ["run.failed", "RUN.FAILED"]):
        with pytest.raises(InvalidArgument) as caught:
            validate_events(events)
        assert (caught.value.reason, caught.value.field) == ("INVALID_ALERT_EVENTS", "events")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("alerts.example.com/hook", "must start with http:// or https://"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("https://", "has no host"),
        ("https://ops:hunter2@alerts.example.com", "must not carry a user name or password"),
    ],
)
def test_destination_urls_follow_the_outbound_rules(url: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_url(url)
    assert caught.value.reason == "INVALID_ALERT_URL"
    assert problem in caught.value.message
    assert "hunter2" not in caught.value.message
    assert validate_url(" https://alerts.example.com/aias?team=ops ") == (
        "https://alerts.example.com/aias?team=ops"
    )


def test_retries_double_from_the_base_up_to_the_cap_give_or_take_a_quarter() -> None:
    def wait(failed: int, jitter: float) -> float:
        at = SCHEDULE.next_attempt(failed, RAISED, RAISED, lambda: jitter)
        assert at is not None
        return (at - RAISED).total_seconds()

    assert [wait(n, 0.5) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert (wait(1, 0.0), wait(1, 1.0)) == (7.5, 12.5)
    assert wait(9, 0.5) == 2560
    assert wait(10, 0.5) == wait(500, 0.5) == 3600


def test_no_attempt_is_scheduled_after_the_window() -> None:
    late = RAISED + timedelta(hours=23, minutes=30)
    assert SCHEDULE.next_attempt(3, RAISED, late, lambda: 0.5) is not None
    assert SCHEDULE.next_attempt(20, RAISED, late, lambda: 0.5) is None
    # A tenant's first attempt after the sender was down for a day is its last.
    assert SCHEDULE.next_attempt(1, RAISED, RAISED + timedelta(days=1), lambda: 0.0) is None


def test_only_2xx_delivers_and_other_answers_are_recorded_briefly() -> None:
    assert [delivered(s) for s in (200, 204, 299, 301, 404, 410, 500)] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert answer_error(503, "Service Unavailable", b"") == (
        "ALERT_NOT_ACCEPTED: answered 503 Service Unavailable"
    )
    long = answer_error(400, "Bad Request", b" nope " * 100)
    assert long.startswith("ALERT_NOT_ACCEPTED: answered 400 Bad Request: nope")
    assert len(long) < 300


def test_the_body_is_the_standard_webhooks_envelope_as_canonical_json() -> None:
    sent = body("run.failed", RAISED, {"run_id": "r-1", "error": "é"})
    assert (
        sent
        == (
            '{"data":{"error":"é","run_id":"r-1"},"timestamp":"2026-11-26T10:00:00.000000Z",'
            '"type":"run.failed"}'
        ).encode()
    )
    assert json.loads(sent)["timestamp"].endswith("Z")
