"""The subject report: what one person allowed, for what, since when, and the proof of it.

For the person (GDPR Art. 15) and for proving consent (Art. 7(1)). The report
is FOR the person it is about, so it names them: the platform's `subject_id`
and the salt that opens the commitment in their `subject.registered` entry are
in the signed content, which lets anyone holding the report check offline that
the log entries it proves are that person's and no one else's. The salt is
not otherwise secret from the person; hand a subject report only to them or
to whoever they (or the law) allow to see it. Nothing else about other people
is in it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent.entries import EntryKind
from ledger.consent.subjects import erased_id_hash, validate_subject_id
from ledger.errors import Conflict, NotFound
from ledger.reports.envelope import REPORT_FORMAT, sign_report
from ledger.reports.figures import (
    PolicyTimeline,
    consent_record,
    decision_row,
    eligibility_matrix,
    subject_facts,
)
from ledger.service import ERASURE_SECRET, ConsentLedger
from ledger.store.db import read_session
from ledger.store.schema import ErasedSubject, LogEntryRow, SubjectMapping
from ledger.timestamps import format_timestamp, normalize_timestamp, utc_now
from ledger.tlog import log
from ledger.tlog.evidence import EvidenceBundle, EvidenceEntry
from ledger.tlog.log import LogEntry
from ledger.tlog.notes import b64

LIMITS = (
    "Inclusion proofs show that every entry listed is in the log; they cannot show that no "
    "other entry about this subject exists. The full `verify` of the ledger checks that.",
    "Eligibility is recomputed by verify-report from the entries and the policy in this "
    "report, at the tree size and time stated in `as_of`.",
)


def subject_report(
    ledger: ConsentLedger, subject_id: str, *, at: str | None = None
) -> dict[str, Any]:
    """The signed subject report document for `subject_id` at the latest checkpoint."""
    subject_id = validate_subject_id(subject_id)
    moment = format_timestamp(utc_now()) if at is None else normalize_timestamp(at, field="at")
    signer = ledger.signing_key()
    with read_session(ledger.engine) as session:
        origin = log.origin(session)
        checkpoint = log.latest_checkpoint(session)
        size = checkpoint.tree_size
        mapping = session.get(SubjectMapping, subject_id)
        if mapping is None:
            secret = ledger.keys.secret(ERASURE_SECRET)
            if session.get(ErasedSubject, erased_id_hash(secret, subject_id)) is not None:
                raise Conflict(f"subject {subject_id!r} was erased: there is nothing to report")
            raise NotFound(f"subject {subject_id!r} is not registered")
        own = _entries(session, col(LogEntryRow.subject) == mapping.ref, size)
        policies = _entries(session, col(LogEntryRow.kind) == EntryKind.POLICY_PUBLISHED, size)
        evidence = EvidenceBundle(
            verifier_key=verifier_key_before(session, size),
            checkpoint=checkpoint.note,
            entries=tuple(
                EvidenceEntry(
                    index=entry.seq,
                    canonical=entry.canonical,
                    inclusion=tuple(log.inclusion_proof(session, entry.seq, size)),
                )
                for entry in sorted([*own, *policies], key=lambda item: item.seq)
            ),
        )
    content = build_subject_content(
        origin=origin,
        subject_id=subject_id,
        salt=mapping.salt,
        ref=mapping.ref,
        own=[entry.body for entry in own],
        policies=[entry.body for entry in policies],
        tree_size=size,
        at=moment,
        generated_at=format_timestamp(utc_now()),
        verifier_key=str(signer.verifier_key),
    )
    content["evidence"] = evidence.to_json()
    return sign_report(content, signer)


def build_subject_content(
    *,
    origin: str,
    subject_id: str,
    salt: bytes,
    ref: str,
    own: list[dict[str, Any]],
    policies: list[dict[str, Any]],
    tree_size: int,
    at: str,
    generated_at: str,
    verifier_key: str,
) -> dict[str, Any]:
    """Everything but the evidence; verify-report rebuilds the derived parts with it."""
    timeline = PolicyTimeline()
    for body in policies:
        timeline.add(body["seq"], body["data"])
    facts = subject_facts(ref, own)
    in_force = timeline.at(tree_size)
    if in_force is None:
        raise NotFound(f"no policy was in force at tree size {tree_size}")
    version, policy = in_force
    rows = []
    records = []
    for seq, body in facts.decisions:
        decided_under = timeline.at(seq)
        row = decision_row(seq, body, decided_under[0] if decided_under else None)
        rows.append(row)
        records.append(
            consent_record(origin, ref, row, decided_under[1] if decided_under else None)
        )
    return {
        "format": REPORT_FORMAT,
        "kind": "subject",
        "origin": origin,
        "generated_at": generated_at,
        "verifier_key": verifier_key,
        "subject": {
            "id": subject_id,
            "ref": ref,
            "salt": b64(salt),
            "commitment": facts.commitment,
            "registered": {"seq": facts.registered_seq, "time": facts.registered_time},
            "jurisdiction": facts.jurisdiction,
            "minor": facts.minor,
            "regime": policy.regime_of(facts.jurisdiction),
        },
        "as_of": {"tree_size": tree_size, "at": at, "policy_version": version},
        "decisions": rows,
        "consent_records": records,
        "eligibility": eligibility_matrix(policy, facts, at),
        "limits": list(LIMITS),
    }


def _entries(session: Session, condition: Any, size: int) -> list[LogEntry]:
    rows = session.execute(
        select(col(LogEntryRow.seq), col(LogEntryRow.canonical))
        .where(condition, col(LogEntryRow.seq) < size)
        .order_by(col(LogEntryRow.seq))
    )
    return [LogEntry.from_canonical(seq, canonical) for seq, canonical in rows]


def verifier_key_before(session: Session, size: int) -> str:
    """The key announced last before tree size `size`: the one its checkpoint is signed by."""
    row = session.execute(
        select(col(LogEntryRow.seq), col(LogEntryRow.canonical))
        .where(
            col(LogEntryRow.kind).in_((EntryKind.LEDGER_INITIALIZED, EntryKind.KEY_ADDED)),
            col(LogEntryRow.seq) < size,
        )
        .order_by(col(LogEntryRow.seq).desc())
        .limit(1)
    ).first()
    if row is None:
        raise NotFound("no verifier key was announced before this tree size")
    return str(LogEntry.from_canonical(row[0], row[1]).data["verifier_key"])
