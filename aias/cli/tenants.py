"""`aias tenants …` and `aias plans`: the operator's side of the tenancy service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from aias.cli.connection import RPC_TIMEOUT_SECONDS, call
from aias.cli.output import json_option, print_json, table, to_json, when
from aias.core.entitlements import NUMERIC_LIMITS, STEP_TYPES_LIMIT, UNLIMITED
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from aias.tenancy.v1 import tenancy_service_pb2_grpc as pb_grpc

LIMIT_NAMES = (*NUMERIC_LIMITS, STEP_TYPES_LIMIT)
_PAGE_SIZE = 100  # the most ListTenants returns at once
_TENANT_ID = click.argument("tenant_id", metavar="ID")
_LIMIT = click.argument("limit", type=click.Choice(LIMIT_NAMES), metavar="LIMIT")

T = TypeVar("T")


def _tenancy(rpc: Callable[[pb_grpc.TenancyServiceStub], Awaitable[T]]) -> T:
    """Runs one command's calls to tenancy in an event loop of its own."""
    return asyncio.run(call("tenancy", lambda channel: rpc(pb_grpc.TenancyServiceStub(channel))))


def _status(status: pb.TenantStatus.ValueType) -> str:
    return pb.TenantStatus.Name(status).removeprefix("TENANT_STATUS_").lower()


def _tenant_table(tenants: list[pb.Tenant]) -> str:
    return table(
        ("id", "name", "plan", "status", "created"),
        [
            (tenant.id, tenant.name, tenant.plan, _status(tenant.status), when(tenant.create_time))
            for tenant in tenants
        ],
    )


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.4g} {unit}"
        value /= 1024
    return f"{value:.4g} TiB"


def _limit_value(limits: pb.Limits, name: str) -> str:
    message: Any = limits  # HasField's stub accepts literal names only
    if name == STEP_TYPES_LIMIT:
        return ",".join(limits.allowed_step_types.types) if message.HasField(name) else "all"
    if not message.HasField(name):
        return "unlimited"
    value: int = getattr(limits, name)
    return f"{value} ({_size(value)})" if name.endswith("_bytes") else str(value)


def _limits_table(tenant: pb.Tenant, limits: pb.Limits) -> str:
    """The effective limits, each marked with whether the plan or an override sets it."""
    overridden = set(tenant.limit_overrides)
    if tenant.HasField("allowed_step_types_override"):
        overridden.add(STEP_TYPES_LIMIT)
    return table(
        ("limit", "value", "from"),
        [
            (name, _limit_value(limits, name), "override" if name in overridden else "plan")
            for name in LIMIT_NAMES
        ],
    )


def _print_tenant(tenant: pb.Tenant, limits: pb.Limits | None = None) -> None:
    click.echo(_tenant_table([tenant]))
    if limits is not None:
        click.echo()
        click.echo(_limits_table(tenant, limits))


def _update(request: pb.UpdateTenantRequest, as_json: bool, *, with_limits: bool) -> None:
    reply: pb.UpdateTenantResponse = _tenancy(
        lambda stub: stub.UpdateTenant(request, timeout=RPC_TIMEOUT_SECONDS)
    )
    if as_json:
        print_json(to_json(reply))
    else:
        _print_tenant(reply.tenant, reply.limits if with_limits else None)


@click.group()
def tenants() -> None:
    """Create, list and change tenants."""


@tenants.command()
@click.argument("name")
@click.option("--plan", default="", help="The plan to start on (default: free); see `aias plans`.")
@json_option
def create(name: str, plan: str, as_json: bool) -> None:
    """Create a tenant; prints its owner key once.

    The first API key has the owner role. It is shown only here: only its hash is stored.
    """
    reply: pb.CreateTenantResponse = _tenancy(
        lambda stub: stub.CreateTenant(
            pb.CreateTenantRequest(name=name, plan=plan), timeout=RPC_TIMEOUT_SECONDS
        )
    )
    if as_json:
        print_json(to_json(reply))
        return
    _print_tenant(reply.tenant)
    click.echo()
    click.echo("Owner API key, shown only this once (only its hash is stored):")
    click.echo(f"  {reply.admin_key}")


@tenants.command("list")
@json_option
def list_tenants(as_json: bool) -> None:
    """List every tenant."""

    async def every_page(stub: pb_grpc.TenancyServiceStub) -> list[pb.Tenant]:
        found: list[pb.Tenant] = []
        token = ""
        while True:
            page: pb.ListTenantsResponse = await stub.ListTenants(
                pb.ListTenantsRequest(page_size=_PAGE_SIZE, page_token=token),
                timeout=RPC_TIMEOUT_SECONDS,
            )
            found.extend(page.tenants)
            token = page.next_page_token
            if not token:
                return found

    found = _tenancy(every_page)
    if as_json:
        print_json({"tenants": [to_json(tenant) for tenant in found]})
    else:
        click.echo(_tenant_table(found))


