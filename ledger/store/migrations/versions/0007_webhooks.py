"""Webhook endpoints, their pending batches and the deliverer's lease (SPEC §8); an index
on obligations by cause (the change feed lists the obligations an entry opened).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        # Comma-separated entry kinds; empty: every kind.
        sa.Column("kinds", sa.String(1024), nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        # A check value of the endpoint's signing secret (not the secret): a process whose
        # HOME derives another secret refuses to sign with it.
        sa.Column("secret_check", sa.String(32), nullable=False),
        # The tree size delivered through: every event below it was acknowledged (2xx).
        sa.Column("cursor", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "webhook_batches",
        sa.Column("endpoint", sa.String(64), primary_key=True),
        # The batch: the events of the endpoint's kinds with seq in [from_cursor,
        # next_cursor), the first and the last of them; fixed when first attempted, so that
        # every attempt carries the same webhook-id.
        sa.Column("from_cursor", sa.BigInteger, nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("next_cursor", sa.BigInteger, nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failure", sa.String(32)),
        sa.Column("next_attempt", sa.String(32)),
        sa.Column("last_error", sa.String(512)),
    )
    lease = op.create_table(
        "webhook_lease",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("holder", sa.String(128)),
        # Milliseconds since the epoch by the database's clock, so that instances on
        # different hosts compare against one clock.
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(lease, [{"id": 1, "holder": None, "expires": 0}])
    op.create_index("ix_dataset_obligations_cause", "dataset_obligations", ["cause"])


def downgrade() -> None:
    op.drop_index("ix_dataset_obligations_cause", table_name="dataset_obligations")
    for table in ("webhook_lease", "webhook_batches", "webhook_endpoints"):
        op.drop_table(table)
