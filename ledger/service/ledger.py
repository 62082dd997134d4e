"""`ConsentLedger`: the one object the API, the CLI and the reports are thin layers over.

It composes parts with one job each and delegates to them: `HeadTracker` (the
log head), `Signer` (the signing key), `Writer` (appends), `Checker`
(eligibility), `ReadModel` (reads) and `ApiClients`. Nothing here knows about
HTTP or terminals.
"""

from __future__ import annotations

import getpass
import secrets
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine

from ledger.consent.decisions import DecisionRequest
from ledger.consent.policy import Policy
from ledger.feed import ChangePage, FeedReader
from ledger.service.checker import Checker
from ledger.service.clients import ApiClients, Client
from ledger.service.datasets import DatasetService
from ledger.service.head import HeadSnapshot, HeadTracker
from ledger.service.keys import SigningKey
from ledger.service.policies import PolicyCache
from ledger.service.reads import LogSnapshot, ReadModel
from ledger.service.signer import Signer
from ledger.service.views import SubjectView
from ledger.service.writer import IdempotencyKey, Writer
from ledger.settings import Settings
from ledger.store.db import make_engine, read_session
from ledger.store.migrate import upgrade_if_behind, upgrade_schema
from ledger.tlog.evidence import EvidenceBundle
from ledger.tlog.log import LogEntry, SealedAppend
from ledger.tlog.notes import VerifierKey, validate_origin
from ledger.tlog.tiles import TileAddress
from ledger.verify import Progress, VerifyReport, verify_ledger


def cli_actor() -> str:
    """The actor of a write made from the command line: `cli:<os user>`."""
    return f"cli:{getpass.getuser()}"


def default_origin() -> str:
    return f"consent-ledger.local/{secrets.token_hex(8)}"


