"""`ConsentLedgerClient`: eligibility checks, dataset filtering and verified writes over HTTP."""

from __future__ import annotations

import http.client
import itertools
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

import httpx
import orjson

from consent_ledger_client._kernel.errors import InvalidInput
from consent_ledger_client._kernel.errors import VerificationError as KernelVerificationError
from consent_ledger_client._kernel.tlog.evidence import EvidenceBundle, verify_bundle
from consent_ledger_client._kernel.tlog.notes import Checkpoint, VerifierKey, unb64
from consent_ledger_client.changes import (
    DEFAULT_IDLE_TIMEOUT,
    ChangeFeed,
    VerifiedChanges,
    verify_changes,
)
from consent_ledger_client.datasets import (
    BuildRecording,
    MemberProof,
    PurgeResult,
    RecordedBuild,
    check_purged,
    check_recorded,
    item_line,
    member_proof,
)
from consent_ledger_client.duplex import DuplexExchange, Exchange, HttpxExchange
from consent_ledger_client.errors import (
    ApiError,
    InvalidRecord,
    MissingScope,
    ProtocolError,
    TransportError,
    VerificationError,
)
from consent_ledger_client.trust import TrustedLog, parse_verifier_keys

__all__ = ["ConsentLedgerClient", "FilterResult", "Receipt", "VerifiedBundle"]

R = TypeVar("R")
KeyOrGetter = str | Callable[[Any], Any]

