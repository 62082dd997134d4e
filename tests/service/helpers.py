"""What the service tests share: subjects, decisions, policies and a look into the tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import MetaData, select

from ledger.consent.decisions import DecisionRequest
from ledger.consent.policy import Policy, default_policy
from ledger.service import ConsentLedger
from ledger.store.db import read_session
from ledger.store.schema import SubjectMapping
from ledger.tlog import log
from ledger.tlog.log import LogEntry
from ledger.tlog.notes import VerifierKey

ACTOR = "ops"
ALICE = "alice-7f3a91@example.com"
BOB = "bob-1c22e0@example.com"

Call = Callable[[ConsentLedger], object]


def all_entries(ledger: ConsentLedger) -> list[LogEntry]:
    with read_session(ledger.engine) as session:
        return log.read_entries(session, 0, log.tree_size(session))


def ref_of(ledger: ConsentLedger, subject_id: str) -> str:
    with read_session(ledger.engine) as session:
        mapping = session.get(SubjectMapping, subject_id)
        assert mapping is not None
        return mapping.ref


def trusted(ledger: ConsentLedger) -> list[VerifierKey]:
    return [VerifierKey.parse(ledger.verifier_key())]


def grant(category: str = "content.public", **fields: Any) -> DecisionRequest:
    return DecisionRequest(category=category, decision="granted", **fields)


def deny(category: str = "content.public", **fields: Any) -> DecisionRequest:
    return DecisionRequest(category=category, decision="denied", **fields)


def policy_version(version: int, *, us_public: str = "deny") -> Policy:
    """The default policy as `version`, with the US opt-out default for public posts changed."""
    document = default_policy().to_document()
    document["version"] = version
    document["defaults"]["default"]["ai-training"]["content.public"] = us_public
    return Policy.from_document(document)


def answer(result: Any) -> tuple[bool, str, int | None]:
    return (result.eligible, result.reason, result.decided_by)


def rows_containing(engine: Any, needle: str) -> list[tuple[str, str]]:
    """(table, column) of every stored value, in any table, that contains `needle`."""
    metadata = MetaData()
    metadata.reflect(engine)
    raw = needle.encode("utf-8")
    hits = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)).mappings():
                for column, value in row.items():
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    if (isinstance(value, str) and needle in value) or (
                        isinstance(value, bytes) and raw in value
                    ):
                        hits.append((table.name, column))
    return hits
