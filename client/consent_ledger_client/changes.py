"""The change feed (SPEC §8) for a platform: the log's events after a cursor, each one
verified against the signed log before it is handed over.

A page of `GET /v1/changes`, a batch of its NDJSON stream and a webhook delivery all
carry the same proof: a signed checkpoint and, for a contiguous run of events, one
range proof of all of them into its root (`merkle.verify_range`); for events filtered
by kind (a webhook endpoint subscribed to some kinds), one RFC 9162 inclusion proof
each. `verify_changes` checks one such document; `ChangeFeed` (made by
`ConsentLedgerClient.changes`) follows the feed and resumes after a dropped
connection from the last event it handed over.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeGuard

import httpx
import orjson

from consent_ledger_client._kernel.errors import InvalidInput
from consent_ledger_client._kernel.errors import VerificationError as KernelVerificationError
from consent_ledger_client._kernel.tlog import merkle
from consent_ledger_client._kernel.tlog.canonical import parse_canonical
from consent_ledger_client._kernel.tlog.notes import Checkpoint, VerifierKey, unb64
from consent_ledger_client.errors import ApiError, ProtocolError, TransportError, VerificationError
from consent_ledger_client.trust import TrustedLog, parse_verifier_keys

if TYPE_CHECKING:
    from consent_ledger_client.core import ConsentLedgerClient

__all__ = ["ChangeEvent", "ChangeFeed", "VerifiedChanges", "verify_changes"]

CHANGES_PATH: Final = "/v1/changes"
NDJSON: Final = "application/x-ndjson"
# What an event says beside its entry's data. A data field of one of these names would
# be shown as `data.<name>` (no kind has one today).
EVENT_FIELDS: Final = frozenset(
    {
        "seq",
        "kind",
        "time",
        "canonical",
        "subject_id",
        "subject",
        "effect",
        "obligations",
        "inclusion",
    }
)
# The kinds whose `data.subject` is the subject reference the event shows as `subject`.
SUBJECT_KINDS: Final = frozenset(
    {"subject.registered", "subject.updated", "subject.erased", "consent.recorded"}
)
# The server sends a heartbeat at least every 15 s while idle: three missed ones mean
# the connection is dead even if no error says so.
DEFAULT_IDLE_TIMEOUT: Final = 45.0
# Answers worth asking again: a proxy or a server restarting, not a refusal.
_RETRYABLE_STATUS: Final = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One verified event of the feed: an entry of the log and what it changed.

    `seq`, `kind`, `time` and `data` come from the entry's canonical bytes
    (`canonical`), which were proven into a signed checkpoint. `subject_id` (None
    once the subject is erased, or for kinds about no subject), `effect` (the
    (category, purpose) pairs whose answer the entry changed, with the new answer)
    and `obligations` (the dataset builds in which it opened purge obligations) are
    the ledger's derived state: the server's word, not covered by the proof.
    `raw` is the event as the server sent it.
    """

    seq: int
    kind: str
    time: str
    subject_id: str | None
    subject: str | None
    data: dict[str, Any]
    effect: tuple[dict[str, Any], ...]
    obligations: tuple[dict[str, Any], ...]
    canonical: bytes = field(repr=False)
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def cursor(self) -> int:
        """The cursor to resume after this event: `changes(after=event.cursor)`."""
        return self.seq + 1

    @property
    def entry(self) -> dict[str, Any]:
        """The whole log entry (``v``, ``seq``, ``time``, ``kind``, ``actor``, ``data``)."""
        return parse_canonical(self.canonical)


@dataclass(frozen=True, slots=True)
class VerifiedChanges:
    """A page, stream batch or webhook delivery whose events have all been verified.

    `next` is the cursor after it; `checkpoint` the signed checkpoint the events
    were proven into (`checkpoint_note`, as the server sent it).
    """

    events: tuple[ChangeEvent, ...]
    next: int
    checkpoint: Checkpoint
    checkpoint_note: str = field(repr=False)

    @property
    def tree_size(self) -> int:
        return self.checkpoint.size


