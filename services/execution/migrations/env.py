"""Alembic environment of the execution schema."""

from alembic import context

from aias.core.migrate import run_env

run_env(context)
