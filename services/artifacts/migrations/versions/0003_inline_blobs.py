"""Small blobs kept in the database: `blobs.content`.

Revision ID: artifacts_0003_inline
Revises: artifacts_0002_blobs
"""

import sqlalchemy as sa
from alembic import op

revision = "artifacts_0003_inline"
down_revision = "artifacts_0002_blobs"

S = "artifacts"


def upgrade() -> None:
    # The content of a blob small enough to live in its row (AIAS_ARTIFACTS_INLINE_BYTES);
    # NULL when it is in the blob store.
    op.add_column("blobs", sa.Column("content", sa.LargeBinary), schema=S)


def downgrade() -> None:
    # Content kept only in rows would be lost with the column: refuse while there is any.
    # (Row-level security applies to the table's owner too; lifted for the check.)
    op.execute(f"ALTER TABLE {S}.blobs NO FORCE ROW LEVEL SECURITY")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM {S}.blobs WHERE content IS NOT NULL) THEN
                RAISE EXCEPTION 'artifacts.blobs holds content kept in the database '
                    '(AIAS_ARTIFACTS_INLINE_BYTES); an older version cannot read it. '
                    'Delete those artifacts, or stay on this version.';
            END IF;
        END $$""")
    op.execute(f"ALTER TABLE {S}.blobs FORCE ROW LEVEL SECURITY")
    op.drop_column("blobs", "content", schema=S)
