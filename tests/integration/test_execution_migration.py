"""The execution schema's 0007 migration (the run queue's indexes and wake-ups), both ways."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Connection, text

from tests.integration.conftest import alembic_config

BEFORE = "execution_0006_run_trace_context"


def _indexes(owner: Connection) -> set[str]:
    return set(
        owner.execute(
            text("SELECT indexname FROM pg_indexes WHERE schemaname = 'execution'")
        ).scalars()
    )


def _triggers(owner: Connection) -> dict[str, str]:
    """The triggers on execution.runs that wake workers, each with its level (ROW/STATEMENT)."""
    rows = owner.execute(
        text(
            "SELECT tgname, CASE WHEN tgtype & 1 = 1 THEN 'ROW' ELSE 'STATEMENT' END "
            "FROM pg_trigger WHERE tgrelid = 'execution.runs'::regclass "
            "AND tgname LIKE 'runs_notify%'"
        )
    )
    return {str(name): str(level) for name, level in rows}


def test_the_queue_indexes_and_wake_ups_go_both_ways(owner: Connection) -> None:
    command.downgrade(alembic_config(owner, "execution"), BEFORE)
    indexes = _indexes(owner)
    assert "runs_queue" in indexes
    assert not {"runs_queued", "runs_leased"} & indexes
    assert _triggers(owner) == {"runs_notify": "ROW"}

    command.upgrade(alembic_config(owner, "execution"), "head")
    indexes = _indexes(owner)
    assert {"runs_queued", "runs_leased"} <= indexes
    assert "runs_queue" not in indexes
    # One wake-up per INSERT statement, however many runs it adds; one per run queued again.
    assert _triggers(owner) == {"runs_notify": "STATEMENT", "runs_notify_update": "ROW"}
