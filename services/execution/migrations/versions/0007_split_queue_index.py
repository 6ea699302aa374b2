"""The run queue's index split in two: queued runs by tenant, and leases by expiry.

One index over queued and running rows made each claim read every queued run of a tenant (its
running rows sort first, and a probe for "the first claimable run" had to look past them), so a
backlog made every claim slower. Now a claim finds a tenant's oldest queued run in one index
probe, and expired leases are put back in the queue by one small scan of the leases index.

Workers ignore the payload of the queue's notification (any one wakes a claim), so it is now
empty: PostgreSQL delivers identical notifications of a transaction once, and a batch of new
runs wakes each worker once, by one statement-level trigger, instead of once per run.

Revision ID: execution_0007_split_queue_index
Revises: execution_0006_run_trace_context
"""

from alembic import op
from sqlalchemy import text

revision = "execution_0007_split_queue_index"
down_revision = "execution_0006_run_trace_context"

S = "execution"


def upgrade() -> None:
    op.create_index(
        "runs_queued",
        "runs",
        ["tenant_id", "available_time"],
        schema=S,
        postgresql_where=text("status = 'queued'"),
    )
    op.create_index(
        "runs_leased",
        "runs",
        ["lease_expire_time"],
        schema=S,
        postgresql_where=text("status = 'running'"),
    )
    op.drop_index("runs_queue", table_name="runs", schema=S)
    _notify_function(payload="''")
    op.execute(f"DROP TRIGGER runs_notify ON {S}.runs")
    # A new run is always queued; an update queues one again (a retry, an expired lease).
    op.execute(f"""
        CREATE TRIGGER runs_notify AFTER INSERT ON {S}.runs
        FOR EACH STATEMENT EXECUTE FUNCTION {S}.notify_run_queued()""")
    op.execute(f"""
        CREATE TRIGGER runs_notify_update AFTER UPDATE OF status, available_time ON {S}.runs
        FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION {S}.notify_run_queued()""")


def _notify_function(payload: str) -> None:
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {S}.notify_run_queued() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('aias_run_queue', {payload});
            RETURN NULL;
        END $$""")


def downgrade() -> None:
    op.execute(f"DROP TRIGGER runs_notify_update ON {S}.runs")
    op.execute(f"DROP TRIGGER runs_notify ON {S}.runs")
    _notify_function(payload="NEW.id::text")
    op.execute(f"""
        CREATE TRIGGER runs_notify AFTER INSERT OR UPDATE OF status, available_time ON {S}.runs
        FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION {S}.notify_run_queued()""")
    op.create_index(
        "runs_queue",
        "runs",
        ["tenant_id", "available_time"],
        schema=S,
        postgresql_where=text("status IN ('queued', 'running')"),
    )
    op.drop_index("runs_leased", table_name="runs", schema=S)
    op.drop_index("runs_queued", table_name="runs", schema=S)
