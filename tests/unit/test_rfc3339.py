"""`rfc3339` writes a time exactly as protobuf's JSON mapping writes the same Timestamp."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from aias.core.protoconv import rfc3339, timestamp

_SAMPLES = [
    datetime(2026, 11, 26, 19, 9, 22, tzinfo=UTC),
    datetime(2026, 11, 26, 19, 9, 22, 120000, tzinfo=UTC),
    datetime(2026, 11, 26, 19, 9, 22, 123000, tzinfo=UTC),
    datetime(2026, 11, 26, 19, 9, 22, 123456, tzinfo=UTC),
    datetime(2026, 11, 26, 19, 9, 22, 1, tzinfo=UTC),
    datetime(2026, 11, 26, 19, 9, 22, 100, tzinfo=UTC),
    # Another zone is written in UTC; a naive time is taken as UTC.
    datetime(2026, 1, 1, 0, 30, 0, 5000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 12, 31, 23, 59, 59, 999999),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


@pytest.mark.parametrize("value", _SAMPLES, ids=str)
def test_it_writes_what_protobuf_writes(value: datetime) -> None:
    stamp = timestamp(value)
    assert stamp is not None
    assert rfc3339(value) == stamp.ToJsonString()


def test_it_agrees_with_protobuf_on_random_times() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        # Whole seconds, milliseconds and microseconds alike.
        micros = rng.choice([0, rng.randrange(1000) * 1000, rng.randrange(10**6)])
        value = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(10**10), microseconds=micros
        )
        stamp = timestamp(value)
        assert stamp is not None
        assert rfc3339(value) == stamp.ToJsonString(), value
