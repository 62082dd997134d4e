"""An index on subject_versions.seq: a cache that follows the log reads the versions
appended since it last looked, by seq, and without it every such read scanned the table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_subject_versions_seq", "subject_versions", ["seq"])


def downgrade() -> None:
    op.drop_index("ix_subject_versions_seq", table_name="subject_versions")
