"""Progress of bulk imports, so that an interrupted import resumes without duplicates.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imports",
        # SHA-256 of the file's bytes: the same file is the same import.
        sa.Column("import_id", sa.String(64), primary_key=True),
        sa.Column("rows_done", sa.BigInteger, nullable=False),
        sa.Column("entries_written", sa.BigInteger, nullable=False),
        sa.Column("finished", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("imports")
