"""Signed audit reports over HTTP, for auditors (`audit` scope)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from api.deps import AuditClient, LedgerDep
from ledger.reports import dumps_document, period_report, subject_report
from ledger.reports.html import render_html
from ledger.reports.rows import render_csv
from ledger.service import ConsentLedger

router = APIRouter(prefix="/v1/reports", tags=["reports"])


class Format(StrEnum):
    json = "json"
    html = "html"
    csv = "csv"


MEDIA = {
    Format.json: "application/json",
    Format.html: "text/html; charset=utf-8",
    Format.csv: "text/csv; charset=utf-8",
}


def _render(ledger: ConsentLedger, document: dict[str, object], fmt: Format) -> bytes:
    if fmt is Format.json:
        return dumps_document(document, indent=False)
    if fmt is Format.html:
        return render_html(document, ledger.signing_key()).encode("utf-8")
    return render_csv(document).encode("utf-8")


def _response(data: bytes, fmt: Format, name: str) -> Response:
    return Response(
        data,
        media_type=MEDIA[fmt],
        headers={"Content-Disposition": f'inline; filename="{name}.{fmt.value}"'},
    )


@router.get(
    "/subject/{subject_id:path}",
    responses={200: {"content": {media: {} for media in MEDIA.values()}}},
)
async def subject(
    subject_id: str,
    ledger: LedgerDep,
    _: AuditClient,
    format: Annotated[Format, Query(description="json, html or csv")] = Format.json,
    at: Annotated[str | None, Query(description="Evaluate eligibility at this time.")] = None,
) -> Response:
    """A signed subject report: decisions as ISO/IEC TS 27560 records, eligibility, evidence."""

    def build() -> bytes:
        return _render(ledger, subject_report(ledger, subject_id, at=at), format)

    return _response(await run_in_threadpool(build), format, "subject-report")


@router.get("/period", responses={200: {"content": {media: {} for media in MEDIA.values()}}})
async def period(
    ledger: LedgerDep,
    _: AuditClient,
    start: Annotated[
        str | None, Query(alias="from", description="Start (RFC 3339 or date), inclusive.")
    ] = None,
    end: Annotated[
        str | None, Query(alias="to", description="End (RFC 3339 or date), exclusive.")
    ] = None,
    format: Annotated[Format, Query(description="json, html or csv")] = Format.json,
    verify: Annotated[bool, Query(description="Include a full verify of the ledger.")] = True,
) -> Response:
    """A signed period report: every change in [from, to), counts, rates, policies, proofs."""

    def build() -> bytes:
        document, _ = period_report(ledger, start=start, end=end, run_verify=verify)
        return _render(ledger, document, format)

    return _response(await run_in_threadpool(build), format, "period-report")
