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

from ledger.consent.subjects import validate_subject_id
from ledger.errors import NotFound
from ledger.reports.envelope import REPORT_FORMAT, sign_report
from ledger.reports.figures import (
    PolicyTimeline,
    consent_record,
    decision_row,
    facts_eligibility,
    subject_facts,
)
from ledger.service import ConsentLedger
from ledger.timestamps import format_timestamp, normalize_timestamp, utc_now
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
    with ledger.snapshot() as snapshot:
        origin = snapshot.origin()
        checkpoint = snapshot.latest_checkpoint()
        size = checkpoint.tree_size
        link = snapshot.subject(subject_id)
        own = snapshot.entries_of_subject(link.ref, before=size)
        policies = snapshot.policy_entries(before=size)
        evidence = snapshot.bundle(
            sorted([*own, *policies], key=lambda item: item.seq), size, checkpoint.note
        )
    content = build_subject_content(
        origin=origin,
        subject_id=subject_id,
        salt=link.salt,
        ref=link.ref,
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
        "eligibility": facts_eligibility(policy, facts, at),
        "limits": list(LIMITS),
    }
