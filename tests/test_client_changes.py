"""The client's change feed (`client.changes`, SPEC §8) against the real API, on SQLite and
PostgreSQL.

Pages go through FastAPI's `TestClient`; the NDJSON stream, which never ends, through
uvicorn on a socket. Dropped connections and tampering are simulated with httpx
transports wrapped around the real ones.
"""

from __future__ import annotations

import base64
import hashlib
import queue
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from api.app import create_app
from consent_ledger_client import (
    ApiError,
    ChangeEvent,
    ConsentLedgerClient,
    MissingScope,
    VerificationError,
    verify_changes,
)
from ledger.consent.decisions import DecisionRequest
from ledger.service import ConsentLedger
from ledger.service.clients import create_client
from ledger.service.keys import SigningKey
from ledger.settings import Settings
from ledger.tlog.notes import Checkpoint, sign_checkpoint

BASE = "http://testserver"
SCOPES = ["feed", "audit", "record", "read", "admin"]
CHANGES = "/v1/changes"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def api_key(ledger: ConsentLedger) -> str:
    _, key = create_client(ledger.engine, "follower", SCOPES)
    return key


@pytest.fixture
def http(ledger: ConsentLedger) -> Iterator[TestClient]:
    with TestClient(create_app(ledger=ledger), base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def make_client(
    ledger: ConsentLedger, http: TestClient, api_key: str
) -> Callable[..., ConsentLedgerClient]:
    """A client of the app in-process (pages only: a stream through TestClient never ends)."""

    def make(**options: Any) -> ConsentLedgerClient:
        options.setdefault("verifier_key", ledger.verifier_key())
        key = options.pop("api_key", api_key)
        if "transport" not in options:
            options.setdefault("http", http)
        return ConsentLedgerClient(BASE, key, **options)

    return make


@pytest.fixture
def server_url(ledger: ConsentLedger) -> Iterator[str]:
    """The app under uvicorn on a free port, for the NDJSON stream."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(ledger=ledger), port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def history(ledger: ConsentLedger) -> int:
    """A few subjects, decisions, a withdrawal and an erasure; the tree size after them."""
    for subject_id, jurisdiction in (("user-1", "US"), ("user-2", "DE"), ("user-3", "FR")):
        ledger.register_subject(subject_id, jurisdiction=jurisdiction, actor="test")
    ledger.record_consents(
        "user-2", [DecisionRequest(category="content.public", decision="granted")], actor="test"
    )
    ledger.record_consents(
        "user-1", [DecisionRequest(category="*", decision="withdrawn")], actor="test"
    )
    ledger.erase_subject("user-3", actor="test")
    return ledger.tree_size()


def withdraw(ledger: ConsentLedger, subject_id: str) -> int:
    sealed = ledger.record_consents(
        subject_id, [DecisionRequest(category="*", decision="withdrawn")], actor="elsewhere"
    )
    return sealed.tree_size


def flip(text: str, position: int = 0) -> str:
    """Base64 of the same bytes with one bit flipped at `position`."""
    raw = bytearray(base64.b64decode(text))
    raw[position] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


class Editing(httpx.BaseTransport):
    """Forwards to `inner`; `edit(document)` may change the first JSON page of changes it
    applies to (it says whether it did): `tampered` is then that page's cursor."""

    def __init__(self, inner: httpx.BaseTransport, edit: Callable[[dict[str, Any]], bool]) -> None:
        self.inner = inner
        self.edit = edit
        self.tampered: int | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path != CHANGES or response.status_code != 200:
            return response
        response.read()
        document = orjson.loads(response.content)
        if self.tampered is None and self.edit(document):
            self.tampered = int(request.url.params["after"])
        return httpx.Response(
            200,
            headers={"content-type": "application/json"},
            content=orjson.dumps(document),
            request=request,
        )


class CutStream(httpx.SyncByteStream):
    """The answer's bytes up to `cut`, then an error (or, `clean`, a plain end)."""

    def __init__(self, inner: httpx.Response, cut: int, *, clean: bool) -> None:
        self.inner = inner
        self.cut = cut
        self.clean = clean

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner.iter_raw():
            if sent + len(chunk) >= self.cut:
                yield chunk[: self.cut - sent]
                break
            sent += len(chunk)
            yield chunk
        self.inner.close()
        if not self.clean:
            raise httpx.ReadError("connection reset (test)")

    def close(self) -> None:
        self.inner.close()


class Cutting(httpx.BaseTransport):
    """A real HTTP transport whose first `cuts` streams of changes are cut short, each at
    the byte that `where(lines)` chooses once the answer has `lines` complete lines."""

    def __init__(self, cuts: list[int], *, clean: bool = False) -> None:
        self.inner = httpx.HTTPTransport()
        self.cuts = list(cuts)
        self.clean = clean
        self.streams = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path != CHANGES or "ndjson" not in request.headers.get("accept", ""):
            return response
        self.streams += 1
        if not self.cuts:
            return response
        cut = self.cuts.pop(0)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=CutStream(response, cut, clean=self.clean),
            request=request,
        )

    def close(self) -> None:
        self.inner.close()