def verify_changes(
    document: Any,
    trust: TrustedLog | str | VerifierKey | Sequence[str | VerifierKey],
    *,
    after: int | None = None,
) -> VerifiedChanges:
    """Verify a page of `GET /v1/changes`, or the `data` of a webhook delivery, offline.

    `trust` is the ledger's verifier key (or several), or a `TrustedLog` (a
    client's `trust`, which also checks that the checkpoint is consistent with
    the one it trusted before). `after` is the cursor the page was asked for,
    when known (a delivery states its own `after`): the events must then start
    there.

    Two forms are accepted. A contiguous page (its events have no `inclusion`)
    holds every entry in [after, next) and a range `proof` of all of them. A
    page filtered by kind (each event carries its `inclusion` proof at
    `tree_size`, and `proof` is empty) proves each event it holds, but cannot
    prove that no event of the chosen kinds was left out.

    Raises `VerificationError` naming what failed, `ProtocolError` for a
    document that is not a page at all.
    """
    if not isinstance(trust, TrustedLog):
        trust = TrustedLog(parse_verifier_keys(trust))
    return _verify(document, trust, after=after, what="the page")


# --- verification ------------------------------------------------------------------------


def _verify(document: Any, trust: TrustedLog, *, after: int | None, what: str) -> VerifiedChanges:
    if not isinstance(document, Mapping):
        raise ProtocolError(f"{what} is not a JSON object")
    raw_events = document.get("events")
    if not isinstance(raw_events, list) or not all(isinstance(e, dict) for e in raw_events):
        raise ProtocolError(f"{what} has no list of `events`")
    cursor = document.get("next")
    if not _is_size(cursor):
        raise ProtocolError(f"{what} has no `next` cursor")
    note = document.get("checkpoint")
    if not isinstance(note, str):
        raise ProtocolError(f"{what} has no `checkpoint`")
    proof_text = document.get("proof", [])
    if not isinstance(proof_text, list) or not all(isinstance(h, str) for h in proof_text):
        raise ProtocolError(f"{what}: `proof` is not a list of base64 hashes")
    claimed_size = document.get("tree_size")
    if claimed_size is not None and not _is_size(claimed_size):
        raise ProtocolError(f"{what}: `tree_size` is not a tree size")
    # A webhook delivery says where its events start; a page is asked for from a cursor.
    stated = document.get("after")
    if stated is not None:
        if not _is_size(stated):
            raise ProtocolError(f"{what}: `after` is not a cursor")
        if after is not None and stated != after:
            raise VerificationError(
                f"{what} says it starts at {stated}, it was asked for from {after}",
                subject="after",
            )
        after = stated

    # 1. The checkpoint is signed by a trusted key.
    checkpoint = trust.open(note)
    if claimed_size is not None and claimed_size != checkpoint.size:
        raise VerificationError(
            f"{what} says tree size {claimed_size}, its checkpoint is of size {checkpoint.size}",
            subject=f"checkpoint {checkpoint.size}",
        )
    if cursor > checkpoint.size or (after is not None and cursor < after):
        raise VerificationError(
            f"{what} ends at cursor {cursor}, outside [{after or 0}, {checkpoint.size}] "
            "(its start and its checkpoint's tree size)",
            subject="next",
        )
    # 2. Every event says what its canonical bytes say.
    events = tuple(_event(raw, position, what) for position, raw in enumerate(raw_events))
    proof = [_hash(text, f"{what}: proof[{i}]") for i, text in enumerate(proof_text)]
    # 3. Every event is in the checkpoint's tree, at its seq.
    prefix = None
    carried = sum("inclusion" in raw for raw in raw_events)
    if carried:
        if carried != len(raw_events):
            raise VerificationError(
                f"{what} mixes events with and without their inclusion proof", subject="events"
            )
        if proof:
            raise VerificationError(
                f"{what}: a page of events with their own inclusion proofs has no range proof",
                subject="proof",
            )
        _prove_each(events, raw_events, after, cursor, checkpoint, what)
    else:
        prefix = _prove_range(events, proof, after, cursor, checkpoint, what)
    # 4. With a client's trust, the checkpoint is consistent with the one trusted before:
    #    this log extends the one seen so far. When the events start where the trusted
    #    checkpoint ends, their range proof has shown it already.
    trust.accept(checkpoint, note, prefix=prefix)
    return VerifiedChanges(events=events, next=cursor, checkpoint=checkpoint, checkpoint_note=note)


