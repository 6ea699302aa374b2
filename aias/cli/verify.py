"""`aias verify`: checks a running deployment end to end and says which check failed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import click
import grpc
from alembic.config import Config
from alembic.script import ScriptDirectory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text

from aias.billing.v1 import billing_service_pb2 as billing_pb
from aias.billing.v1 import billing_service_pb2_grpc as billing_grpc
from aias.cli.connection import target
from aias.core.clients import internal_channel
from aias.core.localdb import running_owner_url
from aias.core.migrate import DEFAULT_APP_ROLE, SERVICES, migrations_dir
from aias.core.settings import Env
from aias.core.version import VERSION_METADATA
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as tenancy_grpc

BACKENDS = ("tenancy", "execution", "artifacts", "billing")
MIN_SECRET_CHARS = 16
ROUND_TRIP_SECONDS = 60.0
ROUND_TRIP_ORDER = {"id": "verify-1", "items": [{"price": 2.5}, {"price": 4}]}
# The round trip's workflow stores {order, total}: its bytes are known in advance.
ROUND_TRIP_WORKFLOW = {
    "name": "aias verify",
    "steps": [
        {
            "id": "shape",
            "type": "transform",
            "config": {"expression": "{order: id, total: sum(items[].price)}"},
        },
        {"id": "save", "type": "artifact", "config": {"name": "verify.json", "format": "json"}},
    ],
}
EXPECTED_ARTIFACT = b'{"order":"verify-1","total":6.5}'


@dataclass
class Check:
    """One check's outcome: its name, whether it passed, and what it found."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Deployment:
    """Where the deployment is and how to speak to it, read from the services' environment."""

    owner_url: str | None
    owner_url_from: str
    internal_token: str
    admin_token: str
    admin_token_from: str
    local_mode: bool
    gateway_url: str
    app_role: str

    @classmethod
    def from_environment(cls) -> Deployment:
        env = Env()
        data_dir = Path(env.text("AIAS_DATA_DIR", ".data")).resolve()
        owner_url = env.text("AIAS_DATABASE_URL", "") or None
        owner_from = "AIAS_DATABASE_URL"
        local = owner_url is None
        if owner_url is None:
            owner_url = running_owner_url(data_dir)
            owner_from = f"`make run`'s embedded PostgreSQL ({data_dir})"
        admin = env.text("AIAS_ADMIN_TOKEN", "")
        admin_from = "AIAS_ADMIN_TOKEN"
        if not admin and (data_dir / "admin-token").exists():
            admin, admin_from = (data_dir / "admin-token").read_text().strip(), str(data_dir)
        port = env.integer("AIAS_GATEWAY_PORT", 8080, maximum=65535)
        return cls(
            owner_url=owner_url,
            owner_url_from=owner_from,
            internal_token=target("tenancy").token,
            admin_token=admin,
            admin_token_from=admin_from,
            local_mode=local,
            gateway_url=env.text("AIAS_PUBLIC_URL", f"http://127.0.0.1:{port}").rstrip("/"),
            app_role=env.text("AIAS_APP_DB_ROLE", DEFAULT_APP_ROLE),
        )


def _settings(deployment: Deployment) -> Check:
    problems = []
    for name, value in (
        ("AIAS_INTERNAL_TOKEN", deployment.internal_token),
        ("AIAS_ADMIN_TOKEN", deployment.admin_token),
    ):
        if not value:
            problems.append(f"{name} is not set")
        elif len(value) < MIN_SECRET_CHARS:
            problems.append(f"{name} is shorter than {MIN_SECRET_CHARS} characters")
    if not deployment.local_mode and deployment.admin_token_from != "AIAS_ADMIN_TOKEN":
        problems.append("the operator token comes from make run's data folder outside local mode")
    if deployment.owner_url is None:
        problems.append("no database: set AIAS_DATABASE_URL (the owner role) or run `make run`")
    mode = "local (make run)" if deployment.local_mode else "deployment"
    return Check("settings", not problems, "; ".join(problems) or f"present ({mode})")


def _database_checks(deployment: Deployment) -> list[Check]:
    if deployment.owner_url is None:
        return [Check("database", False, "not reachable: no URL")]
    engine = create_engine(deployment.owner_url)
    try:
        with engine.connect() as connection:
            return [
                _migrations(connection),
                _row_level_security(connection),
                _app_role(connection, deployment.app_role),
            ]
    except Exception as error:  # any driver error means the same thing here
        return [Check("database", False, f"not reachable ({deployment.owner_url_from}): {error}")]
    finally:
        engine.dispose()


