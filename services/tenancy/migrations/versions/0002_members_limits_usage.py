"""Members, key roles and last use, plan change time, limit overrides, usage counters, and a
notice on every change that affects what a tenant or key may do.

Revision ID: tenancy_0002
Revises: tenancy_0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from aias.core.rls import allow_system_path, enable_tenant_rls

revision = "tenancy_0002"
down_revision = "tenancy_0001"

S = "tenancy"
TIMESTAMP = sa.DateTime(timezone=True)
CHANNEL = "aias_entitlements"


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column("plan_change_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.add_column(
        "tenants",
        sa.Column(
            "limit_overrides",
            postgresql.JSONB,
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        schema=S,
    )
    op.add_column("tenants", sa.Column("allowed_step_types", postgresql.JSONB), schema=S)
    op.create_index("tenants_created", "tenants", ["create_time", "id"], schema=S)
    # The operator's tenant list is the one cross-tenant read in this schema.
    allow_system_path(f"{S}.tenants", "tenant_directory", read_only=True)

    op.create_table(
        "members",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "tenant_id",
            sa.Uuid,
            sa.ForeignKey(f"{S}.tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("tenant_id", "email", name="members_email"),
        schema=S,
    )
    op.create_index("members_tenant_created", "members", ["tenant_id", "create_time"], schema=S)
    enable_tenant_rls(f"{S}.members")

    op.add_column(
        "api_keys",
        sa.Column("member_id", sa.Uuid, sa.ForeignKey(f"{S}.members.id", ondelete="SET NULL")),
        schema=S,
    )
    op.add_column("api_keys", sa.Column("last_used_time", TIMESTAMP), schema=S)

    op.create_table(
        "usage_counters",
        sa.Column(
            "tenant_id",
            sa.Uuid,
            sa.ForeignKey(f"{S}.tenants.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("metric", sa.String(64), primary_key=True),
        sa.Column("period_start", TIMESTAMP, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False, server_default="0"),
        schema=S,
    )
    enable_tenant_rls(f"{S}.usage_counters")

    # Every process that caches entitlements or keys follows this channel (through
    # tenancy's WatchEntitlements), so a change is seen everywhere at once. The notice
    # is sent at commit, and only for changes that alter what a tenant or key may do.
    op.execute(f"""
        CREATE FUNCTION {S}.notify_entitlements() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', COALESCE(NEW.tenant_id, OLD.tenant_id)::text);
            RETURN NULL;
        END $$""")
    op.execute(f"""
        CREATE FUNCTION {S}.notify_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', NEW.id::text);
            RETURN NULL;
        END $$""")
    op.execute(f"""
        CREATE TRIGGER tenants_notify AFTER UPDATE OF plan, status, limit_overrides,
            allowed_step_types ON {S}.tenants
        FOR EACH ROW EXECUTE FUNCTION {S}.notify_tenant()""")
    op.execute(f"""
        CREATE TRIGGER api_keys_notify AFTER UPDATE OF revoke_time, role ON {S}.api_keys
        FOR EACH ROW EXECUTE FUNCTION {S}.notify_entitlements()""")
    op.execute(f"""
        CREATE TRIGGER members_notify AFTER UPDATE OF role OR DELETE ON {S}.members
        FOR EACH ROW EXECUTE FUNCTION {S}.notify_entitlements()""")


def downgrade() -> None:
    op.execute(f"DROP TRIGGER IF EXISTS members_notify ON {S}.members")
    op.execute(f"DROP TRIGGER IF EXISTS api_keys_notify ON {S}.api_keys")
    op.execute(f"DROP TRIGGER IF EXISTS tenants_notify ON {S}.tenants")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.notify_tenant()")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.notify_entitlements()")
    op.drop_table("usage_counters", schema=S)
    op.drop_column("api_keys", "last_used_time", schema=S)
    op.drop_column("api_keys", "member_id", schema=S)
    op.drop_table("members", schema=S)
    op.execute(f"DROP POLICY IF EXISTS system_tenant_directory ON {S}.tenants")
    op.drop_index("tenants_created", "tenants", schema=S)
    op.drop_column("tenants", "allowed_step_types", schema=S)
    op.drop_column("tenants", "limit_overrides", schema=S)
    op.drop_column("tenants", "plan_change_time", schema=S)