def _prove_range(
    events: tuple[ChangeEvent, ...],
    proof: list[bytes],
    after: int | None,
    cursor: int,
    checkpoint: Checkpoint,
    what: str,
) -> tuple[int, bytes] | None:
    """A contiguous page: events after, after+1, …, next-1, proven at once. Returns the
    size and root of the prefix before them, which the proof has shown to be in the tree."""
    start = cursor - len(events) if after is None else after
    expected = list(range(start, cursor))
    seqs = [event.seq for event in events]
    if seqs != expected:
        raise VerificationError(
            f"{what} must hold every entry in [{start}, {cursor}) in order, it holds {_span(seqs)}",
            subject="events",
        )
    if not events:
        if proof:
            raise VerificationError(f"{what} proves no event but has a proof", subject="proof")
        return None
    try:
        merkle.verify_range(
            start,
            [merkle.leaf_hash(event.canonical) for event in events],
            checkpoint.size,
            proof,
            checkpoint.root,
        )
    except (KernelVerificationError, InvalidInput) as exc:
        raise VerificationError(
            f"{what}: events {start}..{cursor - 1} are not proven into checkpoint "
            f"{checkpoint.size}: {exc}",
            subject="proof",
        ) from exc
    # The proof's first hashes are the subtrees left of the events: the prefix's root.
    return start, merkle.fold_root(proof[: len(merkle.root_node_keys(start))])


def _prove_each(
    events: tuple[ChangeEvent, ...],
    raw_events: list[dict[str, Any]],
    after: int | None,
    cursor: int,
    checkpoint: Checkpoint,
    what: str,
) -> None:
    """A filtered page: some events in [after, next), in order, each with its proof."""
    previous = (after if after is not None else 0) - 1
    for event, raw in zip(events, raw_events, strict=True):
        where = f"event {event.seq}"
        if not previous < event.seq < cursor:
            raise VerificationError(
                f"{what}: {where} is out of order or outside the page (before {cursor})",
                subject=where,
            )
        previous = event.seq
        proof_text = raw["inclusion"]
        if not isinstance(proof_text, list) or not all(isinstance(h, str) for h in proof_text):
            raise ProtocolError(f"{what}: {where}: `inclusion` is not a list of base64 hashes")
        proof = [_hash(text, f"{where}: inclusion[{i}]") for i, text in enumerate(proof_text)]
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(event.canonical),
                event.seq,
                checkpoint.size,
                proof,
                checkpoint.root,
            )
        except (KernelVerificationError, InvalidInput) as exc:
            raise VerificationError(
                f"{what}: {where} is not proven into checkpoint {checkpoint.size}: {exc}",
                subject=where,
            ) from exc


def _event(raw: dict[str, Any], position: int, what: str) -> ChangeEvent:
    """Check that an event's fields are its canonical bytes' (step 2)."""
    seq = raw.get("seq")
    where = f"event {seq}" if _is_size(seq) else f"{what}: events[{position}]"
    if not _is_size(seq):
        raise VerificationError("has no seq", subject=where)
    text = raw.get("canonical")
    if not isinstance(text, str):
        raise VerificationError("has no canonical bytes", subject=where)
    canonical = _bytes(text, where)
    try:
        entry = parse_canonical(canonical)
    except KernelVerificationError as exc:
        raise VerificationError(f"canonical bytes: {exc.args[0]}", subject=where) from exc
    for name in ("seq", "kind", "time"):
        if raw.get(name) != entry.get(name):
            raise VerificationError(
                f"shows {name} {raw.get(name)!r}, its canonical bytes say {entry.get(name)!r}",
                subject=where,
            )
    data = entry.get("data")
    if not isinstance(data, dict):
        raise VerificationError("canonical bytes hold no data object", subject=where)
    shown = {name: value for name, value in raw.items() if name not in EVENT_FIELDS}
    held = {
        (f"data.{name}" if name in EVENT_FIELDS else name): value
        for name, value in data.items()
        if name != "subject"
    }
    if shown != held:
        name = min(name for name in shown.keys() | held.keys() if shown.get(name) != held.get(name))
        raise VerificationError(
            f"shows {name} {shown.get(name)!r}, its canonical bytes say {held.get(name)!r}",
            subject=where,
        )
    # The subject reference: the data's, or none for a kind about no subject.
    subject = raw.get("subject")
    if (subject is not None or entry["kind"] in SUBJECT_KINDS) and subject != data.get("subject"):
        raise VerificationError(
            f"shows subject {subject!r}, its canonical bytes say {data.get('subject')!r}",
            subject=where,
        )
    subject_id = raw.get("subject_id")
    effect = raw.get("effect")
    obligations = raw.get("obligations")
    if subject_id is not None and not isinstance(subject_id, str):
        raise ProtocolError(f"{where}: subject_id is not a string")
    for name, value in (("effect", effect), ("obligations", obligations)):
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ProtocolError(f"{where}: `{name}` is not a list of objects")
    assert isinstance(effect, list)
    assert isinstance(obligations, list)
    return ChangeEvent(
        seq=seq,
        kind=entry["kind"],
        time=entry["time"],
        subject_id=subject_id,
        subject=subject,
        data=data,
        effect=tuple(effect),
        obligations=tuple(obligations),
        canonical=canonical,
        raw=raw,
    )


