"""Subjects and their consent decisions."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Response

from api.deps import AdminClient, LedgerDep, ReadClient, RecordClient
from api.models import ConsentsBody, SubjectBody, SubjectDatasetsOut, WriteOut
from ledger.consent.decisions import DecisionRequest
from ledger.consent.entries import EntryKind
from ledger.service import IdempotencyKey

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])

# `:path` routes, so that ids containing `/` (sent as %2F, which servers decode
# before routing) still reach the handler; suffix routes are declared first.
SubjectId = Annotated[
    str, Path(min_length=1, max_length=256, description="The platform's own id for the person")
]


@router.put("/{subject_id:path}", response_model=WriteOut, status_code=200)
def put_subject(
    subject_id: SubjectId,
    body: SubjectBody,
    ledger: LedgerDep,
    client: RecordClient,
    response: Response,
) -> dict[str, Any]:
    """Register a subject, or update its jurisdiction and minor flag (201 when new)."""
    sealed = ledger.register_subject(
        subject_id, jurisdiction=body.jurisdiction, minor=body.minor, actor=client.name
    )
    if sealed is None:
        return {"token": ledger.tree_size(), "receipt": None}
    if sealed.entries[0].kind == EntryKind.SUBJECT_REGISTERED:
        response.status_code = 201
    return {"token": sealed.tree_size, "receipt": ledger.receipt(sealed).to_json()}


@router.post("/{subject_id:path}/consents", response_model=WriteOut, status_code=201)
def post_consents(
    subject_id: SubjectId,
    body: ConsentsBody,
    ledger: LedgerDep,
    client: RecordClient,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="A retry with the same key and body appends nothing",
        ),
    ] = None,
) -> dict[str, Any]:
    """Record decisions, all or none; the receipt proves them into a signed checkpoint."""
    idempotency = None
    if idempotency_key is not None:
        request_hash = hashlib.sha256(
            orjson.dumps([subject_id, body.model_dump()], option=orjson.OPT_SORT_KEYS)
        ).digest()
        idempotency = IdempotencyKey(client.name, idempotency_key, request_hash)
    sealed = ledger.record_consents(
        subject_id,
        [DecisionRequest(**decision.model_dump()) for decision in body.decisions],
        actor=client.name,
        idempotency=idempotency,
    )
    return {"token": sealed.tree_size, "receipt": ledger.receipt(sealed).to_json()}


@router.get("/{subject_id:path}/consents")
def get_consents(subject_id: SubjectId, ledger: LedgerDep, _: ReadClient) -> dict[str, Any]:
    """Current attributes and decisions, and eligibility for every category × purpose."""
    return ledger.subject_view(subject_id).to_json(with_ref=False)


@router.get("/{subject_id:path}/history")
def get_history(subject_id: SubjectId, ledger: LedgerDep, _: ReadClient) -> dict[str, Any]:
    """An evidence bundle of every entry about the subject."""
    return ledger.subject_history(subject_id).to_json()


@router.get(
    "/{subject_id:path}/datasets",
    summary="The builds holding a subject's records",
    response_model=SubjectDatasetsOut,
)
def get_datasets(subject_id: SubjectId, ledger: LedgerDep, _: ReadClient) -> dict[str, Any]:
    """Every build with records of the subject, and their open purge obligations (SPEC §7.2)."""
    return ledger.subject_datasets(subject_id)


@router.delete("/{subject_id:path}", response_model=WriteOut)
def erase_subject(subject_id: SubjectId, ledger: LedgerDep, client: AdminClient) -> dict[str, Any]:
    """Erasure (GDPR Art. 17): unlink the id from the log; later checks answer `erased`."""
    sealed = ledger.erase_subject(subject_id, actor=client.name)
    return {"token": sealed.tree_size, "receipt": ledger.receipt(sealed).to_json()}
