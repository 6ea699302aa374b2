"""Artifact metadata.

Revision ID: artifacts_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from aias.core.rls import enable_tenant_rls

revision = "artifacts_0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column("run_id", sa.Uuid, nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("media_type", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column(
            "create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expire_time", sa.DateTime(timezone=True)),
        sa.UniqueConstraint(
            "tenant_id", "run_id", "step_id", "name", name="artifacts_run_step_name"
        ),
        schema="artifacts",
    )
    op.create_index(
        "artifacts_tenant_created", "artifacts", ["tenant_id", "create_time"], schema="artifacts"
    )
    op.create_index("artifacts_run", "artifacts", ["run_id"], schema="artifacts")
    enable_tenant_rls("artifacts.artifacts")


def downgrade() -> None:
    op.drop_table("artifacts", schema="artifacts")
