"""Audit reports an auditor can verify offline: per subject and per period.

`subject_report` and `period_report` build signed report documents (see
`ledger.reports.envelope` for the envelope), `render_html` and `render_csv`
render them, and `verify_report` checks one with nothing but verifier keys.
"""

from ledger.reports.envelope import LoadedReport, dumps_document, load_document
from ledger.reports.period import period_report
from ledger.reports.subject import subject_report
from ledger.reports.verify import ReportVerification, verify_report

__all__ = [
    "LoadedReport",
    "ReportVerification",
    "dumps_document",
    "load_document",
    "period_report",
    "subject_report",
    "verify_report",
]