class EditingStream(httpx.BaseTransport):
    """A real HTTP transport that rewrites the lines of streams of changes."""

    def __init__(self, edit: Callable[[dict[str, Any]], None]) -> None:
        self.inner = httpx.HTTPTransport()
        self.edit = edit

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path != CHANGES or "ndjson" not in request.headers.get("accept", ""):
            return response
        edit = self.edit

        class Lines(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                buffer = b""
                for chunk in response.iter_raw():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for raw in lines:
                        line = orjson.loads(raw)
                        edit(line)
                        yield orjson.dumps(line) + b"\n"

            def close(self) -> None:
                response.close()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Lines(), request=request
        )

    def close(self) -> None:
        self.inner.close()


def follow_until(
    feed: Iterator[ChangeEvent], last: int, events: list[ChangeEvent] | None = None
) -> list[ChangeEvent]:
    """The events of a followed feed up to seq `last` (into `events`), then stop following."""
    events = [] if events is None else events
    for event in feed:
        events.append(event)
        if event.seq >= last:
            break
    return events


# --- pages ---------------------------------------------------------------------------------


def test_pages_to_the_head_are_every_entry_verified(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient]
) -> None:
    size = history(ledger)
    with make_client() as client:
        feed = client.changes(follow=False)
        events = list(feed)
    assert [event.seq for event in events] == list(range(size))
    assert feed.cursor == size
    assert feed.checkpoint is not None
    assert feed.checkpoint.size == size
    assert client.trusted_checkpoint == feed.checkpoint
    withdrawal = next(e for e in events if e.data.get("decision") == "withdrawn")
    assert withdrawal.kind == "consent.recorded"
    assert withdrawal.subject_id == "user-1"
    assert withdrawal.subject == withdrawal.data["subject"]
    assert withdrawal.effect, "a withdrawal of everything changes some answers"
    assert all(item["eligible"] is False for item in withdrawal.effect)
    erased = next(e for e in events if e.kind == "subject.erased")
    assert erased.subject_id is None
    assert withdrawal.entry["seq"] == withdrawal.seq
    assert withdrawal.raw["canonical"] == base64.b64encode(withdrawal.canonical).decode()


def test_pages_resume_from_a_cursor_a_few_at_a_time(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], http: TestClient
) -> None:
    size = history(ledger)
    asked: list[str] = []

    def hook(request: httpx.Request) -> None:
        if request.url.path == CHANGES:
            asked.append(request.url.params["after"])

    http.event_hooks = {"request": [hook], "response": []}
    with make_client() as client:
        events = list(client.changes(after=3, follow=False, limit=2))
    assert [event.seq for event in events] == list(range(3, size))
    assert [int(after) for after in asked] == list(range(3, size, 2))


def test_an_empty_page_at_the_head_ends_the_feed(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient]
) -> None:
    size = history(ledger)
    with make_client() as client:
        feed = client.changes(after=size, follow=False)
        assert list(feed) == []
        assert feed.cursor == size


