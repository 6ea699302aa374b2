"""Settings read from the environment: backend addresses, drain delay, the artifacts sweeper."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from aias.core.settings import Env, SettingsError
from aias.gateway.backends import BACKENDS
from aias.gateway.settings import load_settings
from aias.services.artifacts import main as artifacts_main
from aias.services.artifacts.sweeper import SweepConfig
from aias.services.execution import worker_main


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


ARTIFACTS_ENV = {
    "AIAS_INTERNAL_TOKEN": "internal",
    "AIAS_APP_DATABASE_URL": "postgresql+psycopg://app@localhost/aias",
    "AIAS_TENANCY_ADDR": "127.0.0.1:1",
    "AIAS_EXECUTION_ADDR": "127.0.0.1:2",
}


def test_the_artifacts_sweeper_settings_have_defaults_and_are_read() -> None:
    default = artifacts_main.load_settings(Env(ARTIFACTS_ENV)).sweep
    assert default == SweepConfig()
    assert default.interval_seconds == 300.0
    configured = artifacts_main.load_settings(
        Env(
            {
                **ARTIFACTS_ENV,
                "AIAS_ARTIFACTS_SWEEP_INTERVAL_SECONDS": "30",
                "AIAS_ARTIFACTS_SWEEP_BATCH": "50",
                "AIAS_ARTIFACTS_BLOB_GRACE_SECONDS": "0",
            }
        )
    ).sweep
    assert configured == SweepConfig(30.0, 50, timedelta(0))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AIAS_ARTIFACTS_SWEEP_INTERVAL_SECONDS", "0.5"),
        ("AIAS_ARTIFACTS_SWEEP_INTERVAL_SECONDS", "nan"),
        ("AIAS_ARTIFACTS_SWEEP_INTERVAL_SECONDS", "soon"),
        ("AIAS_ARTIFACTS_SWEEP_BATCH", "0"),
        ("AIAS_ARTIFACTS_BLOB_GRACE_SECONDS", "-1"),
    ],
)
def test_a_bad_artifacts_sweeper_setting_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        artifacts_main.load_settings(Env({**ARTIFACTS_ENV, name: value}))


def test_server_settings_are_name_value_pairs() -> None:
    env = Env(
        {
            "AIAS_EMBEDDED_PG_SETTINGS": "shared_preload_libraries=pg_stat_statements "
            "pg_stat_statements.track=all"
        }
    )
    assert env.settings("AIAS_EMBEDDED_PG_SETTINGS") == {
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.track": "all",
    }
    env.check()
    assert Env({}).settings("AIAS_EMBEDDED_PG_SETTINGS") == {}


@pytest.mark.parametrize(
    "raw",
    ["fsync", "=on", "fsync=", "work_mem='64MB'", "a=b;DROP", "x y=1", "max_connections=1 -c"],
)
def test_server_settings_that_could_change_the_command_line_are_refused(raw: str) -> None:
    env = Env({"AIAS_EMBEDDED_PG_SETTINGS": raw})
    env.settings("AIAS_EMBEDDED_PG_SETTINGS")
    with pytest.raises(SettingsError, match="AIAS_EMBEDDED_PG_SETTINGS must be space-separated"):
        env.check()


WORKER_ENV = {
    "AIAS_APP_DATABASE_URL": "postgresql+psycopg://aias_app@127.0.0.1:5432/aias",
    "AIAS_ARTIFACTS_ADDR": "artifacts:50053",
    "AIAS_TENANCY_ADDR": "tenancy:50051",
    "AIAS_INTERNAL_TOKEN": "t" * 32,
}


def test_a_worker_holds_more_runs_than_it_has_step_processes_by_default() -> None:
    default = worker_main.load_settings(Env(WORKER_ENV))
    assert (default.worker.concurrency, default.step_processes) == (16, 4)
    few = worker_main.load_settings(Env({**WORKER_ENV, "AIAS_WORKER_CONCURRENCY": "2"}))
    assert (few.worker.concurrency, few.step_processes) == (2, 2)
    both = worker_main.load_settings(
        Env({**WORKER_ENV, "AIAS_WORKER_CONCURRENCY": "32", "AIAS_STEP_PROCESSES": "8"})
    )
    assert (both.worker.concurrency, both.step_processes) == (32, 8)
