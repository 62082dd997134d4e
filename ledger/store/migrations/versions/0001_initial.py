"""The log, its projections and the subject mapping; append-only triggers.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = ("log_entries", "merkle_nodes", "checkpoints")


def upgrade() -> None:
    op.create_table(
        "ledger_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("origin", sa.String(255), nullable=False),
        sa.Column("tree_size", sa.BigInteger, nullable=False),
        # The key every new checkpoint must be signed with: lets a writer
        # notice, under the write lock, that another process rotated it.
        sa.Column("verifier_key", sa.String(512), nullable=False),
    )
    op.create_table(
        "log_entries",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(64)),
        sa.Column("canonical", sa.LargeBinary, nullable=False),
    )
    # (subject, kind): a subject's history, and its registration for `verify`.
    op.create_index("ix_log_entries_subject", "log_entries", ["subject", "kind"])
    op.create_index("ix_log_entries_kind_seq", "log_entries", ["kind", "seq"])
    op.create_table(
        "merkle_nodes",
        sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_table(
        "subjects",
        sa.Column("subject_id", sa.String(256), primary_key=True),
        sa.Column("ref", sa.String(64), nullable=False, unique=True),
        sa.Column("salt", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "erased_subjects",
        sa.Column("id_hash", sa.LargeBinary, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "subject_versions",
        sa.Column("ref", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("jurisdiction", sa.String(2)),
        sa.Column("minor", sa.Boolean, nullable=False),
        sa.Column("erased", sa.Boolean, nullable=False),
    )
    op.create_table(
        "consent_decisions",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("explicit", sa.Boolean, nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("notice", sa.String(512)),
        sa.Column("effective", sa.String(32), nullable=False),
        sa.Column("expires", sa.String(32)),
    )
    op.create_index("ix_consent_decisions_ref_seq", "consent_decisions", ["ref", "seq"])
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
        sa.Column("document", sa.Text, nullable=False),
    )
    _create_append_only_triggers()


def _create_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            """
            CREATE FUNCTION consent_ledger_refuse_change() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'consent-ledger: % is append-only: % refused',
                    TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END
            $$
            """
        )
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION consent_ledger_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION consent_ledger_refuse_change()"
            )
    elif dialect == "sqlite":
        # SQLite has no TRUNCATE: `DELETE FROM t` without WHERE is its form,
        # and a DELETE trigger disables the truncate optimisation, so it fires.
        for table in APPEND_ONLY:
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} "
                    f"ON {table} BEGIN SELECT RAISE(ABORT, "
                    f"'consent-ledger: {table} is append-only: {operation} refused'); END"
                )
    else:
        raise NotImplementedError(f"no append-only triggers for {dialect}")


def downgrade() -> None:
    for table in (
        "policy_versions",
        "consent_decisions",
        "subject_versions",
        "erased_subjects",
        "subjects",
        "checkpoints",
        "merkle_nodes",
        "log_entries",
        "ledger_state",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS consent_ledger_refuse_change()")