def test_a_cursor_beyond_the_log_is_refused(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient]
) -> None:
    size = history(ledger)
    with make_client() as client, pytest.raises(ApiError) as raised:
        list(client.changes(after=size + 1, follow=False))
    assert raised.value.status == 422


def test_the_feed_needs_its_scope(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient]
) -> None:
    _, key = create_client(ledger.engine, "reader", ["read", "audit"])
    with make_client(api_key=key) as client, pytest.raises(MissingScope):
        list(client.changes(follow=False))


def _set_decision(document: dict[str, Any]) -> bool:
    for event in document["events"]:
        if event.get("decision") == "withdrawn":
            event["decision"] = "granted"
            return True
    return False


def _swap_canonical(document: dict[str, Any]) -> bool:
    first, second = document["events"][1], document["events"][2]
    first["canonical"], second["canonical"] = second["canonical"], first["canonical"]
    return True


def _drop_event(document: dict[str, Any]) -> bool:
    del document["events"][1]
    return True


def _flip_proof(document: dict[str, Any]) -> bool:
    document["proof"][0] = flip(document["proof"][0])
    return True


def _shorten_proof(document: dict[str, Any]) -> bool:
    document["proof"].pop()
    return True


def _claim_another_size(document: dict[str, Any]) -> bool:
    document["tree_size"] += 1
    return True


def _flip_canonical(document: dict[str, Any]) -> bool:
    event = document["events"][-1]
    canonical = base64.b64decode(event["canonical"]).replace(b'"time":"', b'"time":"1', 1)
    event["canonical"] = base64.b64encode(canonical).decode()
    return True


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set_decision, r"shows decision 'granted', its canonical bytes say 'withdrawn'"),
        (_swap_canonical, r"shows seq \d+, its canonical bytes say \d+"),
        (_drop_event, r"must hold every entry in \[\d+, \d+\) in order"),
        (_flip_proof, r"not proven into checkpoint"),
        (_shorten_proof, r"not proven into checkpoint"),
        (_claim_another_size, r"says tree size \d+, its checkpoint is of size"),
        (_flip_canonical, r"shows time"),
    ],
)
def test_a_tampered_page_raises_and_hands_nothing_of_it_over(
    ledger: ConsentLedger,
    make_client: Callable[..., ConsentLedgerClient],
    http: TestClient,
    edit: Callable[[dict[str, Any]], bool],
    message: str,
) -> None:
    history(ledger)
    handed: list[ChangeEvent] = []
    editing = Editing(http._transport, edit)
    with make_client(transport=editing) as client:
        with pytest.raises(VerificationError, match=message):
            # Pages of 3: each has a proof (the subtrees right of it, at least).
            handed.extend(client.changes(follow=False, limit=3))
    assert editing.tampered is not None
    assert [event.seq for event in handed] == list(range(editing.tampered))


def test_a_checkpoint_of_another_key_is_refused(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], http: TestClient
) -> None:
    history(ledger)
    impostor = SigningKey.generate(ledger.verifier_key().split("+")[0])  # the same name

    def resign(document: dict[str, Any]) -> bool:
        body = document["checkpoint"].split("\n\n")[0] + "\n"
        document["checkpoint"] = sign_checkpoint(Checkpoint.parse_body(body), [impostor])
        return True

    with make_client(transport=Editing(http._transport, resign)) as client:
        with pytest.raises(VerificationError, match="checkpoint"):
            list(client.changes(follow=False))


@pytest.mark.parametrize("after", [0, 3, 4])
def test_a_forked_log_is_refused(
    ledger: ConsentLedger,
    make_client: Callable[..., ConsentLedgerClient],
    tmp_path: Any,
    after: int,
) -> None:
    """The client trusted a checkpoint of another history signed by the ledger's own key:
    the feed's checkpoint is not an extension of it, whether the page starts before, at
    (where its range proof shows the prefix) or after the trusted size."""
    history(ledger)
    store = tmp_path / "ledger.checkpoint"
    origin = ledger.checkpoint().split("\n")[0]
    forged = Checkpoint(origin, 3, hashlib.sha256(b"another history").digest())
    store.write_text(sign_checkpoint(forged, [ledger.signing_key()]), encoding="utf-8")
    with make_client(trust_store=store) as client:
        with pytest.raises(VerificationError, match="fork or rollback"):
            list(client.changes(after=after, follow=False))


