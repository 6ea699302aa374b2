"""A tenant's past-due alert waits on its customer row until execution has taken it.

Revision ID: billing_0003_past_due_alerts
Revises: billing_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "billing_0003_past_due_alerts"
down_revision = "billing_0002"

S = "billing"


def upgrade() -> None:
    op.add_column("customers", sa.Column("past_due_alert", sa.String(255)), schema=S)


def downgrade() -> None:
    op.drop_column("customers", "past_due_alert", schema=S)