DEFAULT_PURPOSE = "ai-training"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
MAX_RETRY_AFTER = 10.0
# Build items sent and not yet answered, at most: more than the ledger reads before it
# answers (it answers a chunk of a few thousand at a time), few enough to hold in memory.
BUILD_WINDOW = 50_000


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
    A filter that records a build (`record=`) sets these from the build once the
    last record has been answered, and `recorded` to the build and its receipt.
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
    recorded: RecordedBuild | None = None

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
        # Builds stream over a connection of their own unless the HTTP layer is injected.
        self._streams_directly = http is None and transport is None
        self._stream_timeout = timeout.read if isinstance(timeout, httpx.Timeout) else timeout
        self.retries = retries
        self.keys = parse_verifier_keys(verifier_key)
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
        on_invalid: str | None = None,
        record: str | None = None,
        record_key: KeyOrGetter = "record_id",
    ) -> FilterResult[R]:
        """The eligible records, in order, checked in batches at one tree size and time.

        `records` is any iterable (a generator over a file is fine): at most
        `batch_size` records are held at a time. Each record's subject id and
        category come from `subject_key` / `category_key` (a mapping key or a
        function of the record); `category` instead applies one category to all.
        The first batch fixes the tree size and time (unless `as_of`/`at` are
        given); every later batch is asked at exactly those, so the result is
        reproducible. A record the server cannot check (bad subject id, unknown
        category) raises `InvalidRecord` (``on_invalid="raise"``, the default),
        or with ``on_invalid="drop"`` is dropped and counted under
        ``dropped["invalid"]``.

        `record="NAME@VERSION"` records the eligible records as that dataset
        build while filtering (SPEC §7.1, `record` scope): the records stream
        through `record_build` instead of batches, each one's id taken from
        `record_key`, and `recorded` holds the verified build once the last
        record is out. The ledger records a build without the records it could
        not check, so those are always dropped then (``on_invalid="raise"`` is
        refused). See `record_build` for what stopping early records.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if on_invalid not in (None, "raise", "drop"):
            raise ValueError("on_invalid must be 'raise' or 'drop'")
        if record is not None and on_invalid == "raise":
            raise ValueError(
                "a recorded build leaves out the records the ledger cannot check and records "
                "the others: it cannot stop at one; use on_invalid='drop' (the default with record)"
            )
        subject_of = _getter(subject_key)
        category_of = (lambda _: category) if category is not None else _getter(category_key)
        result: FilterResult[R] = FilterResult(iter(()))
        if record is not None:
            dataset, version = _parse_build(record)
            result._records = self._filter_recording(
                iter(records),
                result,
                subject_of,
                category_of,
                _getter(record_key),
                dataset,
                version,
                purpose=purpose,
                as_of=as_of,
                at=at,
                at_least_as_fresh=at_least_as_fresh,
            )
            return result
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

    def _filter_recording(
        self,
        records: Iterator[R],
        result: FilterResult[R],
        subject_of: Callable[[Any], Any],
        category_of: Callable[[Any], Any],
        record_of: Callable[[Any], Any],
        dataset: str,
        version: str,
        *,
        purpose: str | None,
        as_of: int | None,
        at: str | None,
        at_least_as_fresh: int | None,
    ) -> Iterator[R]:
        recording = BuildRecording(dataset, version, iter(()))
        items = (
            (
                {
                    "record_id": record_of(record),
                    "subject_id": subject_of(record),
                    "category": category_of(record),
                },
                record,
            )
            for record in records
        )
        answers = self._record(
            recording,
            items,
            purpose=purpose,
            as_of=as_of,
            at=at,
            at_least_as_fresh=at_least_as_fresh,
            window=BUILD_WINDOW,
        )
        for answer, record in answers:
            if "error" in answer:
                result.dropped["invalid"] += 1
            elif answer.get("eligible") is True:
                result.kept += 1
                yield record
            else:
                result.dropped[str(answer.get("reason"))] += 1
        recorded = recording.recorded
        assert recorded is not None
        result.recorded = recorded
        result.checked_at, result.at = recorded.build["checked_at"], recorded.build["at"]
        result.policy_version = recorded.build.get("policy_version")
        result.checkpoint = recorded.checkpoint
        result.checkpoint_note = recorded.receipt.document.get("checkpoint")
        self.last_checked_at = result.checked_at

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

    # --- the change feed (SPEC §8) -----------------------------------------------------------

    def changes(
        self,
        after: int = 0,
        *,
        follow: bool = True,
        stream: bool = True,
        limit: int | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_retries: int | None = None,
        retry_delay: float = 0.25,
        max_retry_delay: float = 30.0,
    ) -> ChangeFeed:
        """The log's events after cursor `after` (a tree size), verified (`feed` scope).

        An iterator of `ChangeEvent`s (see `ChangeFeed`): with `follow` it never
        ends, waiting for new events on the NDJSON stream (or, with
        ``stream=False``, by long-polling pages); without, it stops at the head.
        Every batch is verified (checkpoint signature and consistency, each
        event's canonical bytes, one range proof for all) before any of its events
        is handed over; `feed.cursor` is where to resume after a restart. A dropped
        connection is retried from that cursor; `max_retries` (None: for ever)
        bounds the failures in a row.
        """
        return ChangeFeed(
            self,
            after,
            follow=follow,
            stream=stream,
            limit=limit,
            idle_timeout=idle_timeout,
            max_retries=max_retries if max_retries is not None or follow else self.retries,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
        )

    def verify_changes(self, document: Any, *, after: int | None = None) -> VerifiedChanges:
        """Verify a page of changes or a webhook delivery's `data` against this client's
        trust store (signature and consistency); see `verify_changes`."""
        return verify_changes(document, self.trust, after=after)

    # --- datasets (SPEC §7) ------------------------------------------------------------------

    def record_build(
        self,
        dataset: str,
        version: str | int,
        items: Iterable[Mapping[str, Any] | tuple[Any, Any, Any]],
        *,
        purpose: str | None = None,
        as_of: int | None = None,
        at: str | None = None,
        at_least_as_fresh: int | None = None,
    ) -> BuildRecording:
        """Record a dataset build (`record` scope): every item is checked at one tree
        size and time, the eligible ones become the build's members.

        `items` is any iterable of mappings ``{"record_id", "subject_id",
        "category", "purpose"?}`` (other keys are not sent) or tuples
        ``(record_id, subject_id, category)``; a generator over a file is fine:
        items stream out as they are read and the answers stream back, in
        constant memory. Iterate the returned `BuildRecording` for each item's
        answer; once it is exhausted its `recorded` holds the build and its
        receipt, verified (signature, inclusion, and that its `dataset.recorded`
        entry names this build, its purpose and exactly the members answered
        eligible). ``record_build(...).finish()`` skips to that.

        Nothing is recorded when the build fails after its answer began (its
        last line is ``{"error": problem}``, raised as `ApiError`), nor when the
        items raise (that exception comes out of the iteration as it was) or the
        connection is lost before the ledger has read the last item. Once the
        ledger has read them all, it records the build whether or not the
        answer is read to its end.
        """
        dataset, version = _build_name(dataset, version)
        recording = BuildRecording(dataset, version, iter(()))
        answers = self._record(
            recording,
            ((item, None) for item in items),
            purpose=purpose,
            as_of=as_of,
            at=at,
            at_least_as_fresh=at_least_as_fresh,
            window=BUILD_WINDOW,
        )
        recording._answers = (answer for answer, _ in answers)
        return recording

    def _record(
        self,
        recording: BuildRecording,
        items: Iterator[tuple[object, R]],
        *,
        purpose: str | None,
        as_of: int | None,
        at: str | None,
        at_least_as_fresh: int | None,
        window: int,
    ) -> Iterator[tuple[dict[str, Any], R]]:
        """Stream `items` to the build endpoint; yield each answer with the item's payload."""
        # The items sent and not yet answered, oldest first: the n-th answer is the n-th item's.
        in_flight: deque[tuple[str | None, R]] = deque()
        # What the items raised, if they did: that, not what it did to the exchange, is
        # the caller's error (an in-process app even answers it with a 500 last line).
        stopped: list[Exception] = []

        def lines() -> Iterator[bytes]:
            try:
                for position, (item, payload) in enumerate(items):
                    line, record_id = item_line(item, position)
                    in_flight.append((record_id, payload))
                    yield line
            except Exception as exc:
                stopped.append(exc)
                raise _ItemsFailed(exc) from exc

        path = _build_path(recording.dataset, recording.version)
        params = _without_none(
            purpose=purpose, as_of=as_of, at=at, at_least_as_fresh=at_least_as_fresh
        )
        url = self.base_url + path + (f"?{urlencode(params)}" if params else "")
        final: dict[str, Any] | None = None
        exchange: Exchange | None = None
        try:
            exchange = self._open_stream(url, lines(), window)
            if stopped:
                raise _ItemsFailed(stopped[0])
            if exchange.status_code >= 400:
                raise _api_error_of(
                    _json_object(exchange.read()),
                    exchange.status_code,
                    retry_after=exchange.header("Retry-After"),
                    method="POST",
                    url=url,
                )
            last_line: int | None = None
            for raw in exchange.lines():
                if not raw.strip():
                    continue
                answer = _ndjson(raw, url)
                if final is not None:
                    raise ProtocolError(
                        f"POST {url}: the answer goes on after the build's last line"
                    )
                if "line" not in answer:
                    if "build" not in answer and "error" not in answer:
                        raise ProtocolError(
                            f"POST {url}: not a line of a build's answer: {raw[:200]!r}"
                        )
                    final = answer
                    continue
                number = answer["line"]
                if not isinstance(number, int) or (last_line is not None and number <= last_line):
                    raise ProtocolError(
                        f"POST {url}: answer line {number!r} is out of order (after {last_line})"
                    )
                last_line = number
                if not in_flight:
                    raise ProtocolError(f"POST {url}: more answers than items sent")
                record_id, payload = in_flight.popleft()
                exchange.answered()
                if "error" not in answer and answer.get("record_id") != record_id:
                    raise ProtocolError(
                        f"POST {url}: answer {number} is about record "
                        f"{answer.get('record_id')!r}, but item {recording.answered} is "
                        f"{record_id!r}"
                    )
                recording.count(answer)
                yield answer, payload
            if stopped:
                raise _ItemsFailed(stopped[0])
            if final is None:
                exchange.sent()  # raises what stopped the items, if something did
                raise ProtocolError(
                    f"POST {url}: the answer ended before the build's last line; whether "
                    f"{recording.dataset}@{recording.version} was recorded is unknown: ask the "
                    "ledger for it"
                )
            problem = final.get("error")
            if problem is not None:
                raise _api_error_of(
                    problem if isinstance(problem, dict) else {"detail": str(problem)},
                    None,
                    method="POST",
                    url=url,
                )
            sent = exchange.sent()
            if recording.answered != sent:
                raise ProtocolError(f"POST {url}: {sent} items sent, {recording.answered} answered")
        except _ItemsFailed as failed:
            raise failed.error from None
        except (OSError, http.client.HTTPException, httpx.TransportError) as exc:
            if stopped:
                raise stopped[0] from None
            raise TransportError(f"POST {url}: {exc}") from exc
        finally:
            if exchange is not None:
                exchange.close()
        recording.recorded = self._recorded(final, recording, purpose=purpose, as_of=as_of)

    def _recorded(
        self,
        final: dict[str, Any],
        recording: BuildRecording,
        *,
        purpose: str | None,
        as_of: int | None,
    ) -> RecordedBuild:
        try:
            bundle = self.verify_bundle(final.get("receipt"))
        except (VerificationError, ApiError) as exc:
            exc.document = final  # the build was recorded; here is what came back
            raise
        build = check_recorded(
            final,
            bundle,
            dataset=recording.dataset,
            version=recording.version,
            purpose=purpose or DEFAULT_PURPOSE,
            members=recording.members,
            as_of=as_of,
        )
        return RecordedBuild(build=build, receipt=bundle, document=final)

    def _open_stream(self, url: str, body: Iterator[bytes], window: int) -> Exchange:
        headers = {
            **self._headers,
            "Content-Type": "application/x-ndjson",
            "Accept": "application/x-ndjson, application/problem+json",
        }
        if self._streams_directly:
            return DuplexExchange(url, headers, body, timeout=self._stream_timeout, window=window)
        return HttpxExchange(self._http, url, headers, body)

    def obligations(
        self, dataset: str, *, version: str | int | None = None, status: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """A dataset's purge obligations (`read` scope), oldest first, page after page.

        Each is ``{"dataset","version","record_id","reason","cause","cause_time",
        "due","status","closed_by","closed_time"}``; `status` is one of open,
        overdue, fulfilled, cancelled. While the ledger is still working out a
        policy change's obligations it answers 503 + Retry-After: retried
        `retries` times, then raised as `ApiError`.
        """
        dataset, _ = _build_name(dataset, "0")
        path = f"/v1/datasets/{_segment(dataset)}/obligations"
        after: Any = None
        while True:
            params = _without_none(
                version=None if version is None else str(version), status=status, after=after
            )
            page = self._json("GET", path, params=params, retry_unavailable=True)
            listed = page.get("obligations") if isinstance(page, dict) else None
            if not isinstance(listed, list) or not all(isinstance(o, dict) for o in listed):
                raise ProtocolError(f"GET {path}: an obligations page must hold `obligations`")
            yield from listed
            cursor = page.get("next")
            if cursor is None:
                return
            if cursor == after:
                raise ProtocolError(f"GET {path}: the page after {after!r} points to itself")
            after = cursor

    def purge(self, dataset: str, version: str | int, record_ids: Iterable[str]) -> PurgeResult:
        """Purge records from a build (`record` scope); the receipt is verified.

        Each record that has an open obligation fulfils it; the others are
        voluntary removals. The receipt's `dataset.purged` entry must name this
        build and the `purged_root` of exactly these record ids. Records that
        are not members (or were purged already) make the ledger refuse the
        whole purge (`ApiError` 422 naming them): nothing is purged then.
        """
        dataset, version = _build_name(dataset, version)
        ids = [str(r) if isinstance(r, int) and not isinstance(r, bool) else r for r in record_ids]
        if not ids or not all(isinstance(r, str) for r in ids):
            raise ValueError("give at least one record id, each a string")
        response = self._request(
            "POST", _build_path(dataset, version) + "/purges", body={"record_ids": ids}
        )
        document = self._decode(response)
        if not isinstance(document, dict):
            raise ProtocolError("a purge's answer must be a JSON object")
        try:
            bundle = self.verify_bundle(document.get("receipt"))
        except (VerificationError, ApiError) as exc:
            exc.document = document  # the purge happened; here is what came back
            raise
        return check_purged(document, bundle, dataset=dataset, version=version, record_ids=ids)

    def member_proof(self, dataset: str, version: str | int, record_id: str) -> MemberProof:
        """Prove that a record is a member of a build (`read` scope), verified.

        The proof's entry bundle is verified like any receipt (and, with
        `verify_consistency`, against the trusted checkpoint), then the
        member's leaf against the `members_root` it signs. Keep `document`:
        `verify_member_proof(document, verifier_key)` checks it offline.
        """
        dataset, version = _build_name(dataset, version)
        path = f"{_build_path(dataset, version)}/members/{_segment(record_id)}/proof"
        document = self._json("GET", path)
        entry = document.get("entry") if isinstance(document, dict) else None
        bundle = self.verify_bundle(entry)
        return member_proof(document, bundle, dataset=dataset, version=version, record_id=record_id)

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
        return "/v1/subjects/" + _segment(subject_id)

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


def _without_none(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


class _ItemsFailed(Exception):
    """The caller's build items raised while being sent: re-raised as they were, not as a
    transport error."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def _segment(value: str) -> str:
    """A path segment holding `value`, whatever its characters."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"a path segment must be a non-empty string, not {value!r}")
    # Dots too: an unescaped "." or ".." segment would be resolved away by URL
    # normalisation and the request would reach a different resource.
    return quote(value, safe="").replace(".", "%2E")


def _build_name(dataset: str, version: str | int) -> tuple[str, str]:
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(dataset, str) or not dataset or not isinstance(version, str) or not version:
        raise ValueError(f"a build is a dataset name and a version, not {dataset!r}@{version!r}")
    return dataset, version


def _parse_build(text: str) -> tuple[str, str]:
    """`posts-train@2` → ("posts-train", "2")."""
    dataset, at, version = text.partition("@")
    if not at:
        raise ValueError(f"record must be NAME@VERSION, not {text!r}")
    return _build_name(dataset, version)


def _build_path(dataset: str, version: str) -> str:
    return f"/v1/datasets/{_segment(dataset)}/versions/{_segment(version)}"


def _ndjson(raw: bytes, url: str) -> dict[str, Any]:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"POST {url}: an answer line is not JSON: {raw[:200]!r}") from exc
    if not isinstance(line, dict):
        raise ProtocolError(f"POST {url}: an answer line is not an object: {raw[:200]!r}")
    return line


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _api_error(response: httpx.Response) -> ApiError:
    return _api_error_of(
        _json_object(response.content),
        response.status_code,
        fallback=response.text.strip()[:500] or response.reason_phrase,
        retry_after=response.headers.get("Retry-After"),
        method=response.request.method,
        url=str(response.request.url),
    )


def _api_error_of(
    problem: dict[str, Any],
    status: int | None,
    *,
    fallback: str | None = None,
    retry_after: str | None = None,
    method: str,
    url: str,
) -> ApiError:
    """The error of an RFC 9457 problem: an HTTP answer's, or the last line of a stream
    (`status` None: the problem's own, the answer's status was a success)."""
    if status is None:
        claimed = problem.get("status")
        status = claimed if isinstance(claimed, int) and not isinstance(claimed, bool) else 500
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = fallback or str(problem.get("title") or f"HTTP {status}")
    errors = problem.get("errors")
    seconds = None
    if retry_after is not None:
        try:
            seconds = max(0.0, float(retry_after))
        except ValueError:
            seconds = 1.0
    cls = MissingScope if status == 403 else ApiError
    return cls(
        status,
        detail,
        title=problem.get("title") if isinstance(problem.get("title"), str) else None,
        errors=errors if isinstance(errors, list) else None,
        problem=problem,
        retry_after=seconds,
        method=method,
        url=url,
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
