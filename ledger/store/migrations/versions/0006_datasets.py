"""Dataset builds and purge obligations (SPEC §7).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Leaf hashes are kept for good once a build is recorded: append-only like the log.
LEAVES = "dataset_leaves"


def upgrade() -> None:
    op.create_table(
        "dataset_builds",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("checked_at", sa.BigInteger, nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("policy_version", sa.BigInteger, nullable=False),
        sa.Column("records", sa.BigInteger, nullable=False),
        sa.Column("members_root", sa.String(64), nullable=False),
        sa.Column("time", sa.String(32), nullable=False),
    )
    op.create_index("ux_dataset_builds_name", "dataset_builds", ["dataset", "version"], unique=True)
    op.create_table(
        "dataset_removals",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("records", sa.BigInteger),
        sa.Column("fulfils", sa.BigInteger),
        sa.Column("purged_root", sa.String(64)),
        sa.Column("time", sa.String(32), nullable=False),
    )
    op.create_index("ix_dataset_removals_name", "dataset_removals", ["dataset", "version"])
    op.create_table(
        "dataset_members",
        sa.Column("build", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("record_id", sa.String(256), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("category", sa.String(512), nullable=False),
        sa.Column("obligation", sa.BigInteger),
        # Keyed by (build, record_id) itself: a build inserts its members in that order,
        # and one B-tree fewer to write for each of millions of members.
        sqlite_with_rowid=False,
    )
    op.create_index("ix_dataset_members_ref", "dataset_members", ["ref"])
    op.create_table(
        LEAVES,
        sa.Column("build", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("chunk", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hashes", sa.LargeBinary, nullable=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "dataset_obligations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("build", sa.BigInteger, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("record_id", sa.String(256)),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("cause", sa.BigInteger),
        sa.Column("cause_time", sa.String(32), nullable=False),
        sa.Column("due", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("closed_seq", sa.BigInteger),
        sa.Column("closed_time", sa.String(32)),
    )
    op.create_index(
        "ix_dataset_obligations_build_status", "dataset_obligations", ["build", "status", "id"]
    )
    op.create_index(
        "ix_dataset_obligations_build_position", "dataset_obligations", ["build", "position"]
    )
    op.create_table(
        "dataset_wakeups",
        sa.Column("ref", sa.String(64), primary_key=True),
        sa.Column("at", sa.String(32), primary_key=True),
    )
    op.create_index("ix_dataset_wakeups_at", "dataset_wakeups", ["at"])
    state = op.create_table(
        "dataset_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("through_seq", sa.BigInteger, nullable=False),
        sa.Column("swept_until", sa.String(32), nullable=False),
        sa.Column("live_builds", sa.BigInteger, nullable=False),
        sa.Column("policy_job", sa.BigInteger),
        sa.Column("job_build", sa.BigInteger),
        sa.Column("job_record", sa.String(256)),
    )
    op.bulk_insert(state, [{"id": 1, "through_seq": 0, "swept_until": "", "live_builds": 0}])

    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        # consent_ledger_refuse_change() is 0001's.
        op.execute(
            f"CREATE TRIGGER {LEAVES}_append_only BEFORE UPDATE OR DELETE ON {LEAVES} "
            "FOR EACH ROW EXECUTE FUNCTION consent_ledger_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {LEAVES}_no_truncate BEFORE TRUNCATE ON {LEAVES} "
            "FOR EACH STATEMENT EXECUTE FUNCTION consent_ledger_refuse_change()"
        )
    elif dialect == "sqlite":
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {LEAVES}_no_{operation.lower()} BEFORE {operation} "
                f"ON {LEAVES} BEGIN SELECT RAISE(ABORT, "
                f"'consent-ledger: {LEAVES} is append-only: {operation} refused'); END"
            )
    else:
        raise NotImplementedError(f"no append-only triggers for {dialect}")


def downgrade() -> None:
    for table in (
        "dataset_state",
        "dataset_wakeups",
        "dataset_obligations",
        LEAVES,
        "dataset_members",
        "dataset_removals",
        "dataset_builds",
    ):
        op.drop_table(table)
