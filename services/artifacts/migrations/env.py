"""Alembic environment of the artifacts schema."""

from alembic import context

from aias.core.migrate import run_env

run_env(context)
