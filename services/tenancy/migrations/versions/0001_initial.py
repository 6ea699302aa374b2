"""Tenants and API keys.

Revision ID: tenancy_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from aias.core.rls import enable_tenant_rls

revision = "tenancy_0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column(
            "create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema="tenancy",
    )
    # The tenants table is keyed by the tenant itself, so its policy column is `id`.
    enable_tenant_rls("tenancy.tenants", column="id")
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "tenant_id",
            sa.Uuid,
            sa.ForeignKey("tenancy.tenants.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary, nullable=False),
        sa.Column(
            "create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("revoke_time", sa.DateTime(timezone=True)),
        schema="tenancy",
    )
    enable_tenant_rls("tenancy.api_keys")


def downgrade() -> None:
    op.drop_table("api_keys", schema="tenancy")
    op.drop_table("tenants", schema="tenancy")
