"""CSV rendering: the rows of a report, one per line, for spreadsheets.

A subject report gives one row per decision and one per category × purpose
(`row` says which); a period report one row per entry of the window, or, with
`rows="datasets"`, one row per dataset of its datasets section. Every row
names the SHA-256 of the signed report it came from: the CSV itself carries no
signature, so check the JSON or HTML report with that hash.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from ledger.consent.entries import DATASET_KINDS, EntryKind
from ledger.errors import InvalidInput
from ledger.reports.period import entry_bodies

SUBJECT_COLUMNS = (
    "row",
    "subject_id",
    "entry",
    "recorded",
    "category",
    "purpose",
    "decision",
    "dpv_status",
    "explicit",
    "method",
    "notice",
    "effective",
    "expires",
    "policy_version",
    "eligible",
    "reason",
    "decided_by",
    "report_sha256",
)
PERIOD_COLUMNS = (
    "entry",
    "recorded",
    "kind",
    "actor",
    "subject",
    "category",
    "purpose",
    "decision",
    "explicit",
    "method",
    "notice",
    "effective",
    "expires",
    "jurisdiction",
    "minor",
    "policy_version",
    "dataset",
    "version",
    "records",
    "fulfils",
    "report_sha256",
)
# One row per dataset of a period report's datasets section; versions are `|`-joined.
DATASET_COLUMNS = (
    "dataset",
    "builds_recorded",
    "versions_recorded",
    "records_recorded",
    "purges",
    "records_purged",
    "purged_fulfilling",
    "purged_voluntarily",
    "builds_retired",
    "versions_retired",
    "obligations_opened",
    "obligations_fulfilled",
    "obligations_cancelled",
    "open_at_end",
    "overdue_at_end",
    "cause_to_purge_count",
    "cause_to_purge_median_seconds",
    "cause_to_purge_p95_seconds",
    "cause_to_purge_max_seconds",
    "at",
    "report_sha256",
)
ROWS = ("entries", "datasets")


def render_csv(document: dict[str, Any], *, rows: str = "entries") -> str:
    buffer = io.StringIO()
    write_csv(document, buffer, rows=rows)
    return buffer.getvalue()


def write_csv(document: dict[str, Any], out: io.TextIOBase | Any, *, rows: str = "entries") -> None:
    """`rows`: a period report's `entries` (one row each) or `datasets` (one row each)."""
    content = document["report"]
    digest = document["signature"]["sha256"]
    if rows not in ROWS:
        raise InvalidInput(f"must be one of {', '.join(ROWS)}, got {rows!r}", field="rows")
    if rows == "datasets" and content["kind"] != "period":
        raise InvalidInput("only a period report has datasets rows", field="rows")
    writer = csv.writer(out, lineterminator="\n")
    if content["kind"] == "subject":
        writer.writerow(SUBJECT_COLUMNS)
        writer.writerows(_subject_rows(content, digest))
    elif rows == "datasets":
        writer.writerow(DATASET_COLUMNS)
        writer.writerows(_dataset_rows(content, digest))
    else:
        writer.writerow(PERIOD_COLUMNS)
        writer.writerows(_period_rows(content, digest))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _subject_rows(content: dict[str, Any], digest: str) -> Iterator[list[str]]:
    subject_id = content["subject"]["id"]
    for row, record in zip(content["decisions"], content["consent_records"], strict=True):
        yield [
            _text(value)
            for value in (
                "decision",
                subject_id,
                row["seq"],
                row["recorded"],
                row["category"],
                row["purpose"],
                row["decision"],
                record["dpv:hasConsentStatus"]["@type"],
                row["explicit"],
                row["method"],
                row["notice"],
                row["effective"],
                row["expires"],
                row["policy_version"],
                None,
                None,
                None,
                digest,
            )
        ]
    for cell in content["eligibility"]:
        yield [
            _text(value)
            for value in (
                "eligibility",
                subject_id,
                None,
                None,
                cell["category"],
                cell["purpose"],
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                content["as_of"]["policy_version"],
                cell["eligible"],
                cell["reason"],
                cell["decided_by"],
                digest,
            )
        ]


def _period_rows(content: dict[str, Any], digest: str) -> Iterator[list[str]]:
    for body in entry_bodies(content["entries"]):
        data = body["data"]
        kind = body["kind"]
        # `version` is a policy's in a policy entry and a build's in a dataset entry.
        is_dataset = kind in DATASET_KINDS
        policy_version = (
            data.get("version")
            if kind == EntryKind.POLICY_PUBLISHED
            else data.get("policy_version")
        )
        yield [
            _text(value)
            for value in (
                body["seq"],
                body["time"],
                body["kind"],
                body["actor"],
                data.get("subject"),
                data.get("category"),
                data.get("purpose"),
                data.get("decision"),
                data.get("explicit"),
                data.get("method"),
                data.get("notice"),
                data.get("effective"),
                data.get("expires"),
                data.get("jurisdiction"),
                data.get("minor"),
                policy_version,
                data.get("dataset"),
                data.get("version") if is_dataset else None,
                data.get("records"),
                data.get("fulfils"),
                digest,
            )
        ]


def _dataset_rows(content: dict[str, Any], digest: str) -> Iterator[list[str]]:
    section = content.get("datasets")
    if section is None:
        return
    for name, figures in section["by_dataset"].items():
        recorded, purged, retired = figures["recorded"], figures["purged"], figures["retired"]
        obligations = figures["obligations"]
        durations = figures["cause_to_purge_seconds"]
        yield [
            _text(value)
            for value in (
                name,
                recorded["builds"],
                "|".join(recorded["versions"]),
                recorded["records"],
                purged["entries"],
                purged["records"],
                purged["fulfils"],
                purged["voluntary"],
                retired["builds"],
                "|".join(retired["versions"]),
                obligations["opened"],
                obligations["fulfilled"],
                obligations["cancelled"],
                obligations["open_at_end"],
                obligations["overdue_at_end"],
                durations["count"],
                durations["median"],
                durations["p95"],
                durations["max"],
                section["at"],
                digest,
            )
        ]
