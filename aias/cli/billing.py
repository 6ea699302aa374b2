"""`aias billing …`: the operator's side of the billing service (reconcile plans with Stripe)."""

from __future__ import annotations

import asyncio

import click

from aias.billing.v1 import billing_service_pb2 as pb
from aias.billing.v1 import billing_service_pb2_grpc as pb_grpc
from aias.cli.connection import Failure, call
from aias.cli.output import json_option, print_json, table, to_json

# Reconciling every tenant makes one Stripe call per customer: more than one RPC's usual time.
RECONCILE_TIMEOUT_SECONDS = 600.0


@click.group()
def billing() -> None:
    """Billing: tenants' plans and their Stripe subscriptions."""


@billing.command()
@click.argument("tenant_id", metavar="[ID]", required=False, default="")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@json_option
def reconcile(tenant_id: str, dry_run: bool, as_json: bool) -> None:
    """Re-reads subscriptions from Stripe and fixes plans a missed webhook left wrong.

    With ID only that tenant; without it every tenant with a Stripe customer. Exits 1 when a
    tenant could not be reconciled.
    """
    request = pb.ReconcileRequest(tenant_id=tenant_id, dry_run=dry_run)
    reply: pb.ReconcileResponse = asyncio.run(
        call(
            "billing",
            lambda channel: pb_grpc.BillingServiceStub(channel).Reconcile(
                request, timeout=RECONCILE_TIMEOUT_SECONDS
            ),
        )
    )
    if as_json:
        print_json(to_json(reply))
    else:
        _print(reply, dry_run)
    failed = sum(1 for result in reply.tenants if result.error)
    if failed:
        raise Failure(f"{failed} tenant(s) could not be reconciled")


def _print(reply: pb.ReconcileResponse, dry_run: bool) -> None:
    """The tenants that changed (or would) or failed; the others only count."""
    verb = "would change" if dry_run else "changed"
    rows = [
        (
            result.tenant_id,
            result.customer_id,
            f"{result.previous_plan} -> {result.plan}" if result.changed else result.plan,
            f"not reconciled: {result.error}" if result.error else verb,
        )
        for result in reply.tenants
        if result.changed or result.error
    ]
    if rows:
        click.echo(table(("tenant", "stripe customer", "plan", "result"), rows))
    changed = sum(1 for result in reply.tenants if result.changed)
    click.echo(f"{len(reply.tenants)} tenant(s) checked, {changed} {verb}.")