def test_following_needs_no_consistency_proof_from_batch_to_batch(
    ledger: ConsentLedger, server_url: str, api_key: str
) -> None:
    """Each batch starts where the last one's checkpoint ended: its range proof shows that
    the new checkpoint extends the trusted one, so the client fetches no other proof."""
    size = history(ledger)
    proofs: list[str] = []

    def count(request: httpx.Request) -> None:
        if request.url.path == "/v1/ledger/proofs/consistency":
            proofs.append(str(request.url.params))

    with ConsentLedgerClient(server_url, api_key, ledger.verifier_key()) as client:
        client._http.event_hooks = {"request": [count], "response": []}
        feed = client.changes()
        assert len(follow_until(feed, size - 1)) == size
        trusted = []
        for n in range(3):
            withdraw(ledger, "user-2")
            trusted.append(next(feed).seq)
            assert client.trusted_checkpoint is not None
            assert client.trusted_checkpoint.size == size + n + 1
        feed.close()
    assert trusted == [size, size + 1, size + 2]
    assert proofs == []


def test_a_page_is_verified_offline(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], http: TestClient
) -> None:
    size = history(ledger)
    _, key = create_client(ledger.engine, "offline", ["feed"])
    page = http.get(
        CHANGES, params={"after": 2, "limit": 3}, headers={"Authorization": f"Bearer {key}"}
    ).json()
    verified = verify_changes(page, ledger.verifier_key(), after=2)
    assert [event.seq for event in verified.events] == [2, 3, 4]
    assert verified.next == 5
    assert verified.tree_size == size


# --- following the stream ------------------------------------------------------------------


def test_follow_hears_another_writer_within_a_second(
    ledger: ConsentLedger, settings: Settings, server_url: str, api_key: str
) -> None:
    size = history(ledger)
    received: queue.Queue[tuple[float, ChangeEvent]] = queue.Queue()
    elsewhere = ConsentLedger(settings)  # another writer on the same database
    try:

        def follow() -> None:
            with ConsentLedgerClient(server_url, api_key, ledger.verifier_key()) as client:
                for event in client.changes():
                    received.put((time.monotonic(), event))
                    if event.seq >= size:
                        return

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        caught_up = [received.get(timeout=20)[1].seq for _ in range(size)]
        assert caught_up == list(range(size))
        time.sleep(0.5)  # idle: the server is waiting for the log to grow
        assert withdraw(elsewhere, "user-2") == size + 1
        written = time.monotonic()  # committed
        arrived, event = received.get(timeout=10)
        thread.join(timeout=10)
    finally:
        elsewhere.close()
    assert event.seq == size
    assert event.subject_id == "user-2"
    assert {"category": "content.public", "purpose": "ai-training"} in [
        {"category": item["category"], "purpose": item["purpose"]} for item in event.effect
    ]
    assert arrived - written < 1.0, f"the event came {arrived - written:.2f} s after its write"


@pytest.mark.parametrize("clean", [False, True], ids=["reset", "ended"])
@pytest.mark.parametrize("cut", [60, 400, 1500])
def test_a_dropped_stream_resumes_from_the_last_event_handed_over(
    ledger: ConsentLedger, server_url: str, api_key: str, cut: int, clean: bool
) -> None:
    """Cut mid-line, mid-batch and between batches: every event arrives exactly once."""
    size = history(ledger)
    transport = Cutting([cut, cut * 2], clean=clean)
    with ConsentLedgerClient(
        server_url, api_key, ledger.verifier_key(), transport=transport
    ) as client:
        feed = client.changes(limit=2, retry_delay=0.01)
        events = follow_until(feed, size - 1)
        feed.close()
    assert [event.seq for event in events] == list(range(size))
    assert feed.reconnects == 2
    assert transport.streams == 3


