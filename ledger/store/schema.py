"""The ledger's tables.

Three kinds of table, with different rules:
- the log itself (`log_entries`, `merkle_tiles`, `merkle_nodes`, `checkpoints`): append-only,
  enforced by database triggers; everything else can be rebuilt from it;
- projections (`subject_versions`, `consent_decisions`, `policy_versions`):
  derived from the log in the same transaction as each append, so that
  eligibility never replays the log; `verify` checks them against a replay;
- mutable mappings that must NOT be in the log (`subjects`: the platform's
  raw subject ids and their salts; `erased_subjects`: keyed hashes of erased
  ids), plus the single `ledger_state` row.

The schema itself is created by the Alembic migrations in `ledger/store/migrations`;
these models describe it for queries.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
)
from sqlmodel import Field, SQLModel


class LedgerState(SQLModel, table=True):
    __tablename__ = "ledger_state"

    id: int = Field(default=1, primary_key=True)
    origin: str = Field(sa_column=Column(String(255), nullable=False))
    tree_size: int = Field(sa_column=Column(BigInteger, nullable=False))
    verifier_key: str = Field(sa_column=Column(String(512), nullable=False))


class LogEntryRow(SQLModel, table=True):
    __tablename__ = "log_entries"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    # The subject reference the entry is about, if any: lets a subject's
    # history be read without scanning the log.
    subject: str | None = Field(default=None, sa_column=Column(String(64)))
    canonical: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class MerkleNode(SQLModel, table=True):
    __tablename__ = "merkle_nodes"

    level: int = Field(sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class MerkleTile(SQLModel, table=True):
    """Tree levels 8·level … 8·level+7 below one node, packed (see `ledger.tlog.merkle`)."""

    __tablename__ = "merkle_tiles"

    level: int = Field(sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hashes: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class CheckpointRow(SQLModel, table=True):
    __tablename__ = "checkpoints"

    tree_size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))


class SubjectMapping(SQLModel, table=True):
    __tablename__ = "subjects"

    subject_id: str = Field(sa_column=Column(String(256), primary_key=True))
    ref: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    salt: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ErasedSubject(SQLModel, table=True):
    __tablename__ = "erased_subjects"

    # HMAC-SHA256 of the raw id under a secret kept in CONSENT_LEDGER_HOME:
    # enough to answer "erased" for that id, useless for recovering it.
    id_hash: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class SubjectVersion(SQLModel, table=True):
    __tablename__ = "subject_versions"
    # The subject cache reads the versions appended since it last looked, by seq.
    __table_args__ = (Index("ix_subject_versions_seq", "seq"),)

    ref: str = Field(sa_column=Column(String(64), primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    jurisdiction: str | None = Field(default=None, sa_column=Column(String(2)))
    minor: bool = Field(default=False)
    erased: bool = Field(default=False)


class ConsentDecision(SQLModel, table=True):
    __tablename__ = "consent_decisions"
    # Eligibility reads one subject's decisions below a tree size.
    __table_args__ = (Index("ix_consent_decisions_ref_seq", "ref", "seq"),)

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    ref: str = Field(sa_column=Column(String(64), nullable=False))
    category: str = Field(sa_column=Column(String(128), nullable=False))
    purpose: str = Field(sa_column=Column(String(128), nullable=False))
    decision: str = Field(sa_column=Column(String(16), nullable=False))
    explicit: bool = Field(default=False)
    method: str = Field(sa_column=Column(String(64), nullable=False))
    notice: str | None = Field(default=None, sa_column=Column(String(512)))
    effective: str = Field(sa_column=Column(String(32), nullable=False))
    expires: str | None = Field(default=None, sa_column=Column(String(32)))


class PolicyVersion(SQLModel, table=True):
    __tablename__ = "policy_versions"

    version: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False, unique=True))
    document: str = Field(sa_column=Column(Text, nullable=False))


# Tables the database refuses to change or empty (triggers, migrations 0001, 0005 and 0006).
APPEND_ONLY_TABLES = (
    "log_entries",
    "merkle_nodes",
    "merkle_tiles",
    "checkpoints",
    "dataset_leaves",
)


class ImportProgress(SQLModel, table=True):
    __tablename__ = "imports"

    import_id: str = Field(sa_column=Column(String(64), primary_key=True))
    rows_done: int = Field(sa_column=Column(BigInteger, nullable=False))
    entries_written: int = Field(sa_column=Column(BigInteger, nullable=False))
    finished: bool = Field(default=False)


class ApiClient(SQLModel, table=True):
    __tablename__ = "api_clients"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    key_id: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    key_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    scopes: str = Field(sa_column=Column(String(128), nullable=False))
    created: str = Field(sa_column=Column(String(32), nullable=False))
    revoked: str | None = Field(default=None, sa_column=Column(String(32)))


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_keys"

    client: str = Field(sa_column=Column(String(64), primary_key=True))
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    request_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    first_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    count: int = Field(sa_column=Column(BigInteger, nullable=False))
    tree_size: int = Field(sa_column=Column(BigInteger, nullable=False))
    created: str = Field(sa_column=Column(String(32), nullable=False))


# --- dataset builds and purge obligations (SPEC §7) --------------------------------------
# `dataset_builds` and `dataset_removals` are projections of the dataset entries. The
# rest is outside the log: the members (record ids are the platform's, never logged),
# their leaf hashes (kept for good, so `members_root` stays recomputable), the
# obligations and what keeps them current (`dataset_state`, `dataset_wakeups`).


class DatasetBuild(SQLModel, table=True):
    __tablename__ = "dataset_builds"
    __table_args__ = (Index("ux_dataset_builds_name", "dataset", "version", unique=True),)

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    dataset: str = Field(sa_column=Column(String(128), nullable=False))
    version: str = Field(sa_column=Column(String(128), nullable=False))
    purpose: str = Field(sa_column=Column(String(128), nullable=False))
    checked_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    at: str = Field(sa_column=Column(String(32), nullable=False))
    policy_version: int = Field(sa_column=Column(BigInteger, nullable=False))
    records: int = Field(sa_column=Column(BigInteger, nullable=False))
    members_root: str = Field(sa_column=Column(String(64), nullable=False))
    time: str = Field(sa_column=Column(String(32), nullable=False))


class DatasetRemoval(SQLModel, table=True):
    """A `dataset.purged` or `dataset.retired` entry."""

    __tablename__ = "dataset_removals"
    __table_args__ = (Index("ix_dataset_removals_name", "dataset", "version"),)

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))  # purged | retired
    dataset: str = Field(sa_column=Column(String(128), nullable=False))
    version: str = Field(sa_column=Column(String(128), nullable=False))
    records: int | None = Field(default=None, sa_column=Column(BigInteger))
    fulfils: int | None = Field(default=None, sa_column=Column(BigInteger))
    purged_root: str | None = Field(default=None, sa_column=Column(String(64)))
    time: str = Field(sa_column=Column(String(32), nullable=False))


class DatasetMember(SQLModel, table=True):
    """A record of a build until it is purged (then the row goes; its leaf hash stays)."""

    __tablename__ = "dataset_members"
    # A write finds the members of the subjects it touches by ref.
    __table_args__ = (Index("ix_dataset_members_ref", "ref"),)

    build: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    record_id: str = Field(sa_column=Column(String(256), primary_key=True))
    position: int = Field(sa_column=Column(BigInteger, nullable=False))
    ref: str = Field(sa_column=Column(String(64), nullable=False))
    category: str = Field(sa_column=Column(String(512), nullable=False))
    # The member's open obligation, if it has one.
    obligation: int | None = Field(default=None, sa_column=Column(BigInteger))


class DatasetLeaves(SQLModel, table=True):
    """256 members' leaf hashes, packed in position order, and the root over them."""

    __tablename__ = "dataset_leaves"

    build: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    chunk: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hashes: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class DatasetObligation(SQLModel, table=True):
    __tablename__ = "dataset_obligations"
    __table_args__ = (
        Index("ix_dataset_obligations_build_status", "build", "status", "id"),
        Index("ix_dataset_obligations_build_position", "build", "position"),
        # The change feed lists the obligations each entry opened (migration 0007).
        Index("ix_dataset_obligations_cause", "cause"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    build: int = Field(sa_column=Column(BigInteger, nullable=False))
    position: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Deleted when an erased subject's record is purged.
    record_id: str | None = Field(default=None, sa_column=Column(String(256)))
    reason: str = Field(sa_column=Column(String(32), nullable=False))
    cause: int | None = Field(default=None, sa_column=Column(BigInteger))
    cause_time: str = Field(sa_column=Column(String(32), nullable=False))
    due: str = Field(sa_column=Column(String(32), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    # The purge or retirement that fulfilled it (cancelled: eligible again, no entry).
    closed_seq: int | None = Field(default=None, sa_column=Column(BigInteger))
    closed_time: str | None = Field(default=None, sa_column=Column(String(32)))


class DatasetWakeup(SQLModel, table=True):
    """An instant at which a member's subject's answers change by themselves (a
    decision taking effect or expiring): the sweep looks at the subject again then."""

    __tablename__ = "dataset_wakeups"
    __table_args__ = (Index("ix_dataset_wakeups_at", "at"),)

    ref: str = Field(sa_column=Column(String(64), primary_key=True))
    at: str = Field(sa_column=Column(String(32), primary_key=True))


class DatasetState(SQLModel, table=True):
    """How far the obligations are maintained: every entry below `through_seq`, every
    instant up to `swept_until`, and the re-evaluation a policy publication needs."""

    __tablename__ = "dataset_state"

    id: int = Field(default=1, primary_key=True)
    through_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    swept_until: str = Field(sa_column=Column(String(32), nullable=False))
    live_builds: int = Field(sa_column=Column(BigInteger, nullable=False))
    # A policy published since: members at or after (job_build, job_record) still
    # to be looked at again.
    policy_job: int | None = Field(default=None, sa_column=Column(BigInteger))
    job_build: int | None = Field(default=None, sa_column=Column(BigInteger))
    job_record: str | None = Field(default=None, sa_column=Column(String(256)))


# --- webhooks (SPEC §8) -------------------------------------------------------------------
# Operational state, outside the log and not derived from it: where each endpoint is,
# how far it has acknowledged the feed, the batch being delivered to it, and which
# process delivers. No secrets: an endpoint's signing secret is derived from a secret in
# HOME whenever it is needed.


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoints"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    url: str = Field(sa_column=Column(String(2048), nullable=False))
    # Comma-separated entry kinds; empty: every kind.
    kinds: str = Field(sa_column=Column(String(1024), nullable=False))
    created: str = Field(sa_column=Column(String(32), nullable=False))
    # A check value of the signing secret (not the secret itself): a process whose HOME
    # derives another secret refuses to sign with it.
    secret_check: str = Field(sa_column=Column(String(32), nullable=False))
    # The tree size delivered through: every event below it was acknowledged (2xx).
    cursor: int = Field(sa_column=Column(BigInteger, nullable=False))


class WebhookBatch(SQLModel, table=True):
    """The batch an endpoint is being sent: at most one per endpoint, deleted once
    acknowledged. Its bounds are fixed at the first attempt, so that every attempt,
    before or after a restart, carries the same events and the same webhook-id."""

    __tablename__ = "webhook_batches"

    endpoint: str = Field(sa_column=Column(String(64), primary_key=True))
    from_cursor: int = Field(sa_column=Column(BigInteger, nullable=False))
    first_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    next_cursor: int = Field(sa_column=Column(BigInteger, nullable=False))
    created: str = Field(sa_column=Column(String(32), nullable=False))
    attempts: int = Field(sa_column=Column(Integer, nullable=False))
    first_failure: str | None = Field(default=None, sa_column=Column(String(32)))
    next_attempt: str | None = Field(default=None, sa_column=Column(String(32)))
    last_error: str | None = Field(default=None, sa_column=Column(String(512)))


class WebhookLease(SQLModel, table=True):
    """The one row that elects the webhook deliverer (`ledger.service.webhooks`)."""

    __tablename__ = "webhook_lease"

    id: int = Field(default=1, primary_key=True)
    holder: str | None = Field(default=None, sa_column=Column(String(128)))
    # Milliseconds since the epoch by the database's clock.
    expires: int = Field(sa_column=Column(BigInteger, nullable=False))
