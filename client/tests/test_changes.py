"""The change feed (SPEC §8) against a real ledger's recorded pages, offline.

`data/changes.json` holds the pages a real ledger's `GET /v1/changes` sends
(`record_ledger.py`): after every cursor, two entries at a time and to the head,
and one filtered by kind. `verify_changes` checks them with the verifier key
alone; `FeedServer` plays them back as JSON pages and as the NDJSON stream (each
batch of events closed by its proof), cut short where a test asks.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from consent_ledger_client import (
    ApiError,
    ChangeEvent,
    ConsentLedgerClient,
    ProtocolError,
    TransportError,
    TrustedLog,
    VerificationError,
    verify_changes,
)
from consent_ledger_client._kernel.tlog.notes import VerifierKey

RECORDED: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent / "data" / "changes.json").read_text(encoding="utf-8")
)
KEY = RECORDED["verifier_key"]
SIZE: int = RECORDED["tree_size"]
PAGES: dict[str, dict[str, Any]] = RECORDED["pages"]
FILTERED: dict[str, Any] = RECORDED["filtered"]["page"]
BASE_URL = "http://ledger.test"


def page(after: int, limit: int = 2) -> dict[str, Any]:
    return copy.deepcopy(PAGES[f"{after}/{limit}"])


def flip(text: str, position: int = 0) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[position] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


class FeedServer(httpx.BaseTransport):
    """Answers `GET /v1/changes` from the recorded pages: JSON pages, or the NDJSON
    stream of batches of two (then a heartbeat, then the end). `cuts` cut the first
    streams short at those bytes: with an error, or (`clean`) as a plain end."""

    def __init__(self, cuts: Sequence[int] = (), *, clean: bool = False) -> None:
        self.cuts = list(cuts)
        self.clean = clean
        self.asked: list[int] = []
        self.queries: list[dict[str, str]] = []
        self.streams = 0
        self.edit: Callable[[dict[str, Any]], None] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/changes":
            return httpx.Response(404, json={"status": 404, "detail": "not recorded"})
        after = int(request.url.params["after"])
        limit = int(request.url.params.get("limit", 1000))
        self.asked.append(after)
        self.queries.append(dict(request.url.params))
        if after > SIZE:
            problem = {"status": 422, "title": "Unprocessable", "detail": "cursor beyond the log"}
            return httpx.Response(422, json=problem)
        if "ndjson" not in request.headers["accept"]:
            document = page(after, limit)
            if self.edit is not None:
                self.edit(document)
            return httpx.Response(200, json=document)
        self.streams += 1
        body = self.stream(after)
        if not self.cuts:
            return httpx.Response(
                200, headers={"content-type": "application/x-ndjson"}, content=body
            )
        cut = self.cuts.pop(0)
        return httpx.Response(
            200,
            headers={"content-type": "application/x-ndjson"},
            stream=Cut(body[:cut], clean=self.clean),
        )

    def stream(self, after: int) -> bytes:
        lines = []
        while after < SIZE:
            batch = page(after)
            for event in batch.pop("events"):
                lines.append(event)
            lines.append(batch)
            after = batch["next"]
        lines.append({"next": after})  # a heartbeat
        if self.edit is not None:
            for line in lines:
                self.edit(line)
        return b"".join(orjson.dumps(line) + b"\n" for line in lines)


class Cut(httpx.SyncByteStream):
    def __init__(self, body: bytes, *, clean: bool) -> None:
        self.body = body
        self.clean = clean

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        if not self.clean:
            raise httpx.ReadError("connection reset (test)")


def client(server: FeedServer, **options: Any) -> ConsentLedgerClient:
    # Every recorded page carries the same checkpoint (the head's): no consistency proof.
    return ConsentLedgerClient(BASE_URL, "recorded-api-key", KEY, transport=server, **options)


def follow_until(feed: Iterator[ChangeEvent], last: int) -> list[int]:
    seqs = []
    for event in feed:
        seqs.append(event.seq)
        if event.seq >= last:
            break
    return seqs


# --- verify_changes ------------------------------------------------------------------------


@pytest.mark.parametrize("after", range(SIZE + 1))
@pytest.mark.parametrize("limit", [2, 1000])
def test_every_recorded_page_verifies(after: int, limit: int) -> None:
    document = page(after, limit)
    verified = verify_changes(document, KEY, after=after)
    assert [event.seq for event in verified.events] == list(range(after, verified.next))
    assert verified.next == min(after + limit, SIZE)
    assert verified.tree_size == SIZE


def test_events_are_their_entries_with_what_they_changed() -> None:
    events = verify_changes(page(0, 1000), VerifierKey.parse(KEY)).events
    withdrawal = next(e for e in events if e.data.get("decision") == "withdrawn")
    assert withdrawal.kind == "consent.recorded"
    assert withdrawal.subject_id == "us-1"
    assert withdrawal.subject == withdrawal.data["subject"]
    assert withdrawal.effect
    assert {item["eligible"] for item in withdrawal.effect} == {False}
    assert withdrawal.obligations, "us-1's post was in posts-train@1"
    assert withdrawal.entry["data"] == withdrawal.data
    assert withdrawal.cursor == withdrawal.seq + 1
    erasure = next(e for e in events if e.kind == "subject.erased")
    assert erasure.subject_id is None
    assert erasure.subject is not None


def test_a_filtered_page_proves_each_event() -> None:
    verified = verify_changes(copy.deepcopy(FILTERED), KEY, after=0)
    kinds = set(RECORDED["filtered"]["kinds"])
    assert verified.events
    assert {event.kind for event in verified.events} <= kinds
    assert verified.next == SIZE
    every = verify_changes(page(0, 1000), KEY).events
    assert [e.seq for e in verified.events] == [e.seq for e in every if e.kind in kinds]


def _event(document: dict[str, Any], name: str, value: Any) -> None:
    next(e for e in document["events"] if name in e)[name] = value


TAMPERING: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("a shown field", lambda d: _event(d, "decision", "refused"), "shows decision 'refused'"),
    ("an extra field", lambda d: d["events"][0].update(forged="x"), "shows forged 'x'"),
    ("a shown seq", lambda d: d["events"][1].update(seq=0), "shows seq 0"),
    ("a shown kind", lambda d: d["events"][0].update(kind="subject.erased"), "shows kind"),
    ("the subject", lambda d: _event(d, "subject", "s_forged"), "shows subject 's_forged'"),
    (
        "canonical bytes",
        lambda d: d["events"][0].update(canonical=flip(d["events"][0]["canonical"], 3)),
        "not proven into checkpoint",  # `actor` changed: the fields agree, the proof does not
    ),
    ("a dropped event", lambda d: d["events"].pop(1), r"every entry in \["),
    ("bytes not canonical", lambda d: d["events"][0].update(canonical="eyJhIjogMX0="), "canonical"),
    ("a proof hash", lambda d: d.update(proof=[flip(d["proof"][0]), *d["proof"][1:]]), "proven"),
    ("a missing proof", lambda d: d.update(proof=[]), "not proven into checkpoint"),
    ("the tree size", lambda d: d.update(tree_size=d["tree_size"] - 1), "says tree size"),
    ("the cursor", lambda d: d.update(next=d["next"] + 1), r"ends at cursor \d+, outside"),
    ("the checkpoint", lambda d: d.update(checkpoint=d["checkpoint"][:-6] + "AAAAA\n"), "check"),
]


@pytest.mark.parametrize(
    ("edit", "message"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING]
)
def test_a_tampered_page_is_refused(edit: Callable[[dict[str, Any]], Any], message: str) -> None:
    document = page(4, 1000)
    edit(document)
    with pytest.raises(VerificationError, match=message):
        verify_changes(document, KEY)


def _flip_inclusion(document: dict[str, Any]) -> None:
    event = document["events"][-1]
    event["inclusion"] = [flip(event["inclusion"][0]), *event["inclusion"][1:]]


FILTERED_TAMPERING: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("an inclusion proof", _flip_inclusion, "not proven into checkpoint"),
    ("a missing proof", lambda d: d["events"][0].pop("inclusion"), "mixes events"),
    ("the order", lambda d: d["events"].reverse(), "out of order"),
    ("a range proof too", lambda d: d.update(proof=page(4, 1000)["proof"]), "no range proof"),
    ("the cursor", lambda d: d.update(next=d["events"][-1]["seq"]), "outside the page"),
]


@pytest.mark.parametrize(
    ("edit", "message"),
    [t[1:] for t in FILTERED_TAMPERING],
    ids=[t[0] for t in FILTERED_TAMPERING],
)
def test_a_tampered_filtered_page_is_refused(
    edit: Callable[[dict[str, Any]], Any], message: str
) -> None:
    document = copy.deepcopy(FILTERED)
    edit(document)
    with pytest.raises(VerificationError, match=message):
        verify_changes(document, KEY)


def test_a_page_that_starts_elsewhere_than_asked_is_refused() -> None:
    with pytest.raises(VerificationError, match=r"every entry in \[3, "):
        verify_changes(page(4), KEY, after=3)


def test_a_checkpoint_of_another_history_is_a_fork(tmp_path: Path) -> None:
    store = tmp_path / "ledger.checkpoint"
    store.write_text(RECORDED["forged_checkpoint"], encoding="utf-8")
    trust = TrustedLog([VerifierKey.parse(KEY)], store=store, fetch_proof=lambda old, new: [])
    with pytest.raises(VerificationError, match="two different roots"):
        verify_changes(page(0), trust)


@pytest.mark.parametrize("document", [[], {"events": "x"}, {"events": [], "next": -1}])
def test_what_is_not_a_page_is_a_protocol_error(document: Any) -> None:
    with pytest.raises(ProtocolError):
        verify_changes(document, KEY)


# --- the client's feed ---------------------------------------------------------------------


def test_pages_to_the_head() -> None:
    server = FeedServer()
    with client(server) as ledger:
        feed = ledger.changes(after=1, follow=False, limit=2)
        seqs = [event.seq for event in feed]
    assert seqs == list(range(1, SIZE))
    assert server.asked == list(range(1, SIZE, 2))
    assert feed.cursor == SIZE
    assert feed.checkpoint is not None
    assert feed.checkpoint.size == SIZE


def test_the_stream_hands_over_every_event_once() -> None:
    server = FeedServer()
    with client(server) as ledger:
        feed = ledger.changes()
        assert follow_until(feed, SIZE - 1) == list(range(SIZE))
        assert feed.cursor == SIZE
        assert feed.reconnects == 0


def _cut_points() -> list[int]:
    """Cut in the first event, between two events of a batch, in a batch's end line, and
    right after it: every kind of place a connection can drop."""
    body = FeedServer().stream(0)
    lines = body.split(b"\n")
    ends = [sum(len(line) + 1 for line in lines[: n + 1]) for n in range(len(lines))]
    return [20, ends[0], ends[1] + 30, ends[2], ends[5] - 1]


@pytest.mark.parametrize("clean", [False, True], ids=["reset", "ended"])
@pytest.mark.parametrize("cut", _cut_points())
def test_a_dropped_stream_resumes_from_the_last_event_handed_over(cut: int, clean: bool) -> None:
    server = FeedServer([cut, cut], clean=clean)
    with client(server) as ledger:
        feed = ledger.changes(retry_delay=0)
        assert follow_until(feed, SIZE - 1) == list(range(SIZE))
    assert feed.reconnects == 2
    assert server.streams == 3


def test_a_dead_server_gives_up_after_max_retries() -> None:
    server = FeedServer([0] * 10)
    delays: list[float] = []
    with client(server) as ledger:
        feed = ledger.changes(max_retries=3, retry_delay=1.0)
        feed._sleep = delays.append
        with pytest.raises(TransportError, match="after 0"):
            next(feed)
    assert server.streams == 4
    # Exponential backoff with jitter: 1, 2, 4 s, each made up to half shorter.
    assert [0.5 <= delay / 2**n <= 1.0 for n, delay in enumerate(delays)] == [True] * 3


def test_a_tampered_batch_in_the_stream_hands_over_nothing_of_it() -> None:
    server = FeedServer()
    withdrawal = next(e["seq"] for e in page(0, 1000)["events"] if e.get("decision") == "withdrawn")

    def edit(line: dict[str, Any]) -> None:
        if line.get("seq") == withdrawal:
            line["decision"] = "granted"

    server.edit = edit
    handed: list[int] = []
    with client(server) as ledger:
        feed = ledger.changes()
        with pytest.raises(VerificationError, match="shows decision 'granted'"):
            handed.extend(event.seq for event in feed)
    assert handed == list(range(withdrawal - withdrawal % 2))


def test_a_cursor_beyond_the_log_is_not_retried() -> None:
    server = FeedServer()
    with client(server) as ledger:
        with pytest.raises(ApiError, match="beyond the log"):
            next(ledger.changes(after=SIZE + 1))
    assert server.asked == [SIZE + 1]


def test_a_client_verifies_a_page_with_its_trust_store(tmp_path: Path) -> None:
    store = tmp_path / "ledger.checkpoint"
    with client(FeedServer(), trust_store=store) as ledger:
        verified = ledger.verify_changes(page(2))
    assert [event.seq for event in verified.events] == [2, 3]
    assert store.read_text(encoding="utf-8") == verified.checkpoint_note


def test_a_long_poll_waits_less_than_the_client_s_read_timeout() -> None:
    server = FeedServer()
    with client(server, timeout=4.0) as ledger:
        feed = ledger.changes(after=SIZE - 1, stream=False)
        assert next(feed).seq == SIZE - 1
    assert server.queries == [{"after": str(SIZE - 1), "wait": "2.0"}]
