"""The operator CLI `aias`: one click group; each subcommand group is registered in one line."""

from __future__ import annotations

import click

from aias.cli import billing, tenants, verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The operator CLI of AIAS.

    It calls the services' gRPC API with the internal credential, read from the environment
    the services use (AIAS_TENANCY_ADDR, AIAS_INTERNAL_TOKEN); without them it talks to
    `make run` (its default ports and the token in .data/internal-token). Exit codes: 1 the
    service refused the request, 2 usage or configuration error, 3 the service is unreachable.
    """


# One line per command group (and its import above).
cli.add_command(tenants.tenants)
cli.add_command(tenants.plans)
cli.add_command(billing.billing)
cli.add_command(verify.verify)


def main() -> None:
    """The `aias` console script."""
    cli(prog_name="aias")
