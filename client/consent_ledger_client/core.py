"""`ConsentLedgerClient`: eligibility checks, dataset filtering and verified writes over HTTP."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson

from consent_ledger_client._kernel.errors import InvalidInput
from consent_ledger_client._kernel.errors import VerificationError as KernelVerificationError
from consent_ledger_client._kernel.tlog.evidence import EvidenceBundle, verify_bundle
from consent_ledger_client._kernel.tlog.notes import Checkpoint, VerifierKey, unb64
from consent_ledger_client.errors import (
    ApiError,
    InvalidRecord,
    MissingScope,
    ProtocolError,
    TransportError,
    VerificationError,
)
from consent_ledger_client.trust import TrustedLog

__all__ = ["ConsentLedgerClient", "FilterResult", "Receipt", "VerifiedBundle"]

R = TypeVar("R")
KeyOrGetter = str | Callable[[Any], Any]

DEFAULT_PURPOSE = "ai-training"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
MAX_RETRY_AFTER = 10.0


def _user_agent() -> str:
    try:
        return f"consent-ledger-client/{version('consent-ledger-client')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "consent-ledger-client"


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """An evidence bundle whose signature and inclusion proofs have been checked.

    `checkpoint` is the signed checkpoint it proves against, `entries` the
    parsed entries (from their verified canonical bytes), `document` the bundle
    as received: store it, anyone with the verifier key can check it offline
    (`consent-ledger verify-bundle`).
    """

    checkpoint: Checkpoint
    entries: tuple[dict[str, Any], ...]
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Receipt:
    """The verified answer to a write.

    `token` is the tree size after the write: pass it as `at_least_as_fresh` to
    read your own write from any API instance. `bundle` is None when the write
    changed nothing (registering a subject with the attributes it already has).
    `status` is the HTTP status (201 for a new subject or new decisions).
    """

    token: int
    bundle: VerifiedBundle | None
    status: int

    @property
    def changed(self) -> bool:
        return self.bundle is not None

    @property
    def checkpoint(self) -> Checkpoint | None:
        return None if self.bundle is None else self.bundle.checkpoint

    @property
    def entries(self) -> tuple[dict[str, Any], ...]:
        return () if self.bundle is None else self.bundle.entries

    @property
    def document(self) -> dict[str, Any] | None:
        """The receipt (evidence bundle JSON) as the server sent it."""
        return None if self.bundle is None else self.bundle.document


def _getter(key: KeyOrGetter) -> Callable[[Any], Any]:
    if callable(key):
        return key

    def get(record: Any) -> Any:
        try:
            return record[key]
        except (KeyError, IndexError, TypeError):
            return None

    return get


@dataclass
class FilterResult(Generic[R]):
    """The eligible records, lazily, plus what the filter decided on the way.

    Iterate it to get the eligible records in input order. Every batch is
    evaluated at the tree size and time of the first one: `checked_at` and `at`
    (set once the first batch has been answered) reproduce the same dataset
    later when passed back as `filter(..., as_of=checked_at, at=at)`.
    `checkpoint` is the signed checkpoint the server named for that tree size
    (verified); `kept` and `dropped` (by reason) count what has been seen so far.
    """

    _records: Iterator[R] = field(repr=False)
    checked_at: int | None = None
    at: str | None = None
    policy_version: int | None = None
    checkpoint: Checkpoint | None = None
    checkpoint_note: str | None = field(default=None, repr=False)
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    batches: int = 0

    def __iter__(self) -> Iterator[R]:
        return self

    def __next__(self) -> R:
        return next(self._records)

    @property
    def seen(self) -> int:
        return self.kept + sum(self.dropped.values())


class ConsentLedgerClient:
    """A client for platforms: ask before using data, record decisions, verify everything.

    `verifier_key` is the ledger's verifier key (`consent-ledger keys show`), or
    several after a key rotation; it is the trust anchor, never taken from the
    server. Every receipt is verified (signature, inclusion proofs, and that it
    says what was asked) before a write returns. With `verify_consistency` (the
    default) every checkpoint newer than the last trusted one must come with a
    consistency proof, which needs an API key with the `audit` scope; the last
    trusted checkpoint is kept in memory and, with `trust_store`, in that file
    (use one file per process). Without it only signatures are checked.

    `http` injects a ready `httpx.Client` (e.g. FastAPI's `TestClient`); it is
    then not closed by `close`. `retries` is how often a read answered
    503 + Retry-After (a replica behind `at_least_as_fresh`) is retried, and how
    often a write that got no answer is resent with the same Idempotency-Key.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        verifier_key: str | VerifierKey | Sequence[str | VerifierKey],
        *,
        trust_store: Path | str | None = None,
        verify_consistency: bool = True,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = 2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": _user_agent(),
        }
        self._owns_http = http is None
        self._http = http or httpx.Client(transport=transport, timeout=timeout)
        self.retries = retries
        self.keys = _parse_keys(verifier_key)
        self.trust = TrustedLog(
            self.keys,
            store=Path(trust_store) if trust_store is not None else None,
            fetch_proof=self._consistency_proof if verify_consistency else None,
        )
        self.last_checked_at: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ConsentLedgerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def trusted_checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint this client has proven consistent (None before the first)."""
        return self.trust.trusted

    # --- eligibility ---------------------------------------------------------------------

    def check(
        self,
        subject_id: str,
        category: str,
        purpose: str | None = None,
        *,
        as_of: int | None = None,
        at: str | None = None,
        at_least_as_fresh: int | None = None,
    ) -> dict[str, Any]:
        """One eligibility check: ``{"eligible","reason","decided_by","policy_version",
        "checked_at","at"}``. Unknown categories or purposes raise `ApiError` (422)."""
        body = _without_none(
            subject_id=subject_id,
            category=category,
            purpose=purpose,
            as_of=as_of,
            at=at,
            at_least_as_fresh=at_least_as_fresh,
        )
        answer = self._json("POST", "/v1/eligibility/check", body=body, retry_unavailable=True)
        if not isinstance(answer, dict) or not isinstance(answer.get("eligible"), bool):
            raise ProtocolError("an eligibility answer must be an object with `eligible`")
        self.last_checked_at = answer.get("checked_at")
        return answer

    def check_batch(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        purpose: str | None = None,
        as_of: int | None = None,
        at: str | None = None,
        at_least_as_fresh: int | None = None,
    ) -> dict[str, Any]:
        """One `/v1/eligibility/batch` call, as the server answers it (results in order)."""
        body = _without_none(
            purpose=purpose, as_of=as_of, at=at, at_least_as_fresh=at_least_as_fresh
        )
        body["items"] = list(items)
        answer = self._json("POST", "/v1/eligibility/batch", body=body, retry_unavailable=True)
        if not isinstance(answer, dict):
            raise ProtocolError("a batch answer must be a JSON object")
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(body["items"]):
            raise ProtocolError(
                f"asked {len(body['items'])} checks, got "
                f"{len(results) if isinstance(results, list) else 'no'} results"
            )
        return answer

    def filter(
        self,
        records: Iterable[R],
        *,
        subject_key: KeyOrGetter = "subject_id",
        category_key: KeyOrGetter = "category",
        category: str | None = None,
        purpose: str | None = None,
        batch_size: int = 10_000,
        as_of: int | None = None,
        at: str | None = None,
        at_least_as_fresh: int | None = None,
        on_invalid: str = "raise",
    ) -> FilterResult[R]:
        """The eligible records, in order, checked in batches at one tree size and time.

        `records` is any iterable (a generator over a file is fine): at most
        `batch_size` records are held at a time. Each record's subject id and
        category come from `subject_key` / `category_key` (a mapping key or a
        function of the record); `category` instead applies one category to all.
        The first batch fixes the tree size and time (unless `as_of`/`at` are
        given); every later batch is asked at exactly those, so the result is
        reproducible. A record the server cannot check (bad subject id, unknown
        category) raises `InvalidRecord`, or with ``on_invalid="drop"`` is
        dropped and counted under ``dropped["invalid"]``.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if on_invalid not in ("raise", "drop"):
            raise ValueError("on_invalid must be 'raise' or 'drop'")
        subject_of = _getter(subject_key)
        category_of = (lambda _: category) if category is not None else _getter(category_key)
        result: FilterResult[R] = FilterResult(iter(()))
        result._records = self._filter(
            iter(records),
            result,
            subject_of,
            category_of,
            purpose=purpose,
            batch_size=batch_size,
            as_of=as_of,
            at=at,
            at_least_as_fresh=at_least_as_fresh,
            drop_invalid=on_invalid == "drop",
        )
        return result

    def _filter(
        self,
        records: Iterator[R],
        result: FilterResult[R],
        subject_of: Callable[[Any], Any],
        category_of: Callable[[Any], Any],
        *,
        purpose: str | None,
        batch_size: int,
        as_of: int | None,
        at: str | None,
        at_least_as_fresh: int | None,
        drop_invalid: bool,
    ) -> Iterator[R]:
        position = 0  # of the first record of the batch, in the whole input
        while True:
            batch = list(itertools.islice(records, batch_size))
            if not batch:
                return
            items = [
                {"subject_id": subject_of(record), "category": category_of(record)}
                for record in batch
            ]
            answer = self.check_batch(
                items,
                purpose=purpose,
                as_of=as_of,
                at=at,
                at_least_as_fresh=at_least_as_fresh if result.batches == 0 else None,
            )
            if result.batches == 0:
                self._pin(result, answer)
                as_of, at = result.checked_at, result.at
            elif (answer.get("checked_at"), answer.get("at")) != (as_of, at):
                raise ProtocolError(
                    f"batch {result.batches} was evaluated at tree size "
                    f"{answer.get('checked_at')} and time {answer.get('at')}, "
                    f"not {as_of} and {at} as asked"
                )
            result.batches += 1
            outcomes = answer["results"]
            del items, answer
            for offset, (record, outcome) in enumerate(zip(batch, outcomes, strict=True)):
                if not isinstance(outcome, dict):
                    raise ProtocolError(f"result for record {position + offset} is not an object")
                error = outcome.get("error")
                if error is not None:
                    if not drop_invalid:
                        error = error if isinstance(error, dict) else {}
                        raise InvalidRecord(
                            position + offset,
                            error.get("field"),
                            str(error.get("message", "invalid")),
                        )
                    result.dropped["invalid"] += 1
                elif outcome.get("eligible") is True:
                    result.kept += 1
                    yield record
                else:
                    result.dropped[str(outcome.get("reason"))] += 1
            position += len(batch)

    def _pin(self, result: FilterResult[Any], answer: dict[str, Any]) -> None:
        checked_at, at = answer.get("checked_at"), answer.get("at")
        if not isinstance(checked_at, int) or not isinstance(at, str):
            raise ProtocolError("batch answer lacks checked_at and at")
        note = answer.get("checkpoint")
        if not isinstance(note, str):
            raise ProtocolError("batch answer lacks the checkpoint")
        checkpoint = self.trust.verify(note)
        if checkpoint.size < checked_at:
            raise VerificationError(
                f"the batch was checked at tree size {checked_at} but its checkpoint "
                f"covers only {checkpoint.size}",
                subject=f"checkpoint {checkpoint.size}",
            )
        result.checked_at, result.at = checked_at, at
        result.policy_version = answer.get("policy_version")
        result.checkpoint, result.checkpoint_note = checkpoint, note
        self.last_checked_at = checked_at

    # --- writes ----------------------------------------------------------------------------

    def register(
        self, subject_id: str, jurisdiction: str | None = None, minor: bool = False
    ) -> Receipt:
        """Register a subject or update its attributes; the receipt is verified."""
        response = self._request(
            "PUT",
            self._subject_path(subject_id),
            body={"jurisdiction": jurisdiction, "minor": minor},
            resend=True,
        )
        document = self._decode(response)
        receipt = self._receipt(document, response.status_code)
        if receipt.bundle is not None:
            _check_registration(receipt.bundle, jurisdiction, minor, document)
        return receipt

    def record(
        self,
        subject_id: str,
        decisions: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> Receipt:
        """Record decisions (all or none) for a registered subject; the receipt is verified.

        Each decision is ``{"category", "decision", "purpose"?, "explicit"?,
        "method"?, "notice"?, "effective"?, "expires"?}``. An Idempotency-Key is
        generated when none is given, so that a retry after a lost answer
        appends nothing twice.
        """
        asked = [dict(decision) for decision in decisions]
        key = idempotency_key or f"clc-{uuid.uuid4()}"
        response = self._request(
            "POST",
            self._subject_path(subject_id) + "/consents",
            body={"decisions": asked},
            headers={"Idempotency-Key": key},
            resend=True,
        )
        document = self._decode(response)
        receipt = self._receipt(document, response.status_code)
        if receipt.bundle is None:
            raise VerificationError("a write of decisions came back without a receipt")
        _check_decisions(receipt.bundle, asked, document)
        return receipt

    def erase(self, subject_id: str) -> Receipt:
        """Erase a subject (GDPR Art. 17; needs the `admin` scope); the receipt is verified."""
        response = self._request("DELETE", self._subject_path(subject_id), resend=True)
        document = self._decode(response)
        receipt = self._receipt(document, response.status_code)
        if receipt.bundle is None or [e.get("kind") for e in receipt.entries] != ["subject.erased"]:
            raise VerificationError(
                "the erasure receipt does not hold one subject.erased entry", document=document
            )
        return receipt

    # --- reading evidence ---------------------------------------------------------------------

    def history(self, subject_id: str) -> VerifiedBundle:
        """Every entry about a subject (`read` scope), as a verified evidence bundle."""
        document = self._json("GET", self._subject_path(subject_id) + "/history")
        bundle = self.verify_bundle(document)
        refs = {entry.get("data", {}).get("subject") for entry in bundle.entries}
        if len(refs) > 1:
            raise VerificationError(
                "the history mixes entries of several subjects", document=document
            )
        return bundle

    def checkpoint(self) -> Checkpoint:
        """The ledger's latest checkpoint (`audit` scope), verified and made the trusted one."""
        response = self._request("GET", "/v1/ledger/checkpoint")
        return self.trust.verify(response.text)

    def verify_bundle(self, document: Any) -> VerifiedBundle:
        """Verify an evidence bundle (a receipt, a history, a stored one).

        Checks the checkpoint's signature by a trusted key, every inclusion
        proof, and (with `verify_consistency`) that the checkpoint is consistent
        with the trusted one. Raises `VerificationError`.
        """
        try:
            bundle = EvidenceBundle.from_json(document)
        except InvalidInput as exc:
            raise VerificationError(
                f"not an evidence bundle: {exc}", subject="bundle", document=document
            ) from exc
        try:
            checkpoint = verify_bundle(bundle, self.keys)
        except (InvalidInput, KernelVerificationError) as exc:
            subject = getattr(exc, "subject", None) or getattr(exc, "field", None)
            message = str(exc.args[0]) if exc.args else str(exc)
            if subject == "checkpoint":
                # Name the key the server claims, so that a key rotation is obvious.
                try:
                    self.trust.open(bundle.checkpoint, claimed_key=bundle.verifier_key)
                except VerificationError as detailed:
                    message = str(detailed.args[0])
            raise VerificationError(message, subject=subject, document=document) from exc
        if checkpoint.origin not in self.trust.origins:
            raise VerificationError(
                f"checkpoint is for log {checkpoint.origin!r}", document=document
            )
        try:
            self.trust.accept(checkpoint, bundle.checkpoint)
        except VerificationError as exc:
            exc.document = document
            raise
        return VerifiedBundle(
            checkpoint=checkpoint,
            entries=tuple(item.entry for item in bundle.entries),
            document=document,
        )

    # --- plumbing ------------------------------------------------------------------------------

    def _receipt(self, document: Any, status: int) -> Receipt:
        if not isinstance(document, dict) or not isinstance(document.get("token"), int):
            raise ProtocolError("a write answer must be an object with an integer token")
        raw = document.get("receipt")
        if raw is None:
            return Receipt(token=document["token"], bundle=None, status=status)
        try:
            bundle = self.verify_bundle(raw)
        except (VerificationError, ApiError) as exc:
            # The write happened; whoever handles the error may want what came back.
            exc.document = document
            raise
        if bundle.checkpoint.size != document["token"]:
            raise VerificationError(
                f"the receipt proves into tree size {bundle.checkpoint.size}, "
                f"but the token says {document['token']}",
                document=document,
            )
        return Receipt(token=document["token"], bundle=bundle, status=status)

    def _consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        try:
            document = self._json(
                "GET",
                "/v1/ledger/proofs/consistency",
                params={"old_size": old_size, "new_size": new_size},
            )
        except ApiError as exc:
            if exc.status == 403:
                raise MissingScope(
                    403,
                    "verifying a newer checkpoint needs a consistency proof, and this API "
                    "key lacks the `audit` scope: use a key with `audit`, or pass "
                    "verify_consistency=False to check signatures only",
                    title=exc.title,
                    problem=exc.problem,
                    method=exc.method,
                    url=exc.url,
                ) from exc
            if exc.status in (400, 404, 409, 422):
                raise VerificationError(
                    f"the server cannot prove that tree size {new_size} extends tree size "
                    f"{old_size} ({exc.detail}): fork or rollback",
                    subject=f"checkpoint {new_size}",
                ) from exc
            raise
        hashes = document.get("hashes") if isinstance(document, dict) else None
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            raise VerificationError("the consistency proof is not a list of base64 hashes")
        try:
            return [unb64(node, field="consistency proof") for node in hashes]
        except InvalidInput as exc:
            raise VerificationError(str(exc), subject="consistency proof") from exc

    def _subject_path(self, subject_id: str) -> str:
        if not isinstance(subject_id, str) or not subject_id:
            raise ValueError("subject_id must be a non-empty string")
        # Dots too: an unescaped "." or ".." segment would be resolved away by URL
        # normalisation and the request would reach a different resource.
        return "/v1/subjects/" + quote(subject_id, safe="").replace(".", "%2E")

    def _json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        retry_unavailable: bool = False,
    ) -> Any:
        response = self._request(
            method, path, body=body, params=params, retry_unavailable=retry_unavailable
        )
        return self._decode(response)

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(
                f"{response.request.method} {response.request.url} answered "
                f"{response.status_code} with a body that is not JSON"
            ) from exc

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        retry_unavailable: bool = False,
        resend: bool = False,
    ) -> httpx.Response:
        """Send, retrying only where that is safe, and turn HTTP errors into `ApiError`.

        `retry_unavailable`: a read that got 503 + Retry-After is retried.
        `resend`: a write without an answer (connection lost) is sent again; it
        is idempotent (PUT, DELETE, or an Idempotency-Key).
        """
        url = self.base_url + path
        all_headers = dict(self._headers)
        content = None
        if body is not None:
            content = orjson.dumps(body)
            all_headers["Content-Type"] = "application/json"
        if headers:
            all_headers.update(headers)
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method,
                    url,
                    content=content,
                    params=dict(params) if params else None,
                    headers=all_headers,
                )
            except httpx.TransportError as exc:
                if resend and attempt < self.retries:
                    attempt += 1
                    time.sleep(min(0.2 * 2**attempt, 2.0))
                    continue
                raise TransportError(f"{method} {url}: {exc}") from exc
            if response.status_code < 400:
                return response
            error = _api_error(response)
            if (
                retry_unavailable
                and response.status_code == 503
                and error.retry_after is not None
                and attempt < self.retries
            ):
                attempt += 1
                time.sleep(min(error.retry_after, MAX_RETRY_AFTER))
                continue
            raise error


