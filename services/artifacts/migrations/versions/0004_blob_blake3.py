"""Each blob's BLAKE3 digest: `blobs.blake3`, what a whole read of its content is checked against.

Revision ID: artifacts_0004_blake3
Revises: artifacts_0003_inline
"""

import sqlalchemy as sa
from alembic import op

revision = "artifacts_0004_blake3"
down_revision = "artifacts_0003_inline"

S = "artifacts"


def upgrade() -> None:
    # Hex, written with the blob. NULL for blobs stored before this revision: their reads are
    # checked against the SHA-256 that names them, as before.
    op.add_column("blobs", sa.Column("blake3", sa.String(64)), schema=S)


def downgrade() -> None:
    # Nothing is lost: an older version checks every read against the SHA-256.
    op.drop_column("blobs", "blake3", schema=S)
