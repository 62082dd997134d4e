"""Current-state tables derived from the log.

One function, `Projector.project`, turns entries into rows; the appender uses
it inside the append transaction and `verify` uses it to replay the whole log,
so "the tables equal a fresh replay" is checked against the very code that
wrote them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ledger.canonical import canonical_bytes
from ledger.log import LogEntry

SubjectRow = dict[str, Any]
Rows = dict[str, list[dict[str, Any]]]
_SUBJECT_KINDS = frozenset({"subject.registered", "subject.updated", "subject.erased"})


class Projector:
    """Projects entries in seq order; remembers the latest subject row it produced."""

    def __init__(self, load_subject: Callable[[str], SubjectRow | None] | None = None) -> None:
        self._load_subject = load_subject
        self._subjects: dict[str, SubjectRow] = {}

    def latest_subject(self, ref: str) -> SubjectRow | None:
        row = self._subjects.get(ref)
        if row is None and self._load_subject is not None:
            row = self._load_subject(ref)
        return row

    def project(self, entries: Sequence[LogEntry]) -> Rows:
        # Runs for every entry appended and every entry verified: locals, not lookups.
        versions: list[dict[str, Any]] = []
        decisions: list[dict[str, Any]] = []
        policies: list[dict[str, Any]] = []
        subject_row = self._subject_row
        for entry in entries:
            body = entry.body
            kind, data = body["kind"], body["data"]
            if kind == "consent.recorded":
                decisions.append(
                    {
                        "seq": entry.seq,
                        "ref": data["subject"],
                        "category": data["category"],
                        "purpose": data["purpose"],
                        "decision": data["decision"],
                        "explicit": data["explicit"],
                        "method": data["method"],
                        "notice": data["notice"],
                        "effective": data["effective"],
                        "expires": data["expires"],
                    }
                )
            elif kind in _SUBJECT_KINDS:
                versions.append(subject_row(entry))
            elif kind == "policy.published":
                policies.append(
                    {
                        "version": data["version"],
                        "seq": entry.seq,
                        "document": canonical_bytes(data["policy"]).decode(),
                    }
                )
        return {
            "subject_versions": versions,
            "consent_decisions": decisions,
            "policy_versions": policies,
        }

    def _subject_row(self, entry: LogEntry) -> SubjectRow:
        data = entry.data
        ref = data["subject"]
        prior = self.latest_subject(ref) or {"jurisdiction": None, "minor": False}
        row = {
            "ref": ref,
            "seq": entry.seq,
            "jurisdiction": data.get("jurisdiction", prior["jurisdiction"]),
            "minor": data.get("minor", prior["minor"]),
            "erased": entry.kind == "subject.erased",
        }
        self._subjects[ref] = row
        return row
