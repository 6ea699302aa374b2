"""A notice whenever what a webhook URL leads to changes, so caches of it stay exact.

Revision ID: execution_0002
Revises: execution_0001
"""

from alembic import op

revision = "execution_0002"
down_revision = "execution_0001"

S = "execution"
CHANNEL = "aias_webhook_targets"


def upgrade() -> None:
    # Every execution process caches webhook URL -> endpoint and workflow; it drops a tenant's
    # entries on this notice (sent at commit). Creations need none: misses are not cached.
    op.execute(f"""
        CREATE FUNCTION {S}.notify_webhook_targets() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', COALESCE(NEW.tenant_id, OLD.tenant_id)::text);
            RETURN NULL;
        END $$""")
    op.execute(f"""
        CREATE TRIGGER webhook_endpoints_targets AFTER UPDATE OR DELETE ON {S}.webhook_endpoints
        FOR EACH ROW EXECUTE FUNCTION {S}.notify_webhook_targets()""")
    op.execute(f"""
        CREATE TRIGGER workflows_targets AFTER UPDATE OR DELETE ON {S}.workflows
        FOR EACH ROW EXECUTE FUNCTION {S}.notify_webhook_targets()""")


def downgrade() -> None:
    op.execute(f"DROP TRIGGER IF EXISTS workflows_targets ON {S}.workflows")
    op.execute(f"DROP TRIGGER IF EXISTS webhook_endpoints_targets ON {S}.webhook_endpoints")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.notify_webhook_targets()")
