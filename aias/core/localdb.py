"""Finds or starts the database for a local run: AIAS_DATABASE_URL, else embedded PostgreSQL."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from aias.core.embedded_pg import EmbeddedPostgres
from aias.core.migrate import DEFAULT_APP_ROLE, migrate, sql_literal

OWNER_ROLE = "aias_owner"
DATABASE = "aias"


@dataclass
class LocalDatabase:
    """The URLs a local run uses, and the embedded server to stop afterwards (if any)."""

    owner_url: str
    app_url: str
    embedded: EmbeddedPostgres | None

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()

    def superuser_url(self) -> str:
        """The embedded server's superuser on this database, which row-level security does not
        filter (tests and benchmarks read across tenants with it)."""
        if self.embedded is None:
            raise RuntimeError("only the embedded PostgreSQL's superuser is known")
        url = make_url(self.embedded.start()).set(
            drivername="postgresql+psycopg", database=make_url(self.owner_url).database
        )
        return url.render_as_string(hide_password=False)


def kept_secret(data_dir: Path, name: str) -> str:
    """A generated secret kept in the data folder, so restarts reuse it."""
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _psycopg(url: str) -> str:
    """The URL with SQLAlchemy's psycopg 3 driver, whatever scheme it was given with."""
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _with_user(url: str, user: str, password: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql+psycopg", username=user, password=password)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def _bootstrap(superuser_url: str, owner_password: str) -> None:
    """Creates the owner role and the database on a fresh embedded server; idempotent."""
    engine = create_engine(_psycopg(superuser_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if (
                connection.execute(
                    text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": OWNER_ROLE}
                ).first()
                is None
            ):
                connection.execute(
                    text(
                        f"CREATE ROLE {OWNER_ROLE} LOGIN CREATEROLE PASSWORD {sql_literal(owner_password)}"
                    )
                )
            if (
                connection.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": DATABASE}
                ).first()
                is None
            ):
                connection.execute(text(f"CREATE DATABASE {DATABASE} OWNER {OWNER_ROLE}"))
    finally:
        engine.dispose()


def _ensure_database(url: str) -> None:
    """Creates the database named in `url` when it is missing (and the role may create one)."""
    parsed = make_url(url)
    maintenance = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with maintenance.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": parsed.database}
            ).first()
            if exists is None:
                connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        maintenance.dispose()


def prepare(
    data_dir: Path,
    database_url: str | None,
    app_password: str | None,
    embedded_port: int | None = None,
    embedded_settings: dict[str, str] | None = None,
) -> LocalDatabase:
    """Starts embedded PostgreSQL unless `database_url` is given, migrates, returns the URLs."""
    app_password = app_password or kept_secret(data_dir, "app-db-password")
    embedded: EmbeddedPostgres | None = None
    if database_url:
        owner_url = _psycopg(database_url)
        _ensure_database(owner_url)
    else:
        embedded = EmbeddedPostgres(
            data_dir,
            **({"preferred_port": embedded_port} if embedded_port is not None else {}),
            server_settings=embedded_settings or {},
        )
        superuser_url = embedded.start()
        owner_password = kept_secret(data_dir, "owner-db-password")
        _bootstrap(superuser_url, owner_password)
        owner_url = _with_user(superuser_url, OWNER_ROLE, owner_password, DATABASE)
    migrate(owner_url, DEFAULT_APP_ROLE, app_password)
    app_url = _with_user(owner_url, DEFAULT_APP_ROLE, app_password)
    return LocalDatabase(owner_url, app_url, embedded)


def running_owner_url(data_dir: Path) -> str | None:
    """The owner role's URL of `make run`'s embedded server, when it is running (for tools)."""
    port = EmbeddedPostgres(data_dir).running_port()
    password_file = data_dir / "owner-db-password"
    if port is None or not password_file.exists():
        return None
    password = password_file.read_text().strip()
    return _with_user(f"postgresql://127.0.0.1:{port}/{DATABASE}", OWNER_ROLE, password)
