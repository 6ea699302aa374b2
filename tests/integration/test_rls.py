"""Row-level security: the application role sees and writes only the tenant it set."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from aias.core.db import Database, SystemPath
from aias.core.localdb import LocalDatabase

TENANT_TABLES = [
    ("tenancy", "tenants"),
    ("tenancy", "api_keys"),
    ("execution", "workflows"),
    ("execution", "workflow_versions"),
    ("execution", "webhook_endpoints"),
    ("execution", "runs"),
    ("execution", "step_logs"),
    ("execution", "webhook_deliveries"),
    ("execution", "alert_destinations"),
    ("execution", "alert_events"),
    ("execution", "alert_attempts"),
    ("artifacts", "artifacts"),
    ("artifacts", "blobs"),
    ("billing", "customers"),
    ("billing", "subscriptions"),
    ("billing", "deliveries"),
]


async def _add_tenant_with_workflow(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    tenant, workflow = uuid.uuid4(), uuid.uuid4()
    async with db.tenant(tenant) as session:
        await session.execute(
            text(
                "INSERT INTO tenancy.tenants (id, name, plan, status) "
                "VALUES (:t, 'rls', 'free', 'active')"
            ),
            {"t": tenant},
        )
        await session.execute(
            text(
                "INSERT INTO execution.workflows (id, tenant_id, name, enabled, "
                "current_version) VALUES (:w, :t, 'wf', true, 1)"
            ),
            {"w": workflow, "t": tenant},
        )
    return tenant, workflow


async def test_app_role_is_not_owner_superuser_or_bypassrls(app_db: Database) -> None:
    async with app_db.tenant(uuid.uuid4()) as session:
        row = (
            await session.execute(
                text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            )
        ).one()
        owners = (
            await session.execute(
                text(
                    "SELECT count(*) FROM pg_tables WHERE schemaname IN "
                    "('tenancy','execution','artifacts','billing') AND tableowner = current_user"
                )
            )
        ).scalar()
    assert (row.rolsuper, row.rolbypassrls) == (False, False)
    assert owners == 0


@pytest.mark.parametrize(("schema", "table"), TENANT_TABLES)
async def test_every_tenant_table_forces_rls(app_db: Database, schema: str, table: str) -> None:
    async with app_db.tenant(uuid.uuid4()) as session:
        row = (
            await session.execute(
                text(
                    "SELECT c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :s AND c.relname = :t"
                ),
                {"s": schema, "t": table},
            )
        ).one()
    assert (row.relrowsecurity, row.relforcerowsecurity) == (True, True)


async def test_tenant_a_cannot_read_tenant_b(app_db: Database) -> None:
    tenant_a, workflow_a = await _add_tenant_with_workflow(app_db)
    _tenant_b, workflow_b = await _add_tenant_with_workflow(app_db)
    async with app_db.tenant(tenant_a) as session:
        seen = set((await session.execute(text("SELECT id FROM execution.workflows"))).scalars())
        by_id = (
            await session.execute(
                text("SELECT id FROM execution.workflows WHERE id = :w"), {"w": workflow_b}
            )
        ).all()
        tenants = set((await session.execute(text("SELECT id FROM tenancy.tenants"))).scalars())
    assert workflow_a in seen
    assert workflow_b not in seen
    assert by_id == []
    assert tenants == {tenant_a}


async def test_insert_for_another_tenant_is_refused(app_db: Database) -> None:
    tenant_a, _ = await _add_tenant_with_workflow(app_db)
    tenant_b, _ = await _add_tenant_with_workflow(app_db)
    with pytest.raises(ProgrammingError, match="row-level security"):
        async with app_db.tenant(tenant_a) as session:
            await session.execute(
                text(
                    "INSERT INTO execution.workflows "
                    "(id, tenant_id, name, enabled, current_version) "
                    "VALUES (:w, :t, 'sneaky', true, 1)"
                ),
                {"w": uuid.uuid4(), "t": tenant_b},
            )
    async with app_db.tenant(tenant_b) as session:
        names = set((await session.execute(text("SELECT name FROM execution.workflows"))).scalars())
    assert "sneaky" not in names


async def test_update_cannot_move_a_row_to_another_tenant(app_db: Database) -> None:
    tenant_a, workflow_a = await _add_tenant_with_workflow(app_db)
    tenant_b, _ = await _add_tenant_with_workflow(app_db)
    with pytest.raises(ProgrammingError, match="row-level security"):
        async with app_db.tenant(tenant_a) as session:
            await session.execute(
                text("UPDATE execution.workflows SET tenant_id = :b WHERE id = :w"),
                {"b": tenant_b, "w": workflow_a},
            )


async def test_without_a_tenant_nothing_is_visible(app_db: Database) -> None:
    await _add_tenant_with_workflow(app_db)
    async with app_db.engine.connect() as connection:
        for schema, table in TENANT_TABLES:
            count = (
                await connection.execute(text(f"SELECT count(*) FROM {schema}.{table}"))
            ).scalar()
            assert count == 0, f"{schema}.{table} leaked {count} rows with no tenant set"


async def test_tenant_setting_does_not_leak_across_pooled_transactions(app_db: Database) -> None:
    tenant_a, _ = await _add_tenant_with_workflow(app_db)
    async with app_db.tenant(tenant_a) as session:
        assert (await session.execute(text("SELECT count(*) FROM tenancy.tenants"))).scalar() == 1
    # The pool hands back the same connection; the transaction-local setting must be gone.
    async with app_db.engine.connect() as connection:
        setting = (
            await connection.execute(text("SELECT current_setting('aias.tenant_id', true)"))
        ).scalar()
        assert not setting


async def test_queue_claim_path_sees_runs_of_all_tenants_and_nothing_else(app_db: Database) -> None:
    tenant_a, workflow_a = await _add_tenant_with_workflow(app_db)
    tenant_b, workflow_b = await _add_tenant_with_workflow(app_db)
    runs = {}
    for tenant, workflow in ((tenant_a, workflow_a), (tenant_b, workflow_b)):
        run = uuid.uuid4()
        runs[tenant] = run
        async with app_db.tenant(tenant) as session:
            await session.execute(
                text(
                    "INSERT INTO execution.runs (id, tenant_id, workflow_id, workflow_version, "
                    "status, max_attempts, payload, content_type) "
                    "VALUES (:r, :t, :w, 1, 'succeeded', 3, '', "
                    "'application/json')"
                ),
                {"r": run, "t": tenant, "w": workflow},
            )
    async with app_db.system(SystemPath.RUN_QUEUE) as session:
        visible = set((await session.execute(text("SELECT id FROM execution.runs"))).scalars())
        workflows = (
            await session.execute(text("SELECT count(*) FROM execution.workflows"))
        ).scalar()
        tenants = (await session.execute(text("SELECT count(*) FROM tenancy.tenants"))).scalar()
    assert set(runs.values()) <= visible
    assert (workflows, tenants) == (0, 0)


async def test_a_run_failed_on_a_cross_tenant_path_alerts_its_own_tenant_only(
    app_db: Database,
) -> None:
    tenant, workflow = await _add_tenant_with_workflow(app_db)
    other, _ = await _add_tenant_with_workflow(app_db)
    run, destination = uuid.uuid4(), uuid.uuid4()
    async with app_db.tenant(tenant) as session:
        await session.execute(
            text(
                "INSERT INTO execution.alert_destinations (id, tenant_id, url, events, "
                "signing_key) VALUES (:d, :t, 'https://alerts.invalid', "
                "ARRAY['run.failed'], '\\x00')"
            ),
            {"d": destination, "t": tenant},
        )
        await session.execute(
            text(
                "INSERT INTO execution.runs (id, tenant_id, workflow_id, workflow_version, "
                "status, max_attempts, payload, content_type) "
                "VALUES (:r, :t, :w, 1, 'running', 3, '', 'application/json')"
            ),
            {"r": run, "t": tenant, "w": workflow},
        )
    async with app_db.system(SystemPath.RUN_QUEUE) as session:
        await session.execute(
            text("UPDATE execution.runs SET status = 'failed' WHERE id = :r"), {"r": run}
        )
        # The trigger acted as the run's tenant and then put the transaction's setting back.
        acting = (
            await session.execute(text("SELECT current_setting('aias.tenant_id', true)"))
        ).scalar()
        destinations = (
            await session.execute(text("SELECT count(*) FROM execution.alert_destinations"))
        ).scalar()
    assert (acting, destinations) == ("", 0)
    async with app_db.tenant(tenant) as session:
        raised = (
            await session.execute(
                text("SELECT destination_id, data->>'run_id' FROM execution.alert_events")
            )
        ).all()
    assert [tuple(row) for row in raised] == [(destination, str(run))]
    async with app_db.tenant(other) as session:
        assert (
            await session.execute(text("SELECT count(*) FROM execution.alert_events"))
        ).scalar() == 0
    async with app_db.system(SystemPath.ALERT_OUTBOX) as session:
        events = set(
            (await session.execute(text("SELECT destination_id FROM execution.alert_events")))
            .scalars()
            .all()
        )
        hidden = [
            (await session.execute(text(f"SELECT count(*) FROM execution.{table}"))).scalar()
            for table in ("alert_destinations", "alert_attempts", "runs")
        ]
    assert destination in events
    assert hidden == [0, 0, 0]
    # Left pending, the alert would go to another test's sender.
    async with app_db.tenant(tenant) as session:
        await session.execute(text("DELETE FROM execution.alert_events"))


async def test_invalid_tenant_setting_is_an_error_not_a_leak(app_db: Database) -> None:
    with pytest.raises(DBAPIError, match="uuid"):
        async with app_db.tenant("not-a-uuid") as session:
            await session.execute(text("SELECT count(*) FROM tenancy.tenants"))


def test_migrations_are_idempotent(database: LocalDatabase) -> None:
    from aias.core.migrate import migrate

    migrate(database.owner_url, "aias_app", None)
    migrate(database.owner_url, "aias_app", None)