def _parse_keys(
    keys: str | VerifierKey | Sequence[str | VerifierKey],
) -> list[VerifierKey]:
    items: Sequence[str | VerifierKey] = [keys] if isinstance(keys, str | VerifierKey) else keys
    parsed = []
    for item in items:
        if isinstance(item, VerifierKey):
            parsed.append(item)
            continue
        try:
            parsed.append(VerifierKey.parse(item.strip()))
        except InvalidInput as exc:
            raise ValueError(f"not a verifier key: {exc}") from None
    if not parsed:
        raise ValueError("at least one verifier key is needed")
    return parsed


def _without_none(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _api_error(response: httpx.Response) -> ApiError:
    problem: dict[str, Any] = {}
    try:
        parsed = orjson.loads(response.content)
        if isinstance(parsed, dict):
            problem = parsed
    except orjson.JSONDecodeError:
        pass
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = response.text.strip()[:500] or response.reason_phrase
    errors = problem.get("errors")
    retry_after = None
    header = response.headers.get("Retry-After")
    if header is not None:
        try:
            retry_after = max(0.0, float(header))
        except ValueError:
            retry_after = 1.0
    cls = MissingScope if response.status_code == 403 else ApiError
    return cls(
        response.status_code,
        detail,
        title=problem.get("title") if isinstance(problem.get("title"), str) else None,
        errors=errors if isinstance(errors, list) else None,
        problem=problem,
        retry_after=retry_after,
        method=response.request.method,
        url=str(response.request.url),
    )


def _check_decisions(
    bundle: VerifiedBundle, decisions: list[dict[str, Any]], document: Any
) -> None:
    """The receipt's entries must be exactly the decisions asked for, in order."""
    entries = bundle.entries
    if len(entries) != len(decisions):
        raise VerificationError(
            f"asked to record {len(decisions)} decisions, the receipt holds {len(entries)} entries",
            document=document,
        )
    refs = set()
    for position, (entry, asked) in enumerate(zip(entries, decisions, strict=True)):
        data = entry.get("data", {})
        expected = {
            "category": asked.get("category"),
            "purpose": asked.get("purpose") or DEFAULT_PURPOSE,
            "decision": asked.get("decision"),
            "explicit": bool(asked.get("explicit", False)),
        }
        for name in ("method", "notice"):
            if asked.get(name) is not None:
                expected[name] = asked[name]
        got = {name: data.get(name) for name in expected}
        if entry.get("kind") != "consent.recorded" or got != expected:
            raise VerificationError(
                f"receipt entry {entry.get('seq')} ({entry.get('kind')}: {got}) is not "
                f"decision {position} as asked ({expected})",
                subject=f"entry {entry.get('seq')}",
                document=document,
            )
        refs.add(data.get("subject"))
    if len(refs) != 1:
        raise VerificationError("the receipt's decisions are about several subjects")


def _check_registration(
    bundle: VerifiedBundle, jurisdiction: str | None, minor: bool, document: Any
) -> None:
    """The receipt's entry must register or update the subject to the attributes asked for."""
    wanted = {
        "jurisdiction": jurisdiction.strip().upper() if jurisdiction else None,
        "minor": minor,
    }
    entries = bundle.entries
    if len(entries) != 1:
        raise VerificationError(
            f"a registration receipt holds one entry, not {len(entries)}", document=document
        )
    entry = entries[0]
    data = entry.get("data", {})
    fields: tuple[str, ...] = ()
    if entry.get("kind") == "subject.registered":
        fields = ("jurisdiction", "minor")
    elif entry.get("kind") == "subject.updated":
        fields = tuple(name for name in ("jurisdiction", "minor") if name in data)
    if not fields or any(data.get(name) != wanted[name] for name in fields):
        raise VerificationError(
            f"receipt entry {entry.get('seq')} ({entry.get('kind')}) does not set {wanted}",
            subject=f"entry {entry.get('seq')}",
            document=document,
        )
