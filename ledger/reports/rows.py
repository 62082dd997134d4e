"""CSV rendering: the rows of a report, one per line, for spreadsheets.

A subject report gives one row per decision and one per category × purpose
(`row` says which); a period report one row per entry of the window. Every
row names the SHA-256 of the signed report it came from: the CSV itself
carries no signature, so check the JSON or HTML report with that hash.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

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
    "report_sha256",
)


def render_csv(document: dict[str, Any]) -> str:
    buffer = io.StringIO()
    write_csv(document, buffer)
    return buffer.getvalue()


def write_csv(document: dict[str, Any], out: io.TextIOBase | Any) -> None:
    content = document["report"]
    digest = document["signature"]["sha256"]
    writer = csv.writer(out, lineterminator="\n")
    if content["kind"] == "subject":
        writer.writerow(SUBJECT_COLUMNS)
        writer.writerows(_subject_rows(content, digest))
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
                data.get("version"),
                digest,
            )
        ]
