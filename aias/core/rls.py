"""Row-level security DDL shared by every service's migrations."""

from __future__ import annotations

from alembic import op

CURRENT_TENANT = "nullif(current_setting('aias.tenant_id', true), '')::uuid"


def enable_tenant_rls(table: str, column: str = "tenant_id") -> None:
    """ENABLE and FORCE RLS on `schema.table` with the one tenant policy DESIGN.md prescribes.

    FORCE makes the policy bind the table owner too, so a migration role that is
    mistakenly used by a service still sees one tenant only.
    """
    condition = f"{column} = {CURRENT_TENANT}"
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} USING ({condition}) WITH CHECK ({condition})"
    )


def allow_system_path(
    table: str, path: str, *, read_only: bool = False, insert_only: bool = False
) -> None:
    """A narrow, named cross-tenant policy: rows are visible only inside `Database.system(path)`.

    `read_only` lets the path read every tenant's rows but write none; `insert_only` lets it add
    rows for any tenant but read, change or delete none.
    """
    condition = f"current_setting('aias.system_path', true) = '{path}'"
    if read_only:
        op.execute(f"CREATE POLICY system_{path} ON {table} FOR SELECT USING ({condition})")
        return
    if insert_only:
        op.execute(f"CREATE POLICY system_{path} ON {table} FOR INSERT WITH CHECK ({condition})")
        return
    op.execute(
        f"CREATE POLICY system_{path} ON {table} USING ({condition}) WITH CHECK ({condition})"
    )
