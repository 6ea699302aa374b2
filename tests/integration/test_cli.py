"""The operator CLI run as a real process against a real tenancy server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from aias.cli.connection import MISCONFIGURED, REFUSED, UNREACHABLE
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from tests.conftest import INTERNAL_TOKEN
from tests.integration.servers import Tenancy

Env = Mapping[str, str]


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def env(tenancy: Tenancy, tmp_path: Path) -> dict[str, str]:
    """The environment a service has; the data folder is empty, so `make run`'s is not used."""
    return {
        "AIAS_TENANCY_ADDR": tenancy.address,
        "AIAS_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "AIAS_DATA_DIR": str(tmp_path),
    }


async def aias(env: Env, *args: str) -> Ran:
    """`aias ARGS` as a subprocess, so the in-process server keeps serving while it runs."""
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("AIAS_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aias.cli",
        *args,
        env={**inherited, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def ok(ran: Ran) -> str:
    assert ran.code == 0, ran.err
    return ran.out


def limit_rows(out: str) -> dict[str, list[str]]:
    """The limits table below the tenant's row: limit name -> [value, from]."""
    _, _, below = out.partition("\n\n")
    cells = [re.split(r"\s{2,}", line) for line in below.splitlines()]
    assert cells[0] == ["LIMIT", "VALUE", "FROM"]
    return {row[0]: row[1:] for row in cells[1:]}


async def tenant(tenancy: Tenancy, tenant_id: str) -> pb.Tenant:
    reply: pb.GetTenantResponse = await tenancy.stub.GetTenant(
        pb.GetTenantRequest(tenant_id=tenant_id)
    )
    return reply.tenant


async def limits(tenancy: Tenancy, tenant_id: str) -> pb.Limits:
    reply: pb.GetEntitlementsResponse = await tenancy.stub.GetEntitlements(
        pb.GetEntitlementsRequest(tenant_id=tenant_id)
    )
    return reply.entitlements.limits


async def test_create_list_suspend_resume(tenancy: Tenancy, env: Env) -> None:
    name = f"Acme {uuid.uuid4().hex[:8]}"
    as_json, as_table = await asyncio.gather(
        aias(env, "tenants", "create", name, "--plan", "pro", "--json"),
        aias(env, "tenants", "create", f"{name} table"),
    )
    created = json.loads(ok(as_json))
    tenant_id = created["tenant"]["id"]
    assert created["tenant"]["name"] == name
    assert created["tenant"]["plan"] == "pro"
    assert created["tenant"]["status"] == "active"
    table = ok(as_table).splitlines()
    assert table[0].split() == ["ID", "NAME", "PLAN", "STATUS", "CREATED"]
    assert f"{name} table" in table[1]
    assert table[1].split()[-4:-2] == ["free", "active"]
    assert "shown only this once" in table[3]
    # Both printed keys are real owner keys of their tenants.
    for key, owner in ((created["admin_key"], tenant_id), (table[4].strip(), table[1].split()[0])):
        who = await tenancy.stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(api_key=key))
        assert (who.tenant_id, who.role) == (owner, pb.ROLE_OWNER)

    listed, listed_json = await asyncio.gather(
        aias(env, "tenants", "list"), aias(env, "tenants", "list", "--json")
    )
    row = next(line for line in ok(listed).splitlines() if line.startswith(tenant_id))
    assert row.split()[-4:-2] == ["pro", "active"]
    assert name in row
    assert tenant_id in {t["id"] for t in json.loads(ok(listed_json))["tenants"]}

    suspended = ok(await aias(env, "tenants", "suspend", tenant_id))
    assert "suspended" in suspended.splitlines()[1]
    assert (await tenant(tenancy, tenant_id)).status == pb.TENANT_STATUS_SUSPENDED
    resumed = json.loads(ok(await aias(env, "tenants", "resume", tenant_id, "--json")))
    assert resumed["tenant"]["status"] == "active"
    assert (await tenant(tenancy, tenant_id)).status == pb.TENANT_STATUS_ACTIVE


async def test_plan_and_limits(tenancy: Tenancy, env: Env) -> None:
    tenant_id = str(await tenancy.new_tenant("free"))

    moved, unknown_plan = await asyncio.gather(
        aias(env, "tenants", "set-plan", tenant_id, "business"),
        aias(env, "tenants", "set-plan", tenant_id, "gold"),
    )
    assert "business" in ok(moved).splitlines()[1]
    assert limit_rows(moved.out)["workflows"] == ["5000", "plan"]
    assert unknown_plan.code == REFUSED
    assert unknown_plan.err.startswith("error: plan 'gold' does not exist; choose one of free")
    assert unknown_plan.err.rstrip().endswith("(UNKNOWN_PLAN)")

    numbers = json.loads(
        ok(await aias(env, "tenants", "set-limit", tenant_id, "workflows", "7", "--json"))
    )
    # protobuf's JSON mapping prints 64-bit numbers as strings.
    assert numbers["limits"]["workflows"] == 7
    assert numbers["tenant"]["limit_overrides"] == {"workflows": 7}
    unlimited = ok(
        await aias(env, "tenants", "set-limit", tenant_id, "runs_per_month", "unlimited")
    )
    assert limit_rows(unlimited)["runs_per_month"] == ["unlimited", "override"]
    steps = ok(
        await aias(
            env, "tenants", "set-limit", tenant_id, "allowed_step_types", "transform, artifact"
        )
    )
    assert limit_rows(steps)["allowed_step_types"] == ["artifact,transform", "override"]
    found = await limits(tenancy, tenant_id)
    assert found.workflows == 7
    assert not found.HasField("runs_per_month")
    assert sorted(found.allowed_step_types.types) == ["artifact", "transform"]

    cleared, minus_one, shown = await asyncio.gather(
        aias(env, "tenants", "clear-limit", tenant_id, "workflows"),
        aias(env, "tenants", "set-limit", tenant_id, "webhook_burst", "-1"),
        aias(env, "tenants", "show", tenant_id),
    )
    assert limit_rows(ok(cleared))["workflows"] == ["5000", "plan"]
    assert limit_rows(ok(minus_one))["webhook_burst"] == ["unlimited", "override"]
    found = await limits(tenancy, tenant_id)
    assert found.workflows == 5000
    assert not found.HasField("webhook_burst")
    assert tenant_id in ok(shown).splitlines()[1]
    assert limit_rows(shown.out)["runs_per_month"] == ["unlimited", "override"]
    assert limit_rows(shown.out)["artifact_retention_days"] == ["365", "plan"]

    unknown_limit, bad_value, no_types = await asyncio.gather(
        aias(env, "tenants", "set-limit", tenant_id, "seats", "5"),
        aias(env, "tenants", "set-limit", tenant_id, "workflows", "lots"),
        aias(env, "tenants", "set-limit", tenant_id, "allowed_step_types", "unlimited"),
    )
    assert unknown_limit.code == MISCONFIGURED  # click's usage error
    assert "'seats' is not one of 'workflows'" in unknown_limit.err
    assert "'allowed_step_types'" in unknown_limit.err
    assert bad_value.code == MISCONFIGURED
    assert "must be a whole number (0 or more) or `unlimited`, got 'lots'" in bad_value.err
    assert no_types.code == MISCONFIGURED
    assert "clear-limit ID allowed_step_types" in no_types.err
    assert (await limits(tenancy, tenant_id)).workflows == 5000


async def test_make_run_defaults_and_plans(tenancy: Tenancy, tmp_path: Path) -> None:
    # What `make run` leaves: the token in the data folder, tenancy on AIAS_TENANCY_PORT.
    (tmp_path / "internal-token").write_text(INTERNAL_TOKEN + "\n")
    port = tenancy.address.rsplit(":", 1)[1]
    made_run = {"AIAS_DATA_DIR": str(tmp_path), "AIAS_TENANCY_PORT": port}
    as_json, as_table = await asyncio.gather(
        aias(made_run, "plans", "--json"), aias(made_run, "plans")
    )
    plans = json.loads(ok(as_json))["plans"]
    assert [plan["name"] for plan in plans] == ["free", "starter", "pro", "business", "enterprise"]
    assert ok(as_table).splitlines()[0].split() == [
        "LIMIT",
        "FREE",
        "STARTER",
        "PRO",
        "BUSINESS",
        "ENTERPRISE",
    ]
    payload = next(line for line in as_table.out.splitlines() if line.startswith("webhook_payload"))
    assert re.split(r"\s{2,}", payload)[1:3] == ["262144 (256 KiB)", "1048576 (1 MiB)"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_failures_say_what_to_fix(tenancy: Tenancy, env: Env, tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    wrong_token, unreachable, unset, no_tenant = await asyncio.gather(
        aias({**env, "AIAS_INTERNAL_TOKEN": "wrong"}, "tenants", "list"),
        aias({**env, "AIAS_TENANCY_ADDR": nowhere}, "tenants", "list"),
        aias({"AIAS_DATA_DIR": str(tmp_path), "AIAS_TENANCY_PORT": "x"}, "tenants", "list"),
        aias(env, "tenants", "show", str(uuid.uuid4())),
    )
    assert wrong_token.code == REFUSED
    assert "(MISSING_INTERNAL_CREDENTIAL)" in wrong_token.err
    assert "the token came from AIAS_INTERNAL_TOKEN" in wrong_token.err
    assert unreachable.code == UNREACHABLE
    assert unreachable.err.startswith(
        f"error: cannot reach the tenancy service at {nowhere} (AIAS_TENANCY_ADDR)"
    )
    assert unset.code == MISCONFIGURED
    assert "AIAS_TENANCY_PORT must be a whole number, got 'x'" in unset.err
    assert "AIAS_INTERNAL_TOKEN is required but not set" in unset.err
    assert f"or run `make run` first (it keeps the token in {tmp_path}/internal-token)" in unset.err
    assert no_tenant.code == REFUSED
    assert no_tenant.err.rstrip().endswith("(TENANT_NOT_FOUND)")
    assert not any(ran.out for ran in (wrong_token, unreachable, unset, no_tenant))
