"""Workflows, their versions, webhook endpoints, runs (the queue) and step logs.

Revision ID: execution_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from aias.core.rls import allow_system_path, enable_tenant_rls

revision = "execution_0001"
down_revision = None

S = "execution"
TIMESTAMP = sa.DateTime(timezone=True)


def _created() -> sa.Column[object]:
    return sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("current_version", sa.Integer, nullable=False),
        _created(),
        sa.Column("update_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("workflows_tenant_created", "workflows", ["tenant_id", "create_time"], schema=S)
    op.create_table(
        "workflow_versions",
        sa.Column(
            "workflow_id",
            sa.Uuid,
            sa.ForeignKey(f"{S}.workflows.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column("steps", postgresql.JSONB, nullable=False),
        _created(),
        schema=S,
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column(
            "workflow_id",
            sa.Uuid,
            sa.ForeignKey(f"{S}.workflows.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        _created(),
        sa.UniqueConstraint("tenant_id", "secret_hash", name="webhook_endpoints_secret"),
        schema=S,
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column(
            "workflow_id",
            sa.Uuid,
            sa.ForeignKey(f"{S}.workflows.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("workflow_version", sa.Integer, nullable=False),
        sa.Column(
            "endpoint_id", sa.Uuid, sa.ForeignKey(f"{S}.webhook_endpoints.id", ondelete="SET NULL")
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("available_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expire_time", TIMESTAMP),
        _created(),
        sa.Column("start_time", TIMESTAMP),
        sa.Column("end_time", TIMESTAMP),
        schema=S,
    )
    op.create_index("runs_tenant_created", "runs", ["tenant_id", "create_time"], schema=S)
    # The queue scan: only claimable rows are indexed, so it stays small however many runs finished.
    op.create_index(
        "runs_claimable",
        "runs",
        ["available_time"],
        schema=S,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "runs_idempotency",
        "runs",
        ["endpoint_id", "idempotency_key", "create_time"],
        schema=S,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "step_logs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column(
            "run_id", sa.Uuid, sa.ForeignKey(f"{S}.runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("start_time", TIMESTAMP, nullable=False),
        sa.Column("end_time", TIMESTAMP, nullable=False),
        sa.Column("duration_ms", sa.BigInteger, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("output_bytes", sa.BigInteger, nullable=False),
        sa.Column("output_sha256", sa.String(64), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        schema=S,
    )
    op.create_index("step_logs_run", "step_logs", ["run_id", "attempt", "step_index"], schema=S)
    for table in ("workflows", "workflow_versions", "webhook_endpoints", "runs", "step_logs"):
        enable_tenant_rls(f"{S}.{table}")
    # The worker's queue claim is the one cross-tenant path in this schema.
    allow_system_path(f"{S}.runs", "run_queue")
    # Workers LISTEN on this channel, so a committed run wakes one at once.
    op.execute(f"""
        CREATE FUNCTION {S}.notify_run_queued() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('aias_run_queue', NEW.id::text);
            RETURN NULL;
        END $$""")
    op.execute(f"""
        CREATE TRIGGER runs_notify AFTER INSERT OR UPDATE OF status, available_time ON {S}.runs
        FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION {S}.notify_run_queued()""")


def downgrade() -> None:
    for table in ("step_logs", "runs", "webhook_endpoints", "workflow_versions", "workflows"):
        op.drop_table(table, schema=S)
    op.execute(f"DROP FUNCTION IF EXISTS {S}.notify_run_queued()")
