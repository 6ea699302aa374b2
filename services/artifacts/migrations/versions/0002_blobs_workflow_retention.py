"""Blob reference counts, artifacts' workflow, and the retention sweeper's cross-tenant path.

Revision ID: artifacts_0002_blobs
Revises: artifacts_0001
"""

import sqlalchemy as sa
from alembic import op

from aias.core.rls import allow_system_path, enable_tenant_rls

revision = "artifacts_0002_blobs"
down_revision = "artifacts_0001"

S = "artifacts"
TIMESTAMP = sa.DateTime(timezone=True)
SWEEPER = "artifact_retention"


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("tenant_id", sa.Uuid, primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        # How many artifacts name this content; its bytes count against the quota while > 0.
        sa.Column("refcount", sa.Integer, nullable=False, server_default="0"),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        # When the last artifact naming it went; the sweeper frees it a grace period later.
        sa.Column("unreferenced_time", TIMESTAMP, server_default=sa.func.now()),
        sa.CheckConstraint("refcount >= 0", name="blobs_refcount_not_negative"),
        schema=S,
    )
    op.create_index(
        "blobs_unreferenced",
        "blobs",
        ["unreferenced_time"],
        schema=S,
        postgresql_where=sa.text("refcount = 0"),
    )
    op.add_column("artifacts", sa.Column("workflow_id", sa.Uuid), schema=S)
    op.create_index(
        "artifacts_workflow_created",
        "artifacts",
        ["tenant_id", "workflow_id", "create_time", "id"],
        schema=S,
    )
    op.create_index(
        "artifacts_expiring",
        "artifacts",
        ["expire_time"],
        schema=S,
        postgresql_where=sa.text("expire_time IS NOT NULL"),
    )
    # Existing artifacts' content was charged once per tenant and digest (the old upload checked
    # the store first), which is what one row per blob with its count of artifacts charges.
    # FORCE is lifted for the copy so an owner that is not a superuser sees every tenant.
    op.execute(f"ALTER TABLE {S}.artifacts NO FORCE ROW LEVEL SECURITY")
    op.execute(f"""
        INSERT INTO {S}.blobs (tenant_id, sha256, size_bytes, refcount, unreferenced_time)
        SELECT tenant_id, sha256, max(size_bytes), count(*), NULL
        FROM {S}.artifacts GROUP BY tenant_id, sha256
    """)
    op.execute(f"ALTER TABLE {S}.artifacts FORCE ROW LEVEL SECURITY")
    # No artifact may name content that has no blob row: the sweeper cannot free it under one.
    op.create_foreign_key(
        "artifacts_blob",
        "artifacts",
        "blobs",
        ["tenant_id", "sha256"],
        ["tenant_id", "sha256"],
        source_schema=S,
        referent_schema=S,
    )
    enable_tenant_rls(f"{S}.blobs")
    # The sweeper finds expired artifacts and unreferenced blobs of every tenant on this path,
    # read-only; it deletes them as each tenant, like every other write.
    allow_system_path(f"{S}.artifacts", SWEEPER, read_only=True)
    allow_system_path(f"{S}.blobs", SWEEPER, read_only=True)


def downgrade() -> None:
    op.execute(f"DROP POLICY system_{SWEEPER} ON {S}.blobs")
    op.execute(f"DROP POLICY system_{SWEEPER} ON {S}.artifacts")
    op.drop_constraint("artifacts_blob", "artifacts", schema=S)
    op.drop_index("artifacts_expiring", "artifacts", schema=S)
    op.drop_index("artifacts_workflow_created", "artifacts", schema=S)
    op.drop_column("artifacts", "workflow_id", schema=S)
    op.drop_table("blobs", schema=S)
