"""The launcher's `--replicas`: how many processes of each kind `make run` starts."""

from __future__ import annotations

import pytest

from aias.core.launcher import instance_name, parse_replicas


def test_replicas_are_given_per_kind_comma_separated_or_repeated() -> None:
    assert parse_replicas([]) == {}
    assert parse_replicas(["execution-worker=3,gateway=2", "execution=2"]) == {
        "execution-worker": 3,
        "gateway": 2,
        "execution": 2,
    }


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("worker=3", "unknown process 'worker'"),
        ("gateway", "the count must be a whole number"),
        ("gateway=0", "the count must be a whole number of at least 1"),
        ("gateway=two", "the count must be a whole number"),
    ],
)
def test_a_bad_replica_count_is_refused_with_the_reason(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_replicas([value])


def test_the_first_process_of_a_kind_keeps_its_name_and_replicas_are_numbered() -> None:
    assert [instance_name("gateway", index) for index in (1, 2, 3)] == [
        "gateway",
        "gateway-2",
        "gateway-3",
    ]
