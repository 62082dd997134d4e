"""Dataset builds, their members' proofs, purge obligations and purges (SPEC §7).

A build is recorded by streaming its records in as NDJSON: each is checked (all at
one tree size and time) and answered as it arrives, and the eligible ones are
recorded in one write when the body ends. The other routes are one facade call each.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from api import problems
from api.deps import AdminClient, LedgerDep, ReadClient, RecordClient
from api.models import (
    BuildReceiptOut,
    BuildsOut,
    MemberProofOut,
    ObligationsOut,
    ObligationStatus,
    PurgeBody,
    PurgeOut,
    RetireOut,
)
from api.routes.eligibility import MAX_LINE, DuplexStreamingResponse
from ledger.errors import LedgerError
from ledger.service import BuildItem, BuildRecorder
from ledger.service.datasets import MAX_PAGE, PAGE

logger = logging.getLogger("consent_ledger.api")

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

# Items checked per call of the recorder (each call is one grouped evaluation).
BUILD_CHUNK = 2_000

_NAME_RULE = "1 to 128 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
DatasetName = Annotated[str, Path(max_length=128, description=f"The dataset: {_NAME_RULE}")]
Version = Annotated[str, Path(max_length=128, description=f"The build's version: {_NAME_RULE}")]
# `:path`, so that record ids containing `/` (sent as %2F) still reach the handler.
RecordId = Annotated[
    str, Path(min_length=1, max_length=256, description="The platform's own id of the record")
]

_BUILD_LINES = """One line per body line that holds an item, in order:
`{"line","record_id","eligible","reason","decided_by"}`, or `{"line","error":{"field",
"message"}}` for an item that cannot be checked (not JSON, not an object, longer than
64 KiB, a missing or malformed field, another purpose). `line` is the body's line number,
from 1. The last line is `{"build":{summary},"receipt":{evidence bundle}}` once the build
is recorded, or `{"error":{RFC 9457 problem}}` if it was refused (malformed or repeated
record ids, recorded meanwhile): then nothing is recorded."""


@router.post(
    "/{name}/versions/{version}",
    summary="Record a build: NDJSON records in, each record's answer out, the receipt last",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-ndjson": {
                    "schema": {
                        "type": "string",
                        "description": 'one {"record_id","subject_id","category","purpose"?} '
                        "object per line; category: a name, names joined by `|`, or a list",
                    }
                }
            },
        }
    },
    responses={
        200: {
            "description": _BUILD_LINES,
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
    response_class=StreamingResponse,
)
async def record_build(
    request: Request,
    name: DatasetName,
    version: Version,
    ledger: LedgerDep,
    client: RecordClient,
    purpose: str | None = Query(
        default=None, max_length=128, description="The build's purpose; default ai-training"
    ),
    as_of: int | None = Query(default=None, ge=1, description="Check at this tree size"),
    at: str | None = Query(default=None, max_length=64, description="Check at this RFC 3339 time"),
) -> StreamingResponse:
    """Every record is checked at one tree size and time and answered as it arrives; the
    eligible ones become the build's members, recorded in one write when the body ends
    (SPEC §7.1). A (dataset, version) is recorded once. A build interrupted mid-stream
    records nothing."""
    # Made before the answer starts, so that a bad name, an unknown purpose or a version
    # recorded already is a plain problem response rather than a stream's last line.
    recorder = await run_in_threadpool(
        ledger.dataset_recorder,
        name,
        version,
        actor=client.name,
        purpose=purpose,
        as_of=as_of,
        at=at,
    )
    return BuildResponse(recorder, _build_lines(request, recorder))


class BuildResponse(DuplexStreamingResponse):
    """The build's answer; closes its recorder however the response ends (a recorder
    closed before `finish` records nothing)."""

    def __init__(self, recorder: BuildRecorder, lines: AsyncIterator[bytes]) -> None:
        super().__init__(lines, media_type="application/x-ndjson")
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.recorder.close()


async def _build_lines(request: Request, recorder: BuildRecorder) -> AsyncIterator[bytes]:
    try:
        pending: list[BuildItem | dict[str, Any]] = []
        async for items in read_items(request):
            pending += items
            if len(pending) >= BUILD_CHUNK:
                yield await run_in_threadpool(_check, recorder, pending)
                pending = []
        if pending:
            yield await run_in_threadpool(_check, recorder, pending)
        built = await run_in_threadpool(recorder.finish)
    except ClientDisconnect:
        return  # nobody is left to answer, and the recorder closes unfinished
    except LedgerError as exc:
        yield _error_line(problems.ledger_problem(exc))
        return
    except Exception:
        # The answer has begun: the client learns of the failure from the last line.
        logger.exception(
            "recording %s@%s failed", recorder.summary.dataset, recorder.summary.version
        )
        yield _error_line(problems.problem(500, "internal error; the server log has the details"))
        return
    yield orjson.dumps(built.to_json()) + b"\n"


def _error_line(problem: Response) -> bytes:
    return b'{"error":' + bytes(problem.body) + b"}\n"


async def read_items(request: Request) -> AsyncIterator[list[BuildItem | dict[str, Any]]]:
    """The body's items as they arrive: a list per received chunk, each a `BuildItem` or,
    for a line that cannot be one, its error line. Blank lines count, unanswered."""
    number = 0  # of the last complete line
    buffer = b""
    overlong = False  # inside a line longer than MAX_LINE: answered once, then skipped
    async for chunk in request.stream():
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        items: list[BuildItem | dict[str, Any]] = []
        for line in complete:
            number += 1
            if overlong:
                overlong = False  # the end of the over-long line, answered already
            elif len(line) > MAX_LINE:
                items.append(_line_error(number, f"line longer than {MAX_LINE} bytes"))
            elif line.strip():
                items.append(_item(number, line))
        if len(buffer) > MAX_LINE and not overlong:
            # Constant memory holds per line too: one error, not a growing buffer.
            items.append(_line_error(number + 1, f"line longer than {MAX_LINE} bytes"))
            overlong = True
        if overlong:
            buffer = b""
        if items:
            yield items
    if buffer.strip() and not overlong:
        yield [_item(number + 1, buffer)]


def _item(number: int, line: bytes) -> BuildItem | dict[str, Any]:
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _line_error(number, "not valid JSON")
    if type(raw) is not dict:
        return _line_error(number, "each line must be a JSON object")
    return BuildItem(
        number, raw.get("record_id"), raw.get("subject_id"), raw.get("category"), raw.get("purpose")
    )


def _line_error(number: int, message: str) -> dict[str, Any]:
    return {"line": number, "error": {"field": "line", "message": message}}


def _check(recorder: BuildRecorder, pending: list[BuildItem | dict[str, Any]]) -> bytes:
    """Answer a chunk of items in body order: the recorder's answers, and the lines it
    never saw."""
    items = [item for item in pending if isinstance(item, BuildItem)]
    answers = iter(recorder.check(items) if items else ())
    out = bytearray()
    for item in pending:
        if isinstance(item, BuildItem):
            line = next(answers).to_json()
        else:  # counted in the build's summary like the items it refuses
            line = recorder.reject(item["line"], item["error"]["message"]).to_json()
        out += orjson.dumps(line)
        out += b"\n"
    return bytes(out)


@router.get("", summary="Every recorded build", response_model=BuildsOut)
def list_builds(ledger: LedgerDep, _: ReadClient) -> dict[str, Any]:
    """Every build of every dataset, oldest first, with its members and obligations."""
    return {"builds": ledger.dataset_builds()}


@router.get("/{name}", summary="A dataset's builds", response_model=BuildsOut)
def get_dataset(name: DatasetName, ledger: LedgerDep, _: ReadClient) -> dict[str, Any]:
    """The dataset's builds, oldest first; 404 if none was recorded."""
    return {"builds": ledger.dataset_builds(name)}