def test_a_tampered_stream_raises_and_hands_over_nothing_of_its_batch(
    ledger: ConsentLedger, server_url: str, api_key: str
) -> None:
    size = history(ledger)

    def edit(line: dict[str, Any]) -> None:
        if line.get("decision") == "withdrawn":
            line["decision"] = "granted"

    handed: list[ChangeEvent] = []
    with ConsentLedgerClient(
        server_url, api_key, ledger.verifier_key(), transport=EditingStream(edit)
    ) as client:
        feed = client.changes(limit=1)
        with pytest.raises(VerificationError, match="shows decision 'granted'"):
            follow_until(feed, size - 1, handed)
    withdrawal = next(
        e["seq"] for e in ledger.changes(0, size).events if e.get("decision") == "withdrawn"
    )
    assert [event.seq for event in handed] == list(range(withdrawal))


def test_follow_by_long_polling_pages(
    ledger: ConsentLedger, settings: Settings, server_url: str, api_key: str
) -> None:
    size = history(ledger)
    received: queue.Queue[ChangeEvent] = queue.Queue()

    def follow() -> None:
        with ConsentLedgerClient(server_url, api_key, ledger.verifier_key()) as client:
            for event in client.changes(after=size, stream=False):
                received.put(event)
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.3)
    withdraw(ledger, "user-2")
    assert received.get(timeout=10).seq == size
    thread.join(timeout=10)


class Follower:
    """Follows the feed in a thread, from `after`, putting each event (and when it came)
    on `received`, until it has handed over seq `last`."""

    def __init__(self, url: str, key: str, verifier_key: str, after: int, **options: Any):
        self.received: queue.Queue[tuple[float, ChangeEvent]] = queue.Queue()
        self.client = ConsentLedgerClient(url, key, verifier_key)
        self.feed = self.client.changes(after=after, **options)
        self.last = after
        self.thread = threading.Thread(target=self._run, daemon=True)

    def until(self, last: int) -> Follower:
        self.last = last
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for event in self.feed:
                self.received.put((time.monotonic(), event))
                if event.seq >= self.last:
                    return
        finally:
            self.feed.close()
            self.client.close()

    def next(self, timeout: float = 10) -> ChangeEvent:
        return self.received.get(timeout=timeout)[1]


def test_heartbeats_keep_an_idle_stream_open(
    ledger: ConsentLedger, server_url: str, api_key: str
) -> None:
    size = history(ledger)
    ledger.settings.feed_heartbeat_seconds = 0.2
    follower = Follower(server_url, api_key, ledger.verifier_key(), size, idle_timeout=1.0)
    follower.until(size)
    time.sleep(2.5)  # idle for longer than `idle_timeout`, with a heartbeat every 0.2 s
    withdraw(ledger, "user-2")
    assert follower.next().seq == size
    follower.thread.join(timeout=10)
    assert follower.feed.reconnects == 0
    assert follower.feed.cursor == size + 1


def test_a_silent_stream_is_given_up_and_followed_again(
    ledger: ConsentLedger, server_url: str, api_key: str
) -> None:
    """No heartbeat for longer than `idle_timeout`: the connection is taken for dead and
    opened again from the cursor, and what comes meanwhile is handed over once."""
    size = history(ledger)
    ledger.settings.feed_heartbeat_seconds = 15.0
    follower = Follower(
        server_url, api_key, ledger.verifier_key(), size - 2, idle_timeout=0.5, retry_delay=0.01
    )
    follower.until(size + 1)
    assert [follower.next().seq for _ in range(2)] == [size - 2, size - 1]
    time.sleep(1.5)
    withdraw(ledger, "user-2")
    withdraw(ledger, "user-1")
    assert [follower.next().seq for _ in range(2)] == [size, size + 1]
    follower.thread.join(timeout=10)
    assert follower.feed.reconnects >= 2
    assert follower.received.empty()
