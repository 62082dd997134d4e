"""Current-state tables derived from the log.

One function, `Projector.project`, turns entries into rows; the appender uses
it inside the append transaction and `verify` uses it to replay the whole log,
so "the tables equal a fresh replay" is checked against the very code that
wrote them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ledger.consent.entries import SUBJECT_STATE_KINDS, EntryKind
from ledger.tlog.canonical import canonical_bytes
from ledger.tlog.log import LogEntry, Rows, TableRows

SubjectRow = dict[str, Any]
# Each projection table's columns: `project` gives its rows as tuples in this order
# (the appender inserts them as they are, `verify` compares them as they are).
PROJECTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "subject_versions": ("ref", "seq", "jurisdiction", "minor", "erased"),
    "consent_decisions": (
        "seq",
        "ref",
        "category",
        "purpose",
        "decision",
        "explicit",
        "method",
        "notice",
        "effective",
        "expires",
    ),
    "policy_versions": ("version", "seq", "document"),
    "dataset_builds": (
        "seq",
        "dataset",
        "version",
        "purpose",
        "checked_at",
        "at",
        "policy_version",
        "records",
        "members_root",
        "time",
    ),
    "dataset_removals": (
        "seq",
        "kind",
        "dataset",
        "version",
        "records",
        "fulfils",
        "purged_root",
        "time",
    ),
}
# (table, its PROJECTION_COLUMNS, rows), as `ledger.tlog.log` inserts them.
Projected = list[TableRows]

# Compared once per entry appended or verified: plain strings, bound once.
_CONSENT = EntryKind.CONSENT_RECORDED.value
_POLICY = EntryKind.POLICY_PUBLISHED.value
_BUILD = EntryKind.DATASET_RECORDED.value
_PURGED = EntryKind.DATASET_PURGED.value
_RETIRED = EntryKind.DATASET_RETIRED.value


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

    def project(self, entries: Sequence[LogEntry]) -> Projected:
        # Runs for every entry appended and every entry verified: locals, not lookups,
        # and tuples, not dicts.
        versions: Rows = []
        decisions: Rows = []
        policies: Rows = []
        builds: Rows = []
        removals: Rows = []
        latest_subject, subjects = self.latest_subject, self._subjects
        for entry in entries:
            body = entry.body
            kind, data = body["kind"], body["data"]
            if kind == _CONSENT:
                decisions.append(
                    (
                        entry.seq,
                        data["subject"],
                        data["category"],
                        data["purpose"],
                        data["decision"],
                        data["explicit"],
                        data["method"],
                        data["notice"],
                        data["effective"],
                        data["expires"],
                    )
                )
            elif kind in SUBJECT_STATE_KINDS:
                ref = data["subject"]
                row = subjects[ref] = subject_version(entry, latest_subject(ref))
                versions.append(
                    (row["ref"], row["seq"], row["jurisdiction"], row["minor"], row["erased"])
                )
            elif kind == _POLICY:
                document = canonical_bytes(data["policy"]).decode()
                policies.append((data["version"], entry.seq, document))
            elif kind == _BUILD:
                builds.append(
                    (
                        entry.seq,
                        data["dataset"],
                        data["version"],
                        data["purpose"],
                        data["checked_at"],
                        data["at"],
                        data["policy_version"],
                        data["records"],
                        data["members_root"],
                        body["time"],
                    )
                )
            elif kind == _PURGED:
                removals.append(
                    (
                        entry.seq,
                        "purged",
                        data["dataset"],
                        data["version"],
                        data["records"],
                        data["fulfils"],
                        data["purged_root"],
                        body["time"],
                    )
                )
            elif kind == _RETIRED:
                removals.append(
                    (
                        entry.seq,
                        "retired",
                        data["dataset"],
                        data["version"],
                        None,
                        None,
                        None,
                        body["time"],
                    )
                )
        rows = {
            "subject_versions": versions,
            "consent_decisions": decisions,
            "policy_versions": policies,
            "dataset_builds": builds,
            "dataset_removals": removals,
        }
        return [(table, columns, rows[table]) for table, columns in PROJECTION_COLUMNS.items()]


# What a subject's first entry does not state is as for a subject never seen.
_UNREGISTERED: SubjectRow = {"jurisdiction": None, "minor": False}


def subject_version(entry: LogEntry, prior: SubjectRow | None) -> SubjectRow:
    """The `subject_versions` row a subject entry leaves: what the entry states, the rest
    as in the subject's `prior` row (None: a new subject). A writer that keeps its
    subjects' latest rows (an import's batches) keeps them with this, as `project` does."""
    data = entry.body["data"]
    if prior is None:
        prior = _UNREGISTERED
    return {
        "ref": data["subject"],
        "seq": entry.seq,
        "jurisdiction": data.get("jurisdiction", prior["jurisdiction"]),
        "minor": data.get("minor", prior["minor"]),
        "erased": entry.body["kind"] == EntryKind.SUBJECT_ERASED,
    }