class ConsentLedger:
    """A consent ledger on one database and one HOME: its writes, checks and reads."""

    def __init__(self, settings: Settings | None = None, *, engine: Engine | None = None) -> None:
        self.settings = settings or Settings()
        self._engine = engine or make_engine(self.settings.resolved_database_url)
        self._head = HeadTracker(self._engine)
        self._signer = Signer(self._engine, self.settings)
        policies = PolicyCache()
        self._checker = Checker(
            self._engine,
            self._head,
            policies,
            self._signer.erasure_secret,
            cache_bytes=self.settings.subject_cache_mb * 2**20,
        )
        self._reads = ReadModel(self._engine, self._signer.erasure_secret, policies, self._checker)
        self._writer = Writer(self._engine, self._signer, self._head, policies, self._reads)
        self._clients = ApiClients(self._engine)
        self._datasets = DatasetService(self._engine, self._writer, self._checker, self._reads)
        self._feed = FeedReader()
        # The hot paths are the parts' own bound methods, not delegating methods:
        # no extra frame per check or per request. Their docs are the parts'.
        self.check = self._checker.check
        self.check_from_memory = self._checker.check_from_memory
        self.check_many = self._checker.check_many
        self.head_async = self._head.head_async
        self.cached_client = self._clients.cached
        # One signature for the import's many options: the writer's.
        self.import_file = self._writer.import_file
        # Dataset builds and purge obligations (SPEC §7): `DatasetService`'s.
        self.dataset_recorder = self._datasets.recorder
        self.purge_records = self._datasets.purge
        self.retire_build = self._datasets.retire
        self.sweep_obligations = self._datasets.sweep
        self.dataset_builds = self._datasets.builds
        self.dataset_build = self._datasets.build
        self.member_proof = self._datasets.member_proof
        self.obligations = self._datasets.obligations
        self.subject_datasets = self._datasets.subject_datasets
        # The change feed (SPEC §8) waits for the log to grow, whoever writes.
        self.wait_beyond = self._head.wait_beyond
        self.wait_beyond_sync = self._head.wait_beyond_sync

    @property
    def engine(self) -> Engine:
        """The database engine, for verification tools, tests and benchmarks.

        The API, the CLI and the reports never use it: they ask the ledger.
        """
        return self._engine

    def close(self) -> None:
        self._head.close()
        self._engine.dispose()

    # --- set-up --------------------------------------------------------------------------

    @classmethod
    def initialize(
        cls,
        settings: Settings | None = None,
        *,
        origin: str | None = None,
        actor: str | None = None,
        engine: Engine | None = None,
    ) -> tuple[ConsentLedger, SealedAppend]:
        """Create the schema, the signing key and the log's first entries.

        Refuses to touch an existing ledger or an existing signing key.
        """
        ledger = cls(settings, engine=engine)
        origin = validate_origin(origin or default_origin())
        ledger.upgrade()
        sealed = ledger._writer.create_log(origin, actor=actor or cli_actor())
        return ledger, sealed

    def upgrade(self) -> None:
        upgrade_schema(self._engine)

    def upgrade_if_behind(self) -> bool:
        """Migrate a database made by an older release (True if it was behind)."""
        return upgrade_if_behind(self._engine)

    def database_url(self, *, hide_password: bool = True) -> str:
        """The database's URL; with its password only for handing to a child process."""
        return self._engine.url.render_as_string(hide_password=hide_password)

    # --- the log head --------------------------------------------------------------------

    def tree_size(self) -> int:
        return self._head.tree_size()

    # --- keys ----------------------------------------------------------------------------

    def signing_key(self) -> SigningKey:
        """The current key, checked against the log's latest announced key."""
        return self._signer.signing_key()

    def verifier_key(self) -> str:
        """The verifier key the log announced last."""
        return self._signer.verifier_key()

    def rotate_key(self, *, actor: str) -> SealedAppend:
        """Announce a new key; the checkpoint covering it is signed by old and new."""
        return self._writer.rotate_key(actor=actor)

    # --- writes --------------------------------------------------------------------------

    def register_subject(
        self,
        subject_id: str,
        *,
        jurisdiction: str | None = None,
        minor: bool = False,
        actor: str,
    ) -> SealedAppend | None:
        """Register a subject or update its attributes; None if nothing changed."""
        return self._writer.register_subject(
            subject_id, jurisdiction=jurisdiction, minor=minor, actor=actor
        )

    def record_consents(
        self,
        subject_id: str,
        decisions: Sequence[DecisionRequest],
        *,
        actor: str,
        idempotency: IdempotencyKey | None = None,
    ) -> SealedAppend:
        """Record decisions for a registered subject, all or none (idempotent with a key)."""
        return self._writer.record_consents(
            subject_id, decisions, actor=actor, idempotency=idempotency
        )

    def erase_subject(self, subject_id: str, *, actor: str) -> SealedAppend:
        """GDPR Art. 17: unlink the subject from the log for good."""
        return self._writer.erase_subject(subject_id, actor=actor)

    def publish_policy(self, policy: Policy, *, actor: str) -> SealedAppend:
        """Publish a policy; its version must be newer than the one in force."""
        return self._writer.publish_policy(policy, actor=actor)

    # --- reads ---------------------------------------------------------------------------

    def current_policy(self) -> Policy:
        return self._reads.current_policy()

    def subject_view(self, subject_id: str, *, at: str | None = None) -> SubjectView:
        """Current attributes, decisions and eligibility for every category × purpose."""
        return self._reads.subject_view(subject_id, at=at)

    def subject_history(self, subject_id: str) -> EvidenceBundle:
        """An evidence bundle of every entry about the subject, against the latest checkpoint."""
        return self._reads.subject_history(subject_id)

    def receipt(self, sealed: SealedAppend) -> EvidenceBundle:
        """The evidence bundle of a write: its entries, proven into its own checkpoint."""
        return self._reads.receipt(sealed)

    def changes(
        self, after: int, limit: int = 1000, *, kinds: frozenset[str] | None = None
    ) -> ChangePage:
        """The change feed's page after cursor `after` (SPEC §8): entries with their
        effects and obligations, proven into the latest checkpoint. With `kinds`, only
        events of those kinds, each with its own inclusion proof."""
        with read_session(self._engine) as session:
            return self._feed.page(session, after, limit, kinds=kinds)

    def entries(self, start: int, limit: int) -> list[LogEntry]:
        return self._reads.entries(start, limit)

    def entry(self, seq: int) -> LogEntry:
        return self._reads.entry(seq)

    def checkpoint(self) -> str:
        """The latest signed checkpoint."""
        return self._reads.checkpoint()

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> dict[str, Any]:
        return self._reads.inclusion_proof(index, tree_size)

    def consistency_proof(self, old_size: int, new_size: int) -> dict[str, Any]:
        return self._reads.consistency_proof(old_size, new_size)

    def tile(self, address: TileAddress) -> bytes:
        """A tlog-tiles hash tile or entry bundle."""
        return self._reads.tile(address)

    def snapshot(self) -> AbstractContextManager[LogSnapshot]:
        """One consistent read of the log and its projections, for reports."""
        return self._reads.snapshot()

    def verify(
        self,
        *,
        external_checkpoints: Sequence[str] = (),
        trusted_key: VerifierKey | None = None,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Recompute and check everything (`ledger.verify`); VerificationError names the
        first problem."""
        return verify_ledger(
            self._engine,
            external_checkpoints=external_checkpoints,
            trusted_key=trusted_key,
            progress=progress,
        )

    # --- API clients ---------------------------------------------------------------------

    def create_client(self, name: str, scopes: list[str]) -> tuple[Client, str]:
        """Create an API client; return it and its key (shown once, stored as a hash)."""
        return self._clients.create(name, scopes)

    def list_clients(self) -> list[Client]:
        return self._clients.list_all()

    def revoke_client(self, name: str) -> None:
        self._clients.revoke(name)

    def authenticate(self, key: str, head: HeadSnapshot) -> Client | None:
        """The active client holding `key` (reads the database; see `cached_client`)."""
        return self._clients.authenticate(key, head)
