"""`aias verify` against the running suite: it passes, and names the check that breaks."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import URL, create_engine, text

from aias.core.launcher import Stack
from tests.conftest import INTERNAL_TOKEN
from tests.e2e.conftest import ADMIN_TOKEN


def _environment(stack: Stack, **overrides: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "AIAS_DATABASE_URL": stack.database.owner_url,
        "AIAS_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "AIAS_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIAS_PUBLIC_URL": stack.gateway_url,
        **{
            f"AIAS_{name.upper()}_ADDR": stack.address(name)
            for name in ("tenancy", "execution", "artifacts", "billing")
        },
        **overrides,
    }


async def _verify(stack: Stack, *args: str, **overrides: str) -> tuple[int, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aias.cli",
        "verify",
        "--json",
        *args,
        env=_environment(stack, **overrides),
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, json.loads(output)


def _failed(report: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["detail"] for check in report["checks"] if not check["ok"]}


@contextmanager
def _owner_sql(stack: Stack, change: str, undo: str, *, superuser: bool = False) -> Iterator[None]:
    url: str | URL = stack.database.owner_url
    if superuser:
        # Role attributes like BYPASSRLS are only a superuser's to give.
        url = stack.database.superuser_url()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(change))
        yield
    finally:
        with engine.connect() as connection:
            connection.execute(text(undo))
        engine.dispose()


async def test_verify_passes_against_the_running_suite(stack: Stack) -> None:
    code, report = await _verify(stack)
    assert (code, _failed(report)) == (0, {})
    names = [check["name"] for check in report["checks"]]
    assert names == [
        "settings",
        "migrations",
        "row_level_security",
        "app_role",
        "services",
        "stripe",
        "round_trip",
    ]


async def test_verify_names_a_table_without_forced_rls(stack: Stack) -> None:
    with _owner_sql(
        stack,
        "ALTER TABLE execution.step_logs NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE execution.step_logs FORCE ROW LEVEL SECURITY",
    ):
        code, report = await _verify(stack, "--no-round-trip")
    assert code == 1
    assert _failed(report).keys() == {"row_level_security"}
    assert "execution.step_logs" in _failed(report)["row_level_security"]


async def test_verify_names_an_app_role_that_bypasses_rls(stack: Stack) -> None:
    with _owner_sql(
        stack, "ALTER ROLE aias_app BYPASSRLS", "ALTER ROLE aias_app NOBYPASSRLS", superuser=True
    ):
        code, report = await _verify(stack, "--no-round-trip")
    assert code == 1
    assert "has BYPASSRLS" in _failed(report)["app_role"]


async def test_verify_names_a_stopped_service(stack: Stack) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    code, report = await _verify(stack, "--no-round-trip", AIAS_BILLING_ADDR=nowhere)
    assert code == 1
    assert "billing UNAVAILABLE" in _failed(report)["services"]
