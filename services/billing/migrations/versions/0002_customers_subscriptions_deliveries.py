"""Stripe customers, subscriptions and every delivery; events remember their customer.

Revision ID: billing_0002
Revises: billing_0001
"""

import sqlalchemy as sa
from alembic import op

from aias.core.rls import allow_system_path, enable_tenant_rls

revision = "billing_0002"
down_revision = "billing_0001"

S = "billing"
TIMESTAMP = sa.DateTime(timezone=True)
INTAKE = "stripe_intake"


def upgrade() -> None:
    op.add_column("stripe_events", sa.Column("customer_id", sa.String(255)), schema=S)
    # Events recorded before this revision can be replayed when their customer is linked.
    op.execute(f"""
        UPDATE {S}.stripe_events SET customer_id = payload #>> '{{data,object,customer}}'
        WHERE jsonb_typeof(payload #> '{{data,object,customer}}') = 'string'""")
    op.create_index("stripe_events_customer", "stripe_events", ["customer_id", "created"], schema=S)

    op.create_table(
        "customers",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("plan", sa.String(64), nullable=False, server_default=""),
        sa.Column("plan_time", TIMESTAMP),
        sa.Column("plan_revision", sa.Integer, nullable=False, server_default="0"),
        sa.Column("synced_revision", sa.Integer, nullable=False, server_default="0"),
        schema=S,
    )
    enable_tenant_rls(f"{S}.customers")
    # Stripe customer -> tenant: a webhook learns its tenant before it can act as it.
    allow_system_path(f"{S}.customers", INTAKE, read_only=True)

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("price_lookup_key", sa.String(255), nullable=False),
        sa.Column("current_period_end", TIMESTAMP),
        sa.Column("cancel_at_period_end", sa.Boolean, nullable=False),
        sa.Column("past_due", sa.Boolean, nullable=False),
        sa.Column("last_event_time", TIMESTAMP, nullable=False),
        sa.Column("update_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("subscriptions_tenant", "subscriptions", ["tenant_id"], schema=S)
    enable_tenant_rls(f"{S}.subscriptions")

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        schema=S,
    )
    op.create_index(
        "deliveries_tenant_created", "deliveries", ["tenant_id", "create_time", "id"], schema=S
    )
    op.create_index("deliveries_created", "deliveries", ["create_time", "id"], schema=S)
    enable_tenant_rls(f"{S}.deliveries")
    # The intake path reads every delivery (an internal caller acting for no tenant lists
    # them all) and writes only those that belong to no tenant: rejected deliveries and
    # events of unknown customers. Rejected ones are capped, so it may delete those too.
    allow_system_path(f"{S}.deliveries", INTAKE, read_only=True)
    unassigned = f"tenant_id IS NULL AND current_setting('aias.system_path', true) = '{INTAKE}'"
    op.execute(
        f"CREATE POLICY {INTAKE}_insert ON {S}.deliveries FOR INSERT WITH CHECK ({unassigned})"
    )
    op.execute(f"CREATE POLICY {INTAKE}_delete ON {S}.deliveries FOR DELETE USING ({unassigned})")


def downgrade() -> None:
    op.drop_table("deliveries", schema=S)
    op.drop_table("subscriptions", schema=S)
    op.drop_table("customers", schema=S)
    op.drop_index("stripe_events_customer", "stripe_events", schema=S)
    op.drop_column("stripe_events", "customer_id", schema=S)