@router.get(
    "/{name}/versions/{version}",
    summary="A build's summary and receipt",
    response_model=BuildReceiptOut,
)
def get_build(
    name: DatasetName, version: Version, ledger: LedgerDep, _: ReadClient
) -> dict[str, Any]:
    """The build, and an evidence bundle of its `dataset.recorded` entry (which signs its
    `members_root`)."""
    return ledger.dataset_build(name, version)


@router.get(
    "/{name}/versions/{version}/members/{record_id:path}/proof",
    summary="Proof that a record is a member of a build",
    response_model=MemberProofOut,
)
def get_member_proof(
    name: DatasetName, version: Version, record_id: RecordId, ledger: LedgerDep, _: ReadClient
) -> dict[str, Any]:
    """The member's leaf and its RFC 9162 inclusion proof (`hashes`, leaf `index` of
    `records`) in the build's `members_root`, with the evidence bundle of the
    `dataset.recorded` entry that names that root: checkable with the verifier key alone.
    404 if the record is not a member (now)."""
    return ledger.member_proof(name, version, record_id)


@router.get(
    "/{name}/obligations",
    summary="A dataset's purge obligations",
    response_model=ObligationsOut,
)
def get_obligations(
    name: DatasetName,
    ledger: LedgerDep,
    _: ReadClient,
    version: str | None = Query(default=None, max_length=128, description="Only this build"),
    status: Annotated[
        ObligationStatus | None, Query(description="`open` includes the overdue ones")
    ] = None,
    after: int | None = Query(default=None, ge=0, description="The `next` of the page before"),
    limit: int = Query(default=PAGE, ge=1, le=MAX_PAGE),
) -> dict[str, Any]:
    """Records that must be purged (and were), oldest first: why (`reason`, the `cause`
    entry and `cause_time`) and by when (`due`). 503 with Retry-After while a policy's
    re-evaluation is still being worked out."""
    return ledger.obligations(name, version=version, status=status, after=after, limit=limit)


@router.post(
    "/{name}/versions/{version}/purges",
    summary="Purge records from a build",
    status_code=201,
    response_model=PurgeOut,
)
def post_purge(
    name: DatasetName, version: Version, body: PurgeBody, ledger: LedgerDep, client: RecordClient
) -> dict[str, Any]:
    """Record that these records were deleted from the build: each closes its open
    obligation (`fulfils`); the others are voluntary removals (`voluntary`). Every id must
    be a member: otherwise nothing is purged and the 422 names them."""
    return ledger.purge_records(name, version, body.record_ids, actor=client.name).to_json()


@router.delete(
    "/{name}/versions/{version}",
    summary="Retire a build",
    response_model=RetireOut,
)
def retire_build(
    name: DatasetName, version: Version, ledger: LedgerDep, client: AdminClient
) -> dict[str, Any]:
    """The build was deleted everywhere: all its members leave it, and its open
    obligations close as fulfilled (`fulfils`)."""
    return ledger.retire_build(name, version, actor=client.name)
