"""Soft deletion, secret rotation, signing keys, body digests and the webhook delivery log.

Revision ID: execution_0003_lifecycle
Revises: execution_0002
"""

import sqlalchemy as sa
from alembic import op

from aias.core.rls import enable_tenant_rls

revision = "execution_0003_lifecycle"
down_revision = "execution_0002"

S = "execution"
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("workflows", sa.Column("delete_time", TIMESTAMP), schema=S)
    op.add_column("webhook_endpoints", sa.Column("previous_secret_hash", sa.LargeBinary), schema=S)
    op.add_column(
        "webhook_endpoints", sa.Column("previous_secret_expire_time", TIMESTAMP), schema=S
    )
    op.add_column("webhook_endpoints", sa.Column("signing_key", sa.LargeBinary), schema=S)
    op.add_column("webhook_endpoints", sa.Column("delete_time", TIMESTAMP), schema=S)
    # A webhook URL is looked up by its secret's hash, current or previous.
    op.create_index(
        "webhook_endpoints_previous_secret",
        "webhook_endpoints",
        ["tenant_id", "previous_secret_hash"],
        schema=S,
        postgresql_where=sa.text("previous_secret_hash IS NOT NULL"),
    )
    op.add_column("runs", sa.Column("payload_sha256", sa.LargeBinary), schema=S)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column(
            "endpoint_id",
            sa.Uuid,
            sa.ForeignKey(f"{S}.webhook_endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        # Not a foreign key: the log says which run a delivery made even once the run is gone.
        sa.Column("run_id", sa.Uuid),
        schema=S,
    )
    # One index serves the newest-first pages, the endpoint filter (few rows per tenant) and the
    # retention's "everything older than the Nth newest".
    op.create_index(
        "webhook_deliveries_tenant_created",
        "webhook_deliveries",
        ["tenant_id", "create_time", "id"],
        schema=S,
    )
    enable_tenant_rls(f"{S}.webhook_deliveries")


def downgrade() -> None:
    op.drop_table("webhook_deliveries", schema=S)
    op.drop_column("runs", "payload_sha256", schema=S)
    op.drop_index("webhook_endpoints_previous_secret", "webhook_endpoints", schema=S)
    for column in (
        "delete_time",
        "signing_key",
        "previous_secret_expire_time",
        "previous_secret_hash",
    ):
        op.drop_column("webhook_endpoints", column, schema=S)
    op.drop_column("workflows", "delete_time", schema=S)
