"""Settings read from the environment: backend addresses in every form a channel accepts."""

from __future__ import annotations

import re

import pytest

from aias.core.settings import Env, SettingsError
from gateway.backends import BACKENDS
from gateway.settings import load_settings


@pytest.mark.parametrize(
    "address",
    [
        "tenancy:50051",
        "127.0.0.1:50051",
        "dns:///tenancy.aias.svc.cluster.local:50051",
        "ipv4:127.0.0.1:50052,127.0.0.1:41234",
        "ipv6:[::1]:50052,[::1]:41234",
    ],
)
def test_a_backend_address_may_name_one_process_or_every_replica(address: str) -> None:
    env = Env({"AIAS_EXECUTION_ADDR": address})
    assert env.address("AIAS_EXECUTION_ADDR") == address
    env.check()


@pytest.mark.parametrize(
    "address",
    ["tenancy", "tenancy:http", ":50051", "dns:///tenancy", "ipv4:127.0.0.1:1,127.0.0.1:x"],
)
def test_a_malformed_backend_address_is_refused_by_name(address: str) -> None:
    env = Env({"AIAS_EXECUTION_ADDR": address})
    env.address("AIAS_EXECUTION_ADDR")
    with pytest.raises(
        SettingsError, match=f"AIAS_EXECUTION_ADDR must look like .*{re.escape(repr(address))}"
    ):
        env.check()


def test_a_gateway_drain_delay_must_leave_time_for_the_requests_in_flight() -> None:
    environ = {
        "AIAS_INTERNAL_TOKEN": "internal",
        "AIAS_ADMIN_TOKEN": "admin",
        "AIAS_DASHBOARD_SECRET": "s" * 32,
        **{spec.address_variable: "127.0.0.1:1" for spec in BACKENDS},
        "AIAS_SHUTDOWN_GRACE_SECONDS": "10",
    }
    assert (
        load_settings(Env({**environ, "AIAS_GATEWAY_DRAIN_DELAY_SECONDS": "5"})).drain_delay_seconds
        == 5.0
    )
    with pytest.raises(SettingsError, match=r"DRAIN_DELAY_SECONDS must be shorter than .*GRACE"):
        load_settings(Env({**environ, "AIAS_GATEWAY_DRAIN_DELAY_SECONDS": "10"}))
