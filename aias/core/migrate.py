"""Applies every service's Alembic migrations to its own schema and grants the application role."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from aias.core.settings import Env

log = logging.getLogger(__name__)

# Order matters only for readability; no schema references another.
SERVICES = ("tenancy", "execution", "artifacts", "billing")
DEFAULT_APP_ROLE = "aias_app"
# Serialises concurrent migration jobs (e.g. two compose stacks on one database).
_LOCK_KEY = 0x41494153


class MigrationError(Exception):
    """The database cannot be prepared as asked; the message says what to change."""


def migrations_dir(service: str) -> Path:
    spec = importlib.util.find_spec(f"aias.services.{service}")
    if spec is None or not spec.submodule_search_locations:
        raise MigrationError(f"package aias.services.{service} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "migrations"


def run_env(context: Any) -> None:
    """The body of every service's alembic env.py: migrate one schema on the given connection."""
    connection: Connection = context.config.attributes["connection"]
    schema: str = context.config.attributes["schema"]
    context.configure(
        connection=connection,
        version_table_schema=schema,
        include_schemas=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def _sync_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _quote_ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise MigrationError(f"role name {name!r} must be letters, digits and underscores")
    return f'"{name}"'


def sql_literal(value: str) -> str:
    """A quoted SQL string; utility statements (CREATE ROLE ...) take no bind parameters."""
    return "'" + value.replace("'", "''") + "'"


def ensure_app_role(connection: Connection, role: str, password: str | None) -> None:
    """Creates the application role when missing, and refuses one that would bypass RLS."""
    row = connection.execute(
        text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).first()
    if row is None:
        if not password:
            raise MigrationError(
                f"role {role!r} does not exist; set AIAS_APP_DB_PASSWORD so the "
                "migration can create it, or create it yourself (LOGIN, "
                "NOSUPERUSER, NOBYPASSRLS)"
            )
        connection.execute(
            text(
                f"CREATE ROLE {_quote_ident(role)} LOGIN NOSUPERUSER NOBYPASSRLS "
                f"PASSWORD {sql_literal(password)}"
            )
        )
        return
    if row.rolsuper or row.rolbypassrls:
        raise MigrationError(
            f"role {role!r} is a superuser or has BYPASSRLS; row-level security "
            "would not apply to it. Use an ordinary role for the services."
        )
    if password:
        # The configured password is the source of truth, so rotating it is a redeploy.
        connection.execute(
            text(f"ALTER ROLE {_quote_ident(role)} PASSWORD {sql_literal(password)}")
        )


def _grant(connection: Connection, schema: str, role: str) -> None:
    who = _quote_ident(role)
    for statement in (
        f"GRANT USAGE ON SCHEMA {schema} TO {who}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {who}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {who}",
        f"REVOKE ALL ON {schema}.alembic_version FROM {who}",
    ):
        connection.execute(text(statement))


def migrate(
    owner_url: str, app_role: str = DEFAULT_APP_ROLE, app_password: str | None = None
) -> None:
    """Brings every schema to head; safe to run again and from several jobs at once."""
    engine = create_engine(_sync_url(owner_url), future=True)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            ensure_app_role(connection, app_role, app_password)
            for service in SERVICES:
                connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {service}"))
                config = Config()
                config.set_main_option("script_location", str(migrations_dir(service)))
                config.attributes["connection"] = connection
                config.attributes["schema"] = service
                command.upgrade(config, "head")
                _grant(connection, service, app_role)
                log.info("schema migrated", extra={"schema": service})
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `aias-migrate`: migrate the database named by AIAS_DATABASE_URL."""
    from aias.core.logging import configure_logging

    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    env = Env()
    url = env.database_url("AIAS_DATABASE_URL")
    role = env.text("AIAS_APP_DB_ROLE", DEFAULT_APP_ROLE)
    password = env.text("AIAS_APP_DB_PASSWORD", "") or None
    configure_logging("migrate", env.text("AIAS_LOG_LEVEL", "INFO").upper())
    env.check()
    try:
        migrate(url, role, password)
    except MigrationError as error:
        sys.exit(f"migration failed: {error}")


if __name__ == "__main__":
    main()
