"""The Python client's dataset calls (SPEC §7) against the real API, in-process, on
SQLite and PostgreSQL: recording builds (also through `filter(record=...)`), listing
obligations page by page, purging, and member proofs checked online and offline.

As in tests/test_client.py, the app runs behind FastAPI's `TestClient`, and a
tampering server is a small httpx transport around the app's. One test runs the
app under uvicorn on a socket, where a build streams both ways at once.
"""

from __future__ import annotations

import base64
import copy
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
    # Starlette suggests another HTTP library for its TestClient; httpx is what we use.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from api.app import create_app
from consent_ledger_client import (
    ApiError,
    ConsentLedgerClient,
    VerificationError,
    verify_member_proof,
)
from ledger.consent.decisions import DecisionRequest
from ledger.service import BuildItem, ConsentLedger
from ledger.service.clients import create_client
from ledger.service.keys import SigningKey
from ledger.tlog.notes import VerifierKey

BASE = "http://testserver"
ALL = ["check", "record", "read", "audit", "admin"]
MakeClient = Callable[..., ConsentLedgerClient]


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def http(ledger: ConsentLedger) -> Iterator[TestClient]:
    with TestClient(create_app(ledger=ledger), base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def api_key(ledger: ConsentLedger) -> str:
    _, key = create_client(ledger.engine, "platform", ALL)
    return key


@pytest.fixture
def make_client(ledger: ConsentLedger, http: TestClient, api_key: str) -> MakeClient:
    def make(**options: Any) -> ConsentLedgerClient:
        options.setdefault("verifier_key", ledger.verifier_key())
        if "transport" not in options:
            options.setdefault("http", http)
        return ConsentLedgerClient(BASE, api_key, **options)

    return make


class Editing(httpx.BaseTransport):
    """Forwards to the app; `edit(request, body)` may return another answer body, and
    `edit_request(request)` another request (a tampering server, or something between)."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        edit: Callable[[httpx.Request, bytes], bytes] = lambda _, body: body,
        edit_request: Callable[[httpx.Request], httpx.Request] = lambda request: request,
    ) -> None:
        self.inner = inner
        self.edit = edit
        self.edit_request = edit_request

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(self.edit_request(request))
        body = response.read()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=self.edit(request, body),
            request=request,
        )


def register(ledger: ConsentLedger, subject_id: str, jurisdiction: str) -> None:
    ledger.register_subject(subject_id, jurisdiction=jurisdiction, actor="test")


def decide(ledger: ConsentLedger, subject_id: str, category: str, decision: str) -> int:
    sealed = ledger.record_consents(
        subject_id, [DecisionRequest(category=category, decision=decision)], actor="test"
    )
    return sealed.tree_size


def people(ledger: ConsentLedger) -> None:
    """us-1, us-2: US opt-out (public posts allowed by default); de-1: GDPR opt-in, granted;
    de-2: GDPR, never asked (default-deny)."""
    for subject_id, jurisdiction in (
        ("us-1", "US"),
        ("us-2", "US"),
        ("de-1", "DE"),
        ("de-2", "DE"),
    ):
        register(ledger, subject_id, jurisdiction)
    decide(ledger, "de-1", "content.public", "granted")


POSTS = [
    {"record_id": "post-1", "subject_id": "us-1", "category": "content.public", "text": "a"},
    {"record_id": "post-2", "subject_id": "de-2", "category": "content.public", "text": "b"},
    {"record_id": "post-3", "subject_id": "de-1", "category": "content.public", "text": "c"},
    {"record_id": "post-4", "subject_id": "us-2", "category": "content.private", "text": "d"},
    {"record_id": "post-5", "subject_id": "us-2", "category": "content.public", "text": "e"},
    {"record_id": "post-6", "subject_id": "nobody", "category": "content.public", "text": "f"},
]
KEPT = ["post-1", "post-3", "post-5"]


def last_line(body: bytes) -> tuple[list[bytes], dict[str, Any]]:
    *answers, final = body.strip().split(b"\n")
    return answers, orjson.loads(final)


def with_last_line(answers: list[bytes], final: dict[str, Any]) -> bytes:
    return b"\n".join([*answers, orjson.dumps(final)]) + b"\n"


def build(client: ConsentLedgerClient, name: str = "posts-train", version: str = "1") -> Any:
    return client.record_build(name, version, POSTS).finish()


# --- recording a build ---------------------------------------------------------------------


def test_record_build_answers_every_item_and_verifies_the_receipt(
    ledger: ConsentLedger, make_client: MakeClient
) -> None:
    people(ledger)
    items = [
        ("post-1", "us-1", "content.public"),  # a tuple
        {"record_id": "post-2", "subject_id": "de-2", "category": "content.public"},
        {"record_id": "post-7", "subject_id": "us-1", "category": ["content.public", "profile"]},
        {"record_id": "post-8", "subject_id": "us-1", "category": "content.public|biometric"},
        {"record_id": "post-9", "subject_id": "us-1", "category": "no.such.category"},
        {"record_id": "post-10", "subject_id": "us-2", "category": "profile", "text": "unsent"},
    ]
    recording = make_client().record_build("posts-train", 1, iter(items))
    assert recording.recorded is None  # nothing is sent before it is read

    answers = list(recording)

    assert [(a.get("record_id"), a.get("eligible"), a.get("reason")) for a in answers] == [
        ("post-1", True, "default-allow"),
        ("post-2", False, "default-deny"),
        ("post-7", True, "default-allow"),
        ("post-8", False, "explicit-consent-required"),  # the first category that is not
        (None, None, None),
        ("post-10", True, "default-allow"),
    ]
    assert answers[4]["error"]["field"] == "category"
    assert (recording.members, dict(recording.dropped), recording.errors) == (
        3,
        {"default-deny": 1, "explicit-consent-required": 1},
        1,
    )
    recorded = recording.recorded
    assert recorded is not None
    assert recorded.records == 3
    assert recorded.entry["kind"] == "dataset.recorded"
    assert recorded.entry["data"]["purpose"] == "ai-training"
    assert recorded.build["version"] == "1"
    assert recorded.checkpoint.size == ledger.tree_size() == recorded.seq + 1
    (listed,) = ledger.dataset_builds("posts-train")
    assert (listed["seq"], listed["members"], listed["members_root"]) == (
        recorded.seq,
        3,
        recorded.members_root,
    )


def test_a_build_is_recorded_once_and_refusals_record_nothing(
    ledger: ConsentLedger, make_client: MakeClient
) -> None:
    people(ledger)
    client = make_client()
    build(client)
    with pytest.raises(ApiError) as twice:
        build(client)
    assert twice.value.status == 409
    assert "recorded already" in twice.value.detail

    size = ledger.tree_size()
    repeated = [*POSTS, POSTS[0]]
    with pytest.raises(ApiError, match="more than once") as refused:
        client.record_build("posts-train", "2", repeated).finish()
    assert refused.value.status == 422  # the answer's last line: {"error": problem}
    with pytest.raises(ApiError) as unknown:
        client.record_build("posts-train", "3", POSTS, purpose="no-such-purpose").finish()
    assert unknown.value.status == 422
    assert ledger.tree_size() == size
    assert [b["version"] for b in ledger.dataset_builds("posts-train")] == ["1"]


def test_items_that_fail_on_the_way_raise_as_they_are_and_record_nothing(
    ledger: ConsentLedger, make_client: MakeClient
) -> None:
    people(ledger)

    def items() -> Iterator[dict[str, Any]]:
        yield POSTS[0]
        raise LookupError("the source file went away")

    client = make_client()
    with pytest.raises(LookupError, match="went away"):
        client.record_build("posts-train", "1", items()).finish()
    with pytest.raises(TypeError, match="build item 1"):
        client.record_build("posts-train", "1", [POSTS[0], "post-2"]).finish()
    assert ledger.dataset_builds() == []


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("members-root", "its signed entry"),
        ("flip-answer", "members answered eligible"),
        ("other-receipt", "one dataset.recorded"),
        ("signature", "signature"),
    ],
)
def test_a_tampered_build_answer_is_refused(
    ledger: ConsentLedger, http: TestClient, make_client: MakeClient, tamper: str, message: str
) -> None:
    people(ledger)
    other = make_client().record("us-1", [{"category": "profile", "decision": "granted"}])

    def edit(request: httpx.Request, body: bytes) -> bytes:
        if "/v1/datasets/" not in request.url.path:
            return body
        answers, final = last_line(body)
        if tamper == "members-root":
            final["build"]["members_root"] = base64.b64encode(bytes(32)).decode()
        elif tamper == "flip-answer":  # the server claims a member it did not answer eligible
            first = orjson.loads(answers[1])
            first.update(eligible=True, reason="consent")
            answers[1] = orjson.dumps(first)
        elif tamper == "other-receipt":  # a genuine receipt of another write
            final["receipt"] = other.document
        elif tamper == "signature":
            note = final["receipt"]["checkpoint"]
            body_text, _, signature = note.rstrip("\n").rpartition(" ")
            raw = bytearray(base64.b64decode(signature))
            raw[10] ^= 1
            final["receipt"]["checkpoint"] = f"{body_text} {base64.b64encode(raw).decode()}\n"
        return with_last_line(answers, final)

    client = make_client(transport=Editing(http._transport, edit), verify_consistency=False)
    with pytest.raises(VerificationError, match=message) as refused:
        build(client)
    assert refused.value.document is not None  # the build was recorded: here is its answer


# --- filter(record=...) --------------------------------------------------------------------


def test_filter_can_record_the_build_it_keeps(
    ledger: ConsentLedger, make_client: MakeClient
) -> None:
    people(ledger)
    client = make_client()
    plain = client.filter(POSTS)
    assert [post["record_id"] for post in plain] == KEPT

    recorded = client.filter(POSTS, record="posts-train@2")
    assert recorded.recorded is None
    assert [post["record_id"] for post in recorded] == KEPT
    assert recorded.recorded is not None
    assert recorded.recorded.records == 3
    assert (recorded.kept, dict(recorded.dropped)) == (
        3,
        {"default-deny": 1, "prohibited": 1, "unknown-subject": 1},
    )
    assert recorded.checked_at == recorded.recorded.build["checked_at"]
    assert recorded.checkpoint == recorded.recorded.checkpoint
    assert ledger.member_proof("posts-train", "2", "post-3")["leaf"]["record"] == "post-3"

    by_key = client.filter(
        [{**post, "id": post["record_id"], "record_id": None} for post in POSTS],
        record="posts-train@3",
        record_key="id",
    )
    assert [post["id"] for post in by_key] == KEPT


def test_filter_recording_drops_the_records_the_ledger_cannot_check(
    ledger: ConsentLedger, make_client: MakeClient
) -> None:
    people(ledger)
    client = make_client()
    posts = [*POSTS[:2], {**POSTS[2], "category": "no.such.category"}, *POSTS[3:]]
    with pytest.raises(ValueError, match="on_invalid='drop'"):
        client.filter(posts, record="posts-train@1", on_invalid="raise")

    kept = client.filter(posts, record="posts-train@1")
    assert [post["record_id"] for post in kept] == ["post-1", "post-5"]
    assert kept.dropped["invalid"] == 1
    assert kept.recorded is not None
    assert kept.recorded.records == 2
    assert ledger.dataset_builds()[0]["members"] == 2


# --- obligations and purges ----------------------------------------------------------------


def test_obligations_are_listed_across_pages_and_purges_fulfil_them(
    ledger: ConsentLedger, http: TestClient, make_client: MakeClient
) -> None:
    people(ledger)
    pages: list[str] = []
    http.event_hooks = {
        "request": [lambda r: pages.append(str(r.url)) if "obligations" in r.url.path else None],
        "response": [],
    }
    client = make_client()
    many = [(f"post-{n:05d}", "us-1", "content.public") for n in range(1_050)]
    recorded = client.record_build("posts-train", "1", iter(many)).finish()
    assert recorded.records == 1_050
    build(client, version="2")
    withdrawal = decide(ledger, "us-1", "content.public", "withdrawn") - 1

    listed = list(client.obligations("posts-train", version="1"))

    assert len(listed) == 1_050
    assert len(pages) == 2  # more than one page: the second one asked `after` the first
    assert "after=" in pages[1]
    assert {(o["reason"], o["cause"], o["status"]) for o in listed} == {
        ("withdrawn", withdrawal, "open")
    }
    assert [o["record_id"] for o in client.obligations("posts-train", version="2")] == ["post-1"]

    purged = client.purge("posts-train", "2", ["post-5", "post-1"])
    assert (purged.records, purged.fulfils, purged.voluntary) == (2, 1, 1)
    assert purged.receipt.entries[0]["kind"] == "dataset.purged"
    fulfilled = list(client.obligations("posts-train", version="2", status="fulfilled"))
    assert [(o["record_id"], o["closed_by"]) for o in fulfilled] == [("post-1", purged.seq)]
    assert list(client.obligations("posts-train", version="2", status="open")) == []

    with pytest.raises(ApiError) as not_members:
        client.purge("posts-train", "2", ["post-1", "post-404"])
    assert not_members.value.status == 422
    assert "post-404" in not_members.value.detail
    with pytest.raises(ApiError) as unknown:
        list(client.obligations("no-such-dataset"))
    assert unknown.value.status == 404


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("other-records", "purged_root"),  # a genuine receipt, of other records than asked
        ("fewer-records", "records 1, not 2"),
        ("fulfils", "differs from its signed entry"),
        ("voluntary", "voluntary"),
    ],
)
def test_a_tampered_purge_answer_is_refused(
    ledger: ConsentLedger, http: TestClient, make_client: MakeClient, tamper: str, message: str
) -> None:
    people(ledger)
    build(make_client())
    decide(ledger, "us-1", "content.public", "withdrawn")

    def edit_request(request: httpx.Request) -> httpx.Request:
        if not request.url.path.endswith("/purges") or not tamper.endswith("-records"):
            return request
        purged = ["post-1", "post-3"] if tamper == "other-records" else ["post-1"]
        headers = {k: v for k, v in request.headers.items() if k != "content-length"}
        return httpx.Request("POST", request.url, headers=headers, json={"record_ids": purged})

    def edit(request: httpx.Request, body: bytes) -> bytes:
        if not request.url.path.endswith("/purges") or tamper.endswith("-records"):
            return body
        document = orjson.loads(body)
        document[tamper] = 0
        return orjson.dumps(document)

    client = make_client(
        transport=Editing(http._transport, edit, edit_request), verify_consistency=False
    )
    with pytest.raises(VerificationError, match=message) as refused:
        client.purge("posts-train", "1", ["post-1", "post-5"])
    assert refused.value.document is not None


# --- member proofs -------------------------------------------------------------------------


def tampered_proofs(proof: dict[str, Any], other_entry: dict[str, Any]) -> list[Any]:
    """A member proof changed in each way that must make it fail."""

    def changed(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        copied = copy.deepcopy(proof)
        edit(copied)
        return copied

    def flip_hash(p: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(p["hashes"][0]))
        raw[0] ^= 1
        p["hashes"][0] = base64.b64encode(raw).decode()

    return [
        changed(lambda p: p["leaf"].update(subject="0" * 32)),  # another subject
        changed(lambda p: p["leaf"].update(record="post-404")),  # another record
        changed(lambda p: p["leaf"].update(purpose="data-mining")),  # another purpose
        changed(lambda p: p.update(index=p["index"] ^ 1)),  # another position
        changed(lambda p: p.update(records=p["records"] + 1)),  # another tree
        changed(flip_hash),
        changed(lambda p: p.update(entry=other_entry)),  # another build's signed entry
        changed(lambda p: p["entry"]["entries"][0].update(index=0)),
        changed(lambda p: p.pop("hashes")),
        "not a proof",
    ]


def test_member_proofs_of_the_ledger_verify_offline_and_tampered_ones_fail(
    ledger: ConsentLedger,
) -> None:
    """The ledger's own proofs (no HTTP) against the client's offline check."""
    people(ledger)
    for version, posts in (("1", POSTS), ("2", POSTS[:3])):
        with ledger.dataset_recorder("posts-train", version, actor="test") as recorder:
            recorder.check(
                [
                    BuildItem(n, p["record_id"], p["subject_id"], p["category"])
                    for n, p in enumerate(posts, start=1)
                ]
            )
            recorder.finish()
    key = ledger.verifier_key()
    other = ledger.member_proof("posts-train", "2", "post-3")
    for record_id in KEPT:
        proof = ledger.member_proof("posts-train", "1", record_id)
        verify_member_proof(proof, key)
        verify_member_proof(proof, [str(SigningKey.generate("another").verifier_key), key])
        for tampered in tampered_proofs(proof, other["entry"]):
            with pytest.raises(VerificationError):
                verify_member_proof(tampered, key)
    impostor = SigningKey.generate(VerifierKey.parse(key).name).verifier_key
    with pytest.raises(VerificationError, match="signature|known key"):
        verify_member_proof(proof, str(impostor))


def test_member_proof_over_http_is_verified_and_checks_offline(
    ledger: ConsentLedger, make_client: MakeClient
) -> None:
    people(ledger)
    client = make_client()
    recorded = build(client)
    proof = client.member_proof("posts-train", "1", "post-3")
    assert (proof.record_id, proof.index, proof.records) == ("post-3", 1, 3)
    assert proof.members_root == recorded.members_root
    assert proof.entry.entries[0]["seq"] == recorded.seq
    verify_member_proof(proof.document, ledger.verifier_key())

    client.purge("posts-train", "1", ["post-3"])
    with pytest.raises(ApiError) as purged:
        client.member_proof("posts-train", "1", "post-3")
    assert purged.value.status == 404
    # A proof kept from before still verifies: purging keeps the leaves and the signed root.
    verify_member_proof(proof.document, ledger.verifier_key())


# --- over a socket -------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_build_streams_both_ways_over_a_socket(ledger: ConsentLedger, api_key: str) -> None:
    """Under uvicorn the answers come back while the items are still being sent: the
    items wait for the first answer half-way, which a client (or an API) that sends
    (or reads) the whole body first would never give them."""
    register(ledger, "us-1", "US")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(ledger=ledger), port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    answered = threading.Event()

    def items() -> Iterator[tuple[str, str, str]]:
        for n in range(40_000):
            if n == 20_000:
                assert answered.wait(30), "no answer came back while the build was being sent"
            yield (f"post-{n:06d}", "us-1", "content.public")

    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        with ConsentLedgerClient(
            f"http://127.0.0.1:{port}", api_key, ledger.verifier_key(), timeout=60
        ) as client:
            recording = client.record_build("posts-train", "1", items())
            for answer in recording:
                assert answer["eligible"] is True, answer
                answered.set()
        assert recording.recorded is not None
        assert recording.recorded.records == recording.members == 40_000
        assert ledger.dataset_builds()[0]["members"] == 40_000
    finally:
        server.should_exit = True
        thread.join(timeout=20)
