"""Processed Stripe events.

Revision ID: billing_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "billing_0001"
down_revision = None


def upgrade() -> None:
    # Not tenant-scoped: an event is recorded before (and whether or not) it maps to a tenant.
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", postgresql.JSONB, nullable=False),
        sa.Column(
            "receive_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema="billing",
    )


def downgrade() -> None:
    op.drop_table("stripe_events", schema="billing")
