"""Alert destinations, the alert outbox and its attempts; failed runs raise run.failed.

Revision ID: execution_0005_alerts
Revises: execution_0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from aias.core.rls import allow_system_path, enable_tenant_rls

revision = "execution_0005_alerts"
down_revision = "execution_0004"

S = "execution"
TIMESTAMP = sa.DateTime(timezone=True)
CHANNEL = "aias_alert_events"
TABLES = ("alert_destinations", "alert_events", "alert_attempts")


def _rfc3339(column: str) -> str:
    """A time as alert payloads write it (domain.rfc3339 writes the same)."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def upgrade() -> None:
    op.create_table(
        "alert_destinations",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.String(32)), nullable=False),
        sa.Column("signing_key", sa.LargeBinary, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("delete_time", TIMESTAMP),
        schema=S,
    )
    op.create_index(
        "alert_destinations_tenant_created",
        "alert_destinations",
        ["tenant_id", "create_time", "id"],
        schema=S,
    )
    op.create_table(
        "alert_events",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column(
            "destination_id",
            sa.Uuid,
            sa.ForeignKey(f"{S}.alert_destinations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("data", postgresql.JSONB, nullable=False),
        sa.Column("dedupe_key", sa.String(200)),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.Column("last_attempt_time", TIMESTAMP),
        sa.Column("last_http_status", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
        # An alert raised again with the same key (a quota threshold in the same period, the
        # same billing event) adds nothing for a destination that has it. NULL keys never clash.
        sa.UniqueConstraint("destination_id", "dedupe_key", name="alert_events_dedupe"),
        schema=S,
    )
    # The senders' scan: only pending alerts are indexed, so it stays small however many were sent.
    op.create_index(
        "alert_events_due",
        "alert_events",
        ["next_attempt_time"],
        schema=S,
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "alert_events_tenant_created",
        "alert_events",
        ["tenant_id", "create_time", "id"],
        schema=S,
    )
    op.create_table(
        "alert_attempts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid, nullable=False),
        sa.Column(
            "event_id",
            sa.Uuid,
            sa.ForeignKey(f"{S}.alert_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("attempt_time", TIMESTAMP, nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("duration_ms", sa.BigInteger, nullable=False),
        schema=S,
    )
    op.create_index("alert_attempts_event", "alert_attempts", ["event_id", "attempt"], schema=S)
    for table in TABLES:
        enable_tenant_rls(f"{S}.{table}")
    # The senders claim due alerts of every tenant (and drop old ones): the one cross-tenant path.
    allow_system_path(f"{S}.alert_events", "alert_outbox")

    # run.failed is raised in the transaction that fails the run, whoever fails it. The worker
    # finishes runs as their tenant, but a cross-tenant path may fail one too; RLS shows the
    # run's destinations only under its tenant, so the trigger acts as that tenant and then
    # puts back what the transaction had set.
    op.execute(f"""
        CREATE FUNCTION {S}.raise_run_failed() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            acting text := current_setting('aias.tenant_id', true);
        BEGIN
            PERFORM set_config('aias.tenant_id', NEW.tenant_id::text, true);
            INSERT INTO {S}.alert_events (id, tenant_id, destination_id, event_type, data)
            SELECT gen_random_uuid(), NEW.tenant_id, d.id, 'run.failed', jsonb_build_object(
                'tenant_id', NEW.tenant_id,
                'run_id', NEW.id,
                'workflow_id', NEW.workflow_id,
                'workflow_version', NEW.workflow_version,
                'attempt', NEW.attempt,
                'error', NEW.error,
                'create_time', {_rfc3339("NEW.create_time")},
                'end_time', {_rfc3339("coalesce(NEW.end_time, now())")})
            FROM {S}.alert_destinations d
            WHERE d.tenant_id = NEW.tenant_id
              AND d.delete_time IS NULL
              AND 'run.failed' = ANY (d.events);
            PERFORM set_config('aias.tenant_id', coalesce(acting, ''), true);
            RETURN NULL;
        END $$""")
    op.execute(f"""
        CREATE TRIGGER runs_raise_failed AFTER UPDATE OF status ON {S}.runs
        FOR EACH ROW WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed')
        EXECUTE FUNCTION {S}.raise_run_failed()""")
    # Senders LISTEN on this channel, so a committed alert goes out at once, not at the next poll.
    # Equal notices of one transaction reach listeners once, so a fan-out wakes them once.
    op.execute(f"""
        CREATE FUNCTION {S}.notify_alert_events() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$""")
    op.execute(f"""
        CREATE TRIGGER alert_events_notify AFTER INSERT ON {S}.alert_events
        FOR EACH ROW EXECUTE FUNCTION {S}.notify_alert_events()""")


def downgrade() -> None:
    op.execute(f"DROP TRIGGER IF EXISTS runs_raise_failed ON {S}.runs")
    for table in reversed(TABLES):
        op.drop_table(table, schema=S)
    op.execute(f"DROP FUNCTION IF EXISTS {S}.raise_run_failed()")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.notify_alert_events()")
