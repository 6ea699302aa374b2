"""Runs keep the W3C trace context of the request that queued them, for the worker's spans.

Revision ID: execution_0006_run_trace_context
Revises: execution_0005_alerts
"""

import sqlalchemy as sa
from alembic import op

revision = "execution_0006_run_trace_context"
down_revision = "execution_0005_alerts"

S = "execution"


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites no rows, and a run queued while tracing
    # is off has none.
    op.add_column("runs", sa.Column("traceparent", sa.String(64)), schema=S)


def downgrade() -> None:
    op.drop_column("runs", "traceparent", schema=S)