@tenants.command()
@_TENANT_ID
@json_option
def show(tenant_id: str, as_json: bool) -> None:
    """Show a tenant and its effective limits.

    The effective limits are the plan's, with the tenant's overrides applied.
    """

    async def tenant_and_limits(stub: pb_grpc.TenancyServiceStub) -> tuple[pb.Tenant, pb.Limits]:
        got: pb.GetTenantResponse = await stub.GetTenant(
            pb.GetTenantRequest(tenant_id=tenant_id), timeout=RPC_TIMEOUT_SECONDS
        )
        entitled: pb.GetEntitlementsResponse = await stub.GetEntitlements(
            pb.GetEntitlementsRequest(tenant_id=tenant_id), timeout=RPC_TIMEOUT_SECONDS
        )
        return got.tenant, entitled.entitlements.limits

    tenant, limits = _tenancy(tenant_and_limits)
    if as_json:
        print_json({"tenant": to_json(tenant), "limits": to_json(limits)})
    else:
        _print_tenant(tenant, limits)


@tenants.command()
@_TENANT_ID
@json_option
def suspend(tenant_id: str, as_json: bool) -> None:
    """Suspend a tenant until it is resumed.

    Meanwhile its webhooks and API keys are refused with TENANT_SUSPENDED.
    """
    request = pb.UpdateTenantRequest(tenant_id=tenant_id, status=pb.TENANT_STATUS_SUSPENDED)
    _update(request, as_json, with_limits=False)


@tenants.command()
@_TENANT_ID
@json_option
def resume(tenant_id: str, as_json: bool) -> None:
    """Make a suspended tenant active again."""
    request = pb.UpdateTenantRequest(tenant_id=tenant_id, status=pb.TENANT_STATUS_ACTIVE)
    _update(request, as_json, with_limits=False)


@tenants.command("set-plan")
@_TENANT_ID
@click.argument("plan")
@json_option
def set_plan(tenant_id: str, plan: str, as_json: bool) -> None:
    """Move a tenant to another plan.

    The tenant's limit overrides stay; `aias plans` lists the plans.
    """
    _update(pb.UpdateTenantRequest(tenant_id=tenant_id, plan=plan), as_json, with_limits=True)


_LIMITS_EPILOG = f"LIMIT is one of: {', '.join(LIMIT_NAMES)}."


# ignore_unknown_options lets VALUE be -1, the API's spelling of unlimited, not an option.
@tenants.command(
    "set-limit", epilog=_LIMITS_EPILOG, context_settings={"ignore_unknown_options": True}
)
@_TENANT_ID
@_LIMIT
@click.argument("value")
@json_option
def set_limit(tenant_id: str, limit: str, value: str, as_json: bool) -> None:
    """Override one of a tenant's limits.

    VALUE is a whole number or `unlimited` (or -1); for allowed_step_types it is a
    comma-separated list of step types.
    """
    request = pb.UpdateTenantRequest(tenant_id=tenant_id)
    if limit == STEP_TYPES_LIMIT:
        request.allowed_step_types_override.types.extend(_step_types(value))
    else:
        request.limit_overrides[limit] = _limit_number(value)
    _update(request, as_json, with_limits=True)


@tenants.command("clear-limit", epilog=_LIMITS_EPILOG)
@_TENANT_ID
@_LIMIT
@json_option
def clear_limit(tenant_id: str, limit: str, as_json: bool) -> None:
    """Drop an override; the plan's value applies."""
    request = pb.UpdateTenantRequest(tenant_id=tenant_id, clear_limit_overrides=[limit])
    _update(request, as_json, with_limits=True)


def _limit_number(value: str) -> int:
    if value.lower() == "unlimited" or value == str(UNLIMITED):
        return UNLIMITED
    if value.isascii() and value.isdigit():
        return int(value)
    raise click.BadParameter(
        f"must be a whole number (0 or more) or `unlimited`, got {value!r}", param_hint="VALUE"
    )


def _step_types(value: str) -> list[str]:
    types = [part.strip() for part in value.split(",") if part.strip()]
    # An empty list would allow no step at all; "unlimited" is no step type. Both are slips.
    if not types or value.lower() == "unlimited":
        raise click.BadParameter(
            "list the step types to allow, comma-separated (e.g. transform,artifact); "
            "`aias tenants clear-limit ID allowed_step_types` restores the plan's list",
            param_hint="VALUE",
        )
    return types


@click.command()
@json_option
def plans(as_json: bool) -> None:
    """List the plan catalog: every plan's limits."""
    reply: pb.ListPlansResponse = _tenancy(
        lambda stub: stub.ListPlans(pb.ListPlansRequest(), timeout=RPC_TIMEOUT_SECONDS)
    )
    if as_json:
        print_json(to_json(reply))
        return
    # Step type lists would make the plans' columns too wide: they get a table of their own.
    click.echo(
        table(
            ("limit", *(plan.name for plan in reply.plans)),
            [
                (name, *(_limit_value(plan.limits, name) for plan in reply.plans))
                for name in NUMERIC_LIMITS
            ],
        )
    )
    click.echo()
    click.echo(
        table(
            ("plan", STEP_TYPES_LIMIT),
            [(plan.name, _limit_value(plan.limits, STEP_TYPES_LIMIT)) for plan in reply.plans],
        )
    )