def _migrations(connection: Any) -> Check:
    behind = []
    for service in SERVICES:
        config = Config()
        config.set_main_option("script_location", str(migrations_dir(service)))
        heads = set(ScriptDirectory.from_config(config).get_heads())
        applied = {
            row[0]
            for row in connection.execute(
                text(f"SELECT version_num FROM {service}.alembic_version")
            )
        }
        if applied != heads:
            behind.append(f"{service} at {sorted(applied)}, head {sorted(heads)}")
    return Check("migrations", not behind, "; ".join(behind) or "every schema at head")


def _row_level_security(connection: Any) -> Check:
    rows = connection.execute(
        text(
            "SELECT n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = ANY(:schemas) AND (EXISTS ("
            "  SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'"
            "  AND NOT a.attisdropped) OR (n.nspname, c.relname) = ('tenancy', 'tenants'))"
        ),
        {"schemas": list(SERVICES)},
    ).all()
    open_tables = [name for name, enabled, forced in rows if not (enabled and forced)]
    detail = (
        f"RLS not enabled and forced on {', '.join(sorted(open_tables))}"
        if open_tables
        else f"enabled and forced on all {len(rows)} tenant-scoped tables"
    )
    return Check("row_level_security", not open_tables, detail)


def _app_role(connection: Any, role: str) -> Check:
    found = connection.execute(
        text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).first()
    if found is None:
        return Check("app_role", False, f"role {role} does not exist")
    owned = connection.execute(
        text(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(:schemas) AND pg_get_userbyid(c.relowner) = :r"
        ),
        {"schemas": list(SERVICES), "r": role},
    ).scalar_one()
    problems = [
        label
        for label, bad in (
            ("is a superuser", found.rolsuper),
            ("has BYPASSRLS", found.rolbypassrls),
            (f"owns {owned} tables", owned),
        )
        if bad
    ]
    detail = f"{role} " + (
        ", ".join(problems) if problems else "is not owner, superuser or BYPASSRLS"
    )
    return Check("app_role", not problems, detail)


async def _services() -> Check:
    found = {}
    for name in BACKENDS:
        where = target(name)
        async with internal_channel(where.address, where.token) as channel:
            call = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            try:
                reply = await call
                version = dict(await call.initial_metadata() or ()).get(VERSION_METADATA, "?")
                state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                found[name] = f"{state} {version}"
            except grpc.aio.AioRpcError as error:
                found[name] = f"{error.code().name} at {where.address}"
    bad = [name for name, state in found.items() if not state.startswith("SERVING")]
    detail = ", ".join(f"{name} {state}" for name, state in found.items())
    return Check("services", not bad, detail)