def _is_size(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bytes(text: str, where: str) -> bytes:
    try:
        return unb64(text, field="canonical")
    except InvalidInput as exc:
        raise VerificationError(str(exc), subject=where) from exc


def _hash(text: str, where: str) -> bytes:
    try:
        return unb64(text, field=where)
    except InvalidInput as exc:
        raise VerificationError(str(exc), subject="proof") from exc


def _span(seqs: list[int]) -> str:
    if not seqs:
        return "none"
    if seqs == list(range(seqs[0], seqs[-1] + 1)):
        return f"[{seqs[0]}, {seqs[-1] + 1})"
    return "seqs " + ", ".join(map(str, seqs[:10])) + (" …" if len(seqs) > 10 else "")


# --- following the feed ------------------------------------------------------------------


class _Dropped(Exception):
    """The stream ended before the end line of the batch it was sending."""


class ChangeFeed(Iterator[ChangeEvent]):
    """The feed's events after a cursor, verified a batch at a time; made by
    `ConsentLedgerClient.changes`.

    Each page (or, when following, each batch of the NDJSON stream) is held until
    its proof has arrived; its events are handed over only once the checkpoint's
    signature, its consistency with the client's trusted checkpoint, every
    event's canonical bytes and the range proof of all of them have been checked.
    Anything that fails raises `VerificationError`, and nothing of that batch is
    handed over.

    `cursor` is where the feed resumes: the seq after the last event handed over
    (or after the last empty page). Persist it with what you did with the events
    and pass it back as `changes(after=cursor)` after a restart. A dropped
    connection (a transport error, a stream cut short, a heartbeat overdue by
    `idle_timeout`, a 502/503/504) is retried from `cursor` with exponential
    backoff, so no event is handed over twice or skipped; `reconnects` counts
    the retries. After `max_retries` failures in a row it raises `TransportError`
    (or the `ApiError`); None retries forever. `checkpoint` is the last
    checkpoint verified.

    `follow=False` reads JSON pages up to the head and stops; `follow=True` reads
    the NDJSON stream, or with ``stream=False`` long-polls pages (`wait` seconds
    each), for proxies that hold streamed answers back. `limit` bounds the events
    of a page or batch (the server's default otherwise). An injected `http` that
    cannot stream (FastAPI's `TestClient` waits for the whole answer, and a
    stream never ends) needs ``follow=False`` or ``stream=False``.
    """

    def __init__(
        self,
        client: ConsentLedgerClient,
        after: int = 0,
        *,
        follow: bool = True,
        stream: bool = True,
        limit: int | None = None,
        wait: float = 30.0,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_retries: int | None = None,
        retry_delay: float = 0.25,
        max_retry_delay: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not _is_size(after):
            raise ValueError(f"the cursor must be a tree size (0 or more), not {after!r}")
        if limit is not None and (not isinstance(limit, int) or not 1 <= limit <= 10_000):
            raise ValueError(f"limit must be 1-10000, not {limit!r}")
        self.cursor = after
        self.checkpoint: Checkpoint | None = None
        self.reconnects = 0
        self.follow = follow
        self.stream = stream
        self.limit = limit
        # A long-poll must answer before the client's own read timeout gives up on it.
        read_timeout = client._stream_timeout
        self.wait = wait if read_timeout is None else min(wait, read_timeout / 2)
        self.idle_timeout = idle_timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._client = client
        self._sleep = sleep
        self._events = self._run()

    def __next__(self) -> ChangeEvent:
        return next(self._events)

    def close(self) -> None:
        """Stop following: the open connection, if any, is closed."""
        self._events.close()

    def __enter__(self) -> ChangeFeed:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self) -> Generator[ChangeEvent, None, None]:
        failures = 0
        while True:
            batches = self._stream() if self.follow and self.stream else self._pages()
            try:
                for batch in batches:
                    failures = 0
                    self.checkpoint = batch.checkpoint
                    for event in batch.events:
                        self.cursor = event.cursor
                        yield event
                    self.cursor = batch.next
                if not self.follow:
                    return
                # The server ended the stream (a restart, a limit): ask again from the cursor.
                problem: Exception = _Dropped("the stream ended")
            except (httpx.TransportError, _Dropped) as exc:
                problem = exc
            except ApiError as exc:
                if exc.status not in _RETRYABLE_STATUS:
                    raise
                problem = exc
            finally:
                batches.close()
            failures += 1
            if self.max_retries is not None and failures > self.max_retries:
                if isinstance(problem, ApiError):
                    raise problem
                raise TransportError(
                    f"GET {CHANGES_PATH} after {self.cursor}: {problem}"
                ) from problem
            self.reconnects += 1
            self._sleep(self._delay(failures, problem))

    def _delay(self, failures: int, problem: Exception) -> float:
        delay: float = min(self.retry_delay * 2.0 ** (failures - 1), self.max_retry_delay)
        # Jitter, so that the clients of a restarted server do not all come back at once.
        delay *= random.uniform(0.5, 1.0)
        if isinstance(problem, ApiError) and problem.retry_after is not None:
            delay = max(delay, min(problem.retry_after, self.max_retry_delay))
        return delay

    def _params(self, after: int) -> dict[str, Any]:
        params: dict[str, Any] = {"after": after}
        if self.limit is not None:
            params["limit"] = self.limit
        return params

    def _pages(self) -> Generator[VerifiedChanges, None, None]:
        """JSON pages: to the head (follow=False), or long-polled for ever."""
        client = self._client
        while True:
            after = self.cursor
            params = self._params(after)
            if self.follow:
                params["wait"] = self.wait
            document = client._json("GET", CHANGES_PATH, params=params)
            batch = _verify(document, client.trust, after=after, what=f"the page after {after}")
            yield batch
            if not self.follow and (not batch.events or batch.next >= batch.tree_size):
                return

    def _stream(self) -> Generator[VerifiedChanges, None, None]:
        """The NDJSON stream: batches of events, each closed by its proof; heartbeats."""
        from consent_ledger_client.core import _api_error  # core imports this module

        client = self._client
        url = client.base_url + CHANGES_PATH
        headers = {**client._headers, "Accept": f"{NDJSON}, application/problem+json"}
        timeout = httpx.Timeout(self.idle_timeout, connect=10.0)
        start = self.cursor
        with client._http.stream(
            "GET", url, params=self._params(start), headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise _api_error(response)
            media = response.headers.get("content-type", "").split(";")[0].strip()
            if media != NDJSON:
                raise ProtocolError(
                    f"GET {url} answered {media or 'no content type'}, not {NDJSON}"
                )
            pending: list[dict[str, Any]] = []
            for line in _lines(response):
                if "seq" in line:
                    pending.append(line)
                elif "checkpoint" in line:
                    what = f"the batch after {start}"
                    batch = _verify(
                        {**line, "events": pending}, client.trust, after=start, what=what
                    )
                    pending = []
                    start = batch.next
                    yield batch
                elif not _is_size(line.get("next")):
                    raise ProtocolError(f"GET {url}: not a line of the change feed: {line!r:.200}")
            raise _Dropped(
                f"the stream ended with {len(pending)} events of an unfinished batch"
                if pending
                else "the stream ended"
            )


def _lines(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The complete lines of an NDJSON answer, parsed; a last line cut short is a drop."""
    buffer = b""
    for chunk in response.iter_bytes():
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ProtocolError(
                    f"a line of the change feed is not JSON: {raw[:200]!r}"
                ) from exc
            if not isinstance(line, dict):
                raise ProtocolError(f"a change feed line is not an object: {raw[:200]!r}")
            yield line
    if buffer.strip():
        raise _Dropped(f"the stream was cut in the middle of a line ({len(buffer)} bytes)")
