"""Fair claims across tenants, batched step logs, cancel and retry of runs, and run event notices.

Revision ID: execution_0004
Revises: execution_0003_lifecycle
"""

import sqlalchemy as sa
from alembic import op

from aias.core.rls import allow_system_path

revision = "execution_0004"
down_revision = "execution_0003_lifecycle"

S = "execution"
# Execution processes LISTEN here while someone follows a run (WatchRun); the payload is its id.
EVENTS = "aias_run_events"
# Workers LISTEN here for runs they hold that were asked to stop; the payload is the run's id.
CANCELS = "aias_run_cancel"
CLAIMABLE = "status IN ('queued', 'running')"


def upgrade() -> None:
    op.add_column(
        "runs",
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        schema=S,
    )
    op.add_column(
        "runs",
        sa.Column("retry_of", sa.Uuid, sa.ForeignKey(f"{S}.runs.id", ondelete="SET NULL")),
        schema=S,
    )
    # A claim walks the tenants with claimable runs in id order (one probe each) and takes each
    # one's oldest runs; both use this index, whose size is the queue's, not the history's.
    op.create_index(
        "runs_queue",
        "runs",
        ["tenant_id", "available_time"],
        schema=S,
        postgresql_where=sa.text(CLAIMABLE),
    )
    op.drop_index("runs_claimable", table_name="runs", schema=S)
    # A worker writes the step logs of many tenants' runs in one statement; it reads none.
    allow_system_path(f"{S}.step_logs", "run_queue", insert_only=True)
    op.execute(f"""
        CREATE FUNCTION {S}.notify_run_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{EVENTS}', NEW.id::text);
            IF NEW.cancel_requested AND NOT OLD.cancel_requested THEN
                PERFORM pg_notify('{CANCELS}', NEW.id::text);
            END IF;
            RETURN NULL;
        END $$""")
    op.execute(f"""
        CREATE TRIGGER runs_changed AFTER UPDATE OF status, attempt, cancel_requested ON {S}.runs
        FOR EACH ROW WHEN (
            OLD.status IS DISTINCT FROM NEW.status
            OR OLD.attempt IS DISTINCT FROM NEW.attempt
            OR OLD.cancel_requested IS DISTINCT FROM NEW.cancel_requested
        ) EXECUTE FUNCTION {S}.notify_run_changed()""")
    op.execute(f"""
        CREATE FUNCTION {S}.notify_step_logged() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{EVENTS}', NEW.run_id::text);
            RETURN NULL;
        END $$""")
    op.execute(f"""
        CREATE TRIGGER step_logs_added AFTER INSERT ON {S}.step_logs
        FOR EACH ROW EXECUTE FUNCTION {S}.notify_step_logged()""")


def downgrade() -> None:
    op.execute(f"DROP TRIGGER IF EXISTS step_logs_added ON {S}.step_logs")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.notify_step_logged()")
    op.execute(f"DROP TRIGGER IF EXISTS runs_changed ON {S}.runs")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.notify_run_changed()")
    op.execute(f"DROP POLICY IF EXISTS system_run_queue ON {S}.step_logs")
    op.create_index(
        "runs_claimable", "runs", ["available_time"], schema=S, postgresql_where=sa.text(CLAIMABLE)
    )
    op.drop_index("runs_queue", table_name="runs", schema=S)
    op.drop_column("runs", "retry_of", schema=S)
    op.drop_column("runs", "cancel_requested", schema=S)