async def _stripe(stripe_off: bool) -> Check:
    where = target("billing")
    async with internal_channel(where.address, where.token) as channel:
        try:
            reply = await billing_grpc.BillingServiceStub(channel).GetBillingStatus(
                billing_pb.GetBillingStatusRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return Check("stripe", False, f"billing did not answer: {error.code().name}")
    if reply.configured:
        return Check("stripe", True, "configured")
    if stripe_off:
        return Check("stripe", True, "not configured, and declared off (--stripe-off)")
    return Check(
        "stripe",
        False,
        "not configured: set AIAS_STRIPE_WEBHOOK_SECRET and AIAS_STRIPE_API_KEY, "
        "or declare billing off with --stripe-off",
    )


async def _round_trip(deployment: Deployment) -> Check:
    """A throwaway tenant, workflow, endpoint, webhook, run and artifact; then removed (the
    artifact through its DELETE route, so that route is checked too)."""
    operator = {"Authorization": f"Bearer {deployment.admin_token}"}
    tenant_id = ""
    try:
        async with aiohttp.ClientSession(base_url=deployment.gateway_url) as http:
            async with http.post(
                "/api/tenants",
                json={"name": f"aias-verify-{uuid.uuid4().hex[:8]}", "plan": "enterprise"},
                headers=operator,
            ) as response:
                created = await _json(response, 201)
            tenant_id = created["tenant"]["id"]
            auth = {"Authorization": f"Bearer {created['admin_key']}"}
            async with http.post("/api/workflows", json=ROUND_TRIP_WORKFLOW, headers=auth) as r:
                workflow = (await _json(r, 201))["workflow"]
            async with http.post(
                "/api/webhook-endpoints",
                json={"workflow_id": workflow["id"], "name": "verify"},
                headers=auth,
            ) as response:
                url = (await _json(response, 201))["webhook_endpoint"]["url"]
            path = "/api/" + url.split("/api/", 1)[1]
            async with http.post(path, json=ROUND_TRIP_ORDER) as response:
                run_id = (await _json(response, 202))["run_id"]
            run = await _finished(http, run_id, auth)
            if run["status"] != "succeeded":
                return Check(
                    "round_trip", False, f"run {run_id} ended {run['status']}: {run['error']}"
                )
            async with http.get("/api/artifacts", params={"run_id": run_id}, headers=auth) as r:
                artifact = (await _json(r, 200))["artifacts"][0]
            async with http.get(f"/api/artifacts/{artifact['id']}/download", headers=auth) as r:
                content = await r.read()
            digest = hashlib.sha256(content).hexdigest()
            if content != EXPECTED_ARTIFACT or digest != artifact["sha256"]:
                return Check("round_trip", False, f"artifact {artifact['id']} has the wrong bytes")
            async with http.delete(f"/api/artifacts/{artifact['id']}", headers=auth) as r:
                await _json(r, 200)
            async with http.delete(f"/api/workflows/{workflow['id']}", headers=auth) as response:
                await response.read()
        return Check(
            "round_trip", True, f"webhook → run {run_id} → artifact sha256 {digest[:12]}… → deleted"
        )
    except (aiohttp.ClientError, TimeoutError, _Unexpected) as error:
        return Check("round_trip", False, f"via {deployment.gateway_url}: {error}")
    finally:
        if tenant_id:
            await _remove_tenant(tenant_id)


class _Unexpected(Exception):
    """An answer other than the one the round trip needs."""


async def _json(response: aiohttp.ClientResponse, status: int) -> Any:
    body = await response.read()
    if response.status != status:
        raise _Unexpected(
            f"{response.method} {response.url.path} answered {response.status}: {body[:300]!r}"
        )
    return json.loads(body)


async def _finished(http: aiohttp.ClientSession, run_id: str, auth: dict[str, str]) -> Any:
    deadline = time.monotonic() + ROUND_TRIP_SECONDS
    while time.monotonic() < deadline:
        async with http.get(f"/api/runs/{run_id}", headers=auth) as response:
            run = (await _json(response, 200))["run"]
        if run["status"] not in ("queued", "running"):
            return run
        await asyncio.sleep(0.2)
    raise _Unexpected(f"run {run_id} did not finish within {ROUND_TRIP_SECONDS:.0f} s")


async def _remove_tenant(tenant_id: str) -> None:
    where = target("tenancy")
    async with internal_channel(where.address, where.token) as channel:
        stub = tenancy_grpc.TenancyServiceStub(channel)
        await stub.UpdateTenant(
            tenancy_pb.UpdateTenantRequest(
                tenant_id=tenant_id, status=tenancy_pb.TENANT_STATUS_SUSPENDED
            ),
            timeout=5,
        )
        await stub.DeleteTenant(tenancy_pb.DeleteTenantRequest(tenant_id=tenant_id), timeout=5)


async def run_checks(stripe_off: bool, round_trip: bool) -> list[Check]:
    deployment = Deployment.from_environment()
    checks = [_settings(deployment)]
    checks += await asyncio.to_thread(_database_checks, deployment)
    services = await _services()
    checks += [services, await _stripe(stripe_off)]
    if round_trip:
        checks.append(
            await _round_trip(deployment)
            if services.ok
            else Check("round_trip", False, "skipped: not every service is serving")
        )
    return checks


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--stripe-off", is_flag=True, help="Billing without Stripe is intended.")
@click.option("--no-round-trip", is_flag=True, help="Skip the synthetic webhook round trip.")
def verify(as_json: bool, stripe_off: bool, no_round_trip: bool) -> None:
    """Checks a running deployment: settings, migrations, row-level security, the app role,
    every service, Stripe, and a webhook's round trip to a downloaded artifact.

    It reads the environment the services read (and `make run`'s .data folder in local
    mode). Exit code 1 when any check fails; each failure is named.
    """
    checks = asyncio.run(run_checks(stripe_off, not no_round_trip))
    passed = all(check.ok for check in checks)
    if as_json:
        click.echo(json.dumps({"ok": passed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for check in checks:
            click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<20} {check.detail}")
    if not passed:
        raise SystemExit(1)
