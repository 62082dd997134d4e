"""The Python client (`client/`) against the real API, in-process, on SQLite and PostgreSQL.

The app runs behind FastAPI's `TestClient` (an `httpx.Client`), injected into
`ConsentLedgerClient(http=...)`. Tampering, lost answers and lagging replicas
are simulated with small httpx transports wrapped around the app's.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

with warnings.catch_warnings():
    # Starlette suggests another HTTP library for its TestClient; httpx is what we use.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from api.app import create_app
from consent_ledger_client import (
    ApiError,
    ConsentLedgerClient,
    InvalidRecord,
    MissingScope,
    ProtocolError,
    TransportError,
    VerificationError,
)
from consent_ledger_client._kernel.errors import VerificationError as KernelVerificationError
from consent_ledger_client._kernel.tlog import notes as client_notes
from ledger.consent.decisions import DecisionRequest
from ledger.service import ConsentLedger
from ledger.service.clients import create_client
from ledger.service.keys import SigningKey
from ledger.tlog.evidence import EvidenceBundle, verify_bundle
from ledger.tlog.notes import Checkpoint, VerifierKey, sign_checkpoint
from ledger.verify import verify_ledger

BASE = "http://testserver"
ALL = ["check", "record", "read", "audit", "admin"]
PROOF_PATH = "/v1/ledger/proofs/consistency"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def http(ledger: ConsentLedger) -> Iterator[TestClient]:
    with TestClient(create_app(ledger=ledger), base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def api_keys(ledger: ConsentLedger) -> dict[str, str]:
    """API keys by role: `all` scopes, `platform` (check+record, no audit), `checker`."""
    keys = {}
    for name, scopes in (
        ("all", ALL),
        ("platform", ["check", "record", "read"]),
        ("checker", ["check"]),
    ):
        _, keys[name] = create_client(ledger.engine, name, scopes)
    return keys


@pytest.fixture
def make_client(
    ledger: ConsentLedger, http: TestClient, api_keys: dict[str, str]
) -> Callable[..., ConsentLedgerClient]:
    def make(role: str = "all", **options: Any) -> ConsentLedgerClient:
        options.setdefault("verifier_key", ledger.verifier_key())
        if "transport" not in options:
            options.setdefault("http", http)
        return ConsentLedgerClient(BASE, api_keys[role], **options)

    return make


@pytest.fixture
def proof_requests(http: TestClient) -> list[tuple[int, int]]:
    """(old_size, new_size) of every consistency proof the app is asked for."""
    seen: list[tuple[int, int]] = []

    def hook(request: httpx.Request) -> None:
        if request.url.path == PROOF_PATH:
            params = request.url.params
            seen.append((int(params["old_size"]), int(params["new_size"])))

    http.event_hooks = {"request": [hook], "response": []}
    return seen


class Wrapping(httpx.BaseTransport):
    """Forwards to the app's transport; `edit(request, response)` may replace the answer."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        edit: Callable[[httpx.Request, httpx.Response], httpx.Response | None],
    ) -> None:
        self.inner = inner
        self.edit = edit

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        return self.edit(request, response) or response


def json_response(response: httpx.Response, document: Any) -> httpx.Response:
    return httpx.Response(
        response.status_code,
        headers={"content-type": "application/json"},
        content=orjson.dumps(document),
        request=response.request,
    )


def register(ledger: ConsentLedger, subject_id: str, jurisdiction: str | None = "US") -> None:
    ledger.register_subject(subject_id, jurisdiction=jurisdiction, actor="test")


def decide(ledger: ConsentLedger, subject_id: str, category: str, decision: str, **kw: Any) -> int:
    sealed = ledger.record_consents(
        subject_id, [DecisionRequest(category=category, decision=decision, **kw)], actor="test"
    )
    return sealed.tree_size


def flip(text: str, position: int = 0) -> str:
    """Base64 of the same bytes with one bit flipped at `position`."""
    raw = bytearray(base64.b64decode(text))
    raw[position] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --- checks --------------------------------------------------------------------------------


def test_check_answers_like_the_ledger(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient]
) -> None:
    client = make_client("checker")
    register(ledger, "us-1", "US")
    register(ledger, "de-1", "DE")
    before = ledger.tree_size()
    token = decide(ledger, "de-1", "content.public", "granted")

    answer = client.check("us-1", "content.public")
    assert answer["eligible"] is True
    assert answer["reason"] == "default-allow"
    assert answer["decided_by"] is None
    assert answer["checked_at"] == token == client.last_checked_at
    assert set(answer) == {"eligible", "reason", "decided_by", "policy_version", "checked_at", "at"}

    fresh = client.check("de-1", "content.public", "ai-training", at_least_as_fresh=token)
    assert (fresh["eligible"], fresh["reason"], fresh["decided_by"]) == (True, "consent", token - 1)
    past = client.check("de-1", "content.public", as_of=before)
    assert (past["eligible"], past["reason"], past["checked_at"]) == (False, "default-deny", before)
    pinned = client.check("de-1", "content.public", as_of=before, at=past["at"])
    assert pinned == past
    assert client.check("nobody", "profile")["reason"] == "unknown-subject"
    assert client.check("us-1", "content.private.messages")["reason"] == "prohibited"


def test_http_errors_carry_the_problem_document(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], api_keys: dict[str, str]
) -> None:
    client = make_client("checker")
    with pytest.raises(ApiError) as unknown:
        client.check("us-1", "no.such.category")
    assert unknown.value.status == 422
    assert unknown.value.errors
    assert unknown.value.errors[0]["field"] == "category"
    assert unknown.value.problem["status"] == 422
    assert "no.such.category" in unknown.value.detail or "category" in str(unknown.value)

    with pytest.raises(ApiError) as too_old:
        client.check("us-1", "profile", as_of=10_000)
    assert too_old.value.status == 422
    assert too_old.value.errors[0]["field"] == "as_of"

    with pytest.raises(MissingScope) as forbidden:
        client.register("us-1", "US")
    assert forbidden.value.status == 403
    assert "record" in forbidden.value.detail

    stranger = make_client("checker")
    stranger._headers["Authorization"] = "Bearer clk_0000000000000000_" + "x" * 43
    with pytest.raises(ApiError) as unauthorized:
        stranger.check("us-1", "profile")
    assert unauthorized.value.status == 401
    assert unauthorized.value.title == "Unauthorized"
    assert "401" in str(unauthorized.value)


def test_not_fresh_is_a_503_with_retry_after(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient]
) -> None:
    client = make_client("checker", retries=0)
    with pytest.raises(ApiError) as stale:
        client.check("us-1", "profile", at_least_as_fresh=ledger.tree_size() + 5)
    assert stale.value.status == 503
    assert stale.value.retry_after is not None
    assert stale.value.retry_after > 0


# --- client behaviour without a server (run once) ------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_reads_are_retried_after_503_and_writes_only_when_safe(ledger: ConsentLedger) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) < 3:
            return httpx.Response(
                503,
                headers={"Retry-After": "0", "content-type": "application/problem+json"},
                json={"status": 503, "title": "Service unavailable", "detail": "not yet"},
            )
        return httpx.Response(
            200,
            json={
                "eligible": False,
                "reason": "unknown-subject",
                "decided_by": None,
                "policy_version": 1,
                "checked_at": 3,
                "at": "2026-01-01T00:00:00.000000Z",
            },
        )

    key = ledger.verifier_key()
    client = ConsentLedgerClient(BASE, "k", key, transport=httpx.MockTransport(handler))
    assert client.check("s", "profile")["checked_at"] == 3
    assert len(calls) == 3

    calls.clear()
    impatient = ConsentLedgerClient(
        BASE, "k", key, transport=httpx.MockTransport(handler), retries=1
    )
    with pytest.raises(ApiError) as unavailable:
        impatient.check("s", "profile")
    assert unavailable.value.status == 503
    assert len(calls) == 2

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    calls.clear()
    offline = ConsentLedgerClient(BASE, "k", key, transport=httpx.MockTransport(refuse), retries=2)
    with pytest.raises(TransportError):
        offline.check("s", "profile")
    assert len(calls) == 1  # a check is not resent after a transport failure
    with pytest.raises(TransportError):
        offline.record("s", [{"category": "profile", "decision": "granted"}])
    assert len(calls) == 4  # a write with an Idempotency-Key is, twice

    with pytest.raises(ValueError, match="verifier key"):
        ConsentLedgerClient(BASE, "k", "not-a-key")


# --- filter --------------------------------------------------------------------------------

CATEGORIES = [
    "content.public",
    "content.private",
    "profile",
    "profile.employment",
    "biometric",
    "biometric.face",
    "activity",
    "location",
]


def populate(ledger: ConsentLedger, tmp_path: Path, subjects: int = 80) -> list[str]:
    """Subjects of every kind (regimes, minors, grants, refusals, erasures) via one import."""
    rng = random.Random(7)
    rows = []
    ids = []
    for number in range(subjects):
        subject_id = f"user-{number:03d}"
        ids.append(subject_id)
        jurisdiction = rng.choice(["US", "US", "BR", "DE", "FR", "GB", None])
        rows.append(
            {
                "subject_id": subject_id,
                "jurisdiction": jurisdiction,
                "minor": number % 17 == 0,
            }
        )
        for category in rng.sample(CATEGORIES + ["*", "biometric"], k=rng.randint(0, 4)):
            rows.append(
                {
                    "subject_id": subject_id,
                    "category": category,
                    "purpose": rng.choice(["ai-training", "ai-training", "*", "data-mining"]),
                    "decision": rng.choice(["granted", "granted", "denied", "withdrawn"]),
                    "explicit": rng.random() < 0.5,
                }
            )
    path = tmp_path / "people.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    ledger.import_file(path, actor="test")
    for subject_id in ids[-3:]:
        ledger.erase_subject(subject_id, actor="test")
    return ids + [f"stranger-{n}" for n in range(20)]


def dataset(subject_ids: list[str], size: int, pulled: list[int]) -> Iterator[dict[str, Any]]:
    """`size` records over the subjects, generated lazily; `pulled[0]` counts what was taken."""
    rng = random.Random(11)
    for number in range(size):
        pulled[0] += 1
        yield {
            "id": number,
            "subject_id": rng.choice(subject_ids),
            "category": rng.choice(CATEGORIES),
            "text": f"post {number}",
        }


def test_filter_equals_single_checks_at_one_pinned_tree_size(
    ledger: ConsentLedger,
    make_client: Callable[..., ConsentLedgerClient],
    tmp_path: Path,
) -> None:
    subject_ids = populate(ledger, tmp_path)
    # A subject whose public posts are eligible now and are refused mid-build.
    register(ledger, "late-refuser", "US")
    subject_ids.append("late-refuser")
    client = make_client("all")
    size, batch_size = 25_000, 4_000
    pulled = [0]
    result = client.filter(dataset(subject_ids, size, pulled), batch_size=batch_size)
    assert result.checked_at is None
    assert pulled[0] == 0

    kept = [next(result)]
    # Constant memory: only the first batch has been taken from the input.
    assert pulled[0] == batch_size
    pinned = result.checked_at
    assert pinned == ledger.tree_size() == client.last_checked_at
    assert result.checkpoint is not None
    assert result.checkpoint.size >= pinned
    assert result.at is not None
    assert result.policy_version == 1
    decide(ledger, "late-refuser", "*", "denied")
    kept.extend(result)

    assert pulled[0] == size
    assert result.batches == -(-size // batch_size)
    assert result.kept == len(kept)
    assert result.seen == size
    assert 0 < len(kept) < size
    ids = [record["id"] for record in kept]
    assert ids == sorted(ids)  # input order
    assert {"unknown-subject", "prohibited", "minor", "erased"} <= set(result.dropped)
    # Every batch answered at the first batch's tree size: the refusal written
    # after the first batch changed nothing.
    late = [r for r in dataset(subject_ids, size, [0]) if r["subject_id"] == "late-refuser"]
    late_public = [r["id"] for r in late if r["category"] == "content.public"]
    assert late_public
    assert set(late_public) <= set(ids)
    assert client.check("late-refuser", "content.public")["reason"] == "refused"

    # The same as per-record checks at the same tree size and time.
    kept_ids = set(ids)
    records = list(dataset(subject_ids, size, [0]))
    for record in random.Random(3).sample(records, 200):
        answer = client.check(record["subject_id"], record["category"], as_of=pinned, at=result.at)
        assert answer["checked_at"] == pinned
        assert answer["eligible"] == (record["id"] in kept_ids), (record, answer)

    # And reproducible: the same input, asked again at (checked_at, at).
    again = client.filter(iter(records), batch_size=7_000, as_of=pinned, at=result.at)
    assert [record["id"] for record in again] == ids
    assert again.dropped == result.dropped
    assert again.checked_at == pinned


def test_filter_options(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient]
) -> None:
    register(ledger, "us-1", "US")
    register(ledger, "de-1", "DE")
    client = make_client("checker", verify_consistency=False)

    rows = [("us-1", "a"), ("de-1", "b"), ("us-1", "c"), ("nobody", "d")]
    kept = client.filter(rows, subject_key=lambda row: row[0], category="profile", batch_size=3)
    assert list(kept) == [("us-1", "a"), ("us-1", "c")]
    assert kept.dropped == {"default-deny": 1, "unknown-subject": 1}
    assert kept.batches == 2

    training = client.filter(
        [{"who": "us-1", "kind": "content.public"}, {"who": "us-1", "kind": "location"}],
        subject_key="who",
        category_key="kind",
        purpose="ai-training",
    )
    assert [row["kind"] for row in training] == ["content.public"]

    mining = client.filter([{"subject_id": "us-1", "category": "profile"}], purpose="data-mining")
    assert list(mining) == []
    assert mining.dropped == {"default-deny": 1}

    bad = [{"subject_id": "us-1", "category": "profile"}, {"subject_id": "us-1", "category": "x"}]
    with pytest.raises(InvalidRecord) as invalid:
        list(client.filter(bad))
    assert invalid.value.position == 1
    assert invalid.value.field == "category"
    dropped = client.filter(bad + [{"category": "profile"}], on_invalid="drop")
    assert len(list(dropped)) == 1
    assert dropped.dropped == {"invalid": 2}

    empty = client.filter(iter([]))
    assert list(empty) == []
    assert empty.checked_at is None
    assert empty.batches == 0
    with pytest.raises(ValueError, match="batch_size"):
        client.filter([], batch_size=0)
    with pytest.raises(ApiError) as too_many:
        list(
            client.filter(
                [{"subject_id": "us-1", "category": "profile"}] * 10_001, batch_size=10_001
            )
        )
    assert too_many.value.status == 413


def test_filter_checkpoint_is_verified(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], http: TestClient
) -> None:
    register(ledger, "us-1", "US")

    def forge(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.url.path != "/v1/eligibility/batch":
            return None
        document = response.json()
        lines = document["checkpoint"].split("\n")
        lines[1] = str(int(lines[1]) + 1)  # claim a bigger tree under the same signature
        document["checkpoint"] = "\n".join(lines)
        return json_response(response, document)

    client = make_client("checker", transport=Wrapping(http._transport, forge))
    with pytest.raises(VerificationError, match="does not verify"):
        list(client.filter([{"subject_id": "us-1", "category": "profile"}]))


# --- writes and receipts ---------------------------------------------------------------------


def test_register_and_record_return_verified_receipts(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient]
) -> None:
    client = make_client("all")
    key = VerifierKey.parse(ledger.verifier_key())

    created = client.register("user-1", "us", minor=False)
    assert created.status == 201
    assert created.changed
    assert created.token == ledger.tree_size() == created.checkpoint.size  # type: ignore[union-attr]
    (entry,) = created.entries
    assert entry["kind"] == "subject.registered"
    assert entry["data"]["jurisdiction"] == "US"
    assert "user-1" not in json.dumps(created.document)  # the log never holds the raw id
    # What the client returns is a bundle anyone can check offline with the key alone.
    assert verify_bundle(EvidenceBundle.from_json(created.document), [key]).size == created.token

    same = client.register("user-1", "US")
    assert (same.status, same.changed, same.token, same.entries) == (200, False, created.token, ())
    updated = client.register("user-1", "DE")
    assert updated.status == 200
    assert [e["kind"] for e in updated.entries] == ["subject.updated"]

    decisions = [
        {"category": "content.public", "decision": "granted"},
        {
            "category": "biometric",
            "purpose": "ai-training",
            "decision": "granted",
            "explicit": True,
        },
        {"category": "profile", "decision": "denied", "method": "settings-page", "notice": "v3"},
    ]
    receipt = client.record("user-1", decisions, idempotency_key="req-1")
    assert receipt.status == 201
    assert receipt.token == ledger.tree_size()
    assert [e["data"]["category"] for e in receipt.entries] == [
        "content.public",
        "biometric",
        "profile",
    ]
    assert receipt.entries[2]["data"]["method"] == "settings-page"
    assert client.check("user-1", "biometric.face", at_least_as_fresh=receipt.token)["eligible"]

    replay = client.record("user-1", decisions, idempotency_key="req-1")
    assert replay.token == receipt.token
    assert replay.entries == receipt.entries
    assert ledger.tree_size() == receipt.token  # nothing appended twice

    history = client.history("user-1")
    assert [e["kind"] for e in history.entries] == [
        "subject.registered",
        "subject.updated",
        "consent.recorded",
        "consent.recorded",
        "consent.recorded",
    ]
    erased = client.erase("user-1")
    assert [e["kind"] for e in erased.entries] == ["subject.erased"]
    assert client.check("user-1", "profile")["reason"] == "erased"
    with pytest.raises(ApiError) as gone:
        client.record("user-1", decisions[:1])
    assert gone.value.status in (404, 409)


def test_a_lost_answer_is_resent_and_appends_once(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], http: TestClient
) -> None:
    register(ledger, "user-1", "US")
    lost = []

    def lose_first_answer(request: httpx.Request, response: httpx.Response) -> None:
        if request.method == "POST" and not lost:
            lost.append(request.headers["Idempotency-Key"])
            raise httpx.ReadTimeout("answer lost", request=request)

    client = make_client("all", transport=Wrapping(http._transport, lose_first_answer))
    before = ledger.tree_size()
    receipt = client.record("user-1", [{"category": "profile", "decision": "granted"}])
    assert lost
    assert receipt.token == before + 1 == ledger.tree_size()


# --- the trust store -----------------------------------------------------------------------


def test_trust_store_advances_only_with_consistency_proofs(
    ledger: ConsentLedger,
    make_client: Callable[..., ConsentLedgerClient],
    proof_requests: list[tuple[int, int]],
    tmp_path: Path,
) -> None:
    store = tmp_path / "trust" / "ledger.checkpoint"
    client = make_client("all", trust_store=store)
    assert client.trusted_checkpoint is None
    assert not store.exists()

    first = client.register("user-1", "US")
    assert proof_requests == []  # the first checkpoint is trusted on its signature
    assert store.read_text() == first.document["checkpoint"]  # type: ignore[index]
    assert client.trusted_checkpoint == first.checkpoint

    for number in range(5):  # writes this client does not see
        register(ledger, f"other-{number}", "FR")
    second = client.record("user-1", [{"category": "profile", "decision": "granted"}])
    assert proof_requests == [(first.token, second.token)]
    assert store.read_text() == second.document["checkpoint"]  # type: ignore[index]
    # The trust store is a checkpoint file `consent-ledger verify --checkpoint` accepts.
    report = verify_ledger(ledger.engine, external_checkpoints=[store.read_text()])
    assert list(report.external_checkpoints) == [second.token]

    # A new client (a restarted process) starts from the stored checkpoint.
    restarted = make_client("all", trust_store=store)
    assert restarted.trusted_checkpoint == second.checkpoint
    # An older receipt must be a prefix of what is trusted: proof old -> trusted.
    again = restarted.verify_bundle(first.document)
    assert again.checkpoint.size == first.token
    assert proof_requests[-1] == (first.token, second.token)
    assert restarted.trusted_checkpoint == second.checkpoint
    # The same checkpoint again needs no proof.
    count = len(proof_requests)
    restarted.verify_bundle(second.document)
    assert len(proof_requests) == count
    # An idempotent replay returns the first (older) receipt: also proven, also fine.
    register(ledger, "other-x", "FR")
    key = "replay-me"
    original = restarted.record(
        "user-1", [{"category": "activity", "decision": "granted"}], idempotency_key=key
    )
    register(ledger, "other-y", "FR")
    newer = restarted.register("other-z", "FR")
    replayed = restarted.record(
        "user-1", [{"category": "activity", "decision": "granted"}], idempotency_key=key
    )
    assert replayed.token == original.token < newer.token
    assert proof_requests[-1] == (original.token, newer.token)
    assert restarted.trusted_checkpoint == newer.checkpoint


@pytest.mark.parametrize(
    "forge",
    ["canonical", "inclusion", "signature", "tree-size", "readable-entry", "index"],
)
def test_forged_receipts_are_refused(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], forge: str
) -> None:
    client = make_client("all")
    register(ledger, "user-1", "US")
    for number in range(3):  # so that inclusion proofs are not empty
        register(ledger, f"other-{number}", "US")
    genuine = client.record("user-1", [{"category": "profile", "decision": "granted"}])
    document = copy.deepcopy(genuine.document)
    assert document is not None
    entry = document["entries"][0]
    if forge == "canonical":
        canonical = base64.b64decode(entry["canonical"]).replace(b"granted", b"grantee")
        entry["canonical"] = base64.b64encode(canonical).decode()
    elif forge == "inclusion":
        entry["inclusion"][0] = flip(entry["inclusion"][0], 5)
    elif forge == "signature":
        body, _, signature = document["checkpoint"].rstrip("\n").rpartition(" ")
        document["checkpoint"] = f"{body} {flip(signature, 20)}\n"
    elif forge == "tree-size":
        lines = document["checkpoint"].split("\n")
        lines[1] = str(int(lines[1]) - 1)
        document["checkpoint"] = "\n".join(lines)
    elif forge == "readable-entry":
        entry["entry"]["data"]["decision"] = "denied"
    elif forge == "index":
        entry["index"] -= 1
    with pytest.raises(VerificationError) as refused:
        client.verify_bundle(document)
    # The client stands alone: its error is its kernel copy's, not `ledger.errors`'.
    assert isinstance(refused.value, KernelVerificationError)
    assert refused.value.document is document


def test_a_tampered_write_answer_fails_the_write_call(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], http: TestClient
) -> None:
    register(ledger, "user-1", "US")
    register(ledger, "user-2", "US")
    honest = make_client("all")
    other = honest.record("user-2", [{"category": "profile", "decision": "denied"}])

    def tamper(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.method != "POST" or "/consents" not in request.url.path:
            return None
        document = response.json()
        how = request.headers["Idempotency-Key"].split("-")[0]
        if how == "flip":
            entry = document["receipt"]["entries"][0]
            entry["canonical"] = flip(entry["canonical"], 30)
        elif how == "swap":  # a genuine receipt, but of another write
            document = {"token": other.token, "receipt": other.document}
        elif how == "empty":  # a genuine checkpoint that proves nothing about the write
            document["receipt"]["entries"] = []
        return json_response(response, document)

    client = make_client("all", transport=Wrapping(http._transport, tamper))
    decisions = [{"category": "profile", "decision": "granted"}]
    with pytest.raises(VerificationError) as flipped:
        client.record("user-1", decisions, idempotency_key="flip-1")
    assert flipped.value.document is not None
    with pytest.raises(VerificationError, match="not decision 0 as asked"):
        client.record("user-1", decisions, idempotency_key="swap-1")
    with pytest.raises(VerificationError, match="holds 0 entries"):
        client.record("user-1", decisions, idempotency_key="empty-1")


@pytest.mark.parametrize("bogus", ["same-size-wrong-root", "smaller-wrong-root", "beyond-the-log"])
def test_a_log_inconsistent_with_the_trusted_checkpoint_is_refused(
    ledger: ConsentLedger,
    make_client: Callable[..., ConsentLedgerClient],
    tmp_path: Path,
    bogus: str,
) -> None:
    register(ledger, "user-1", "US")
    size = ledger.tree_size()
    trusted_size = {
        "same-size-wrong-root": size + 1,  # the next write's size
        "smaller-wrong-root": size,
        "beyond-the-log": size + 1_000,  # a rollback: the server lost what we saw
    }[bogus]
    forged = Checkpoint(
        origin=VerifierKey.parse(ledger.verifier_key()).name,
        size=trusted_size,
        root=hashlib.sha256(b"another history").digest(),
    )
    store = tmp_path / "ledger.checkpoint"
    store.write_text(sign_checkpoint(forged, [ledger.signing_key()]), encoding="utf-8")
    client = make_client("all", trust_store=store)
    # The same checkpoint as the client's own class (its kernel copy's), so == can compare.
    trusted = client_notes.Checkpoint(forged.origin, forged.size, forged.root)
    assert client.trusted_checkpoint == trusted

    with pytest.raises(VerificationError) as refused:
        client.record("user-1", [{"category": "profile", "decision": "granted"}])
    assert "fork" in str(refused.value) or "rollback" in str(refused.value)
    assert refused.value.document is not None  # the write happened; here is what came back
    assert client.trusted_checkpoint == trusted  # nothing inconsistent was trusted
    assert store.read_text() == sign_checkpoint(forged, [ledger.signing_key()])


def test_a_trust_store_not_signed_by_the_ledger_is_refused(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], tmp_path: Path
) -> None:
    origin = VerifierKey.parse(ledger.verifier_key()).name
    impostor = SigningKey.generate(origin)
    store = tmp_path / "ledger.checkpoint"
    note = sign_checkpoint(Checkpoint(origin, 1, hashlib.sha256(b"x").digest()), [impostor])
    store.write_text(note, encoding="utf-8")
    with pytest.raises(VerificationError, match="trust store"):
        make_client("all", trust_store=store)


def test_consistency_needs_the_audit_scope_unless_disabled(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], tmp_path: Path
) -> None:
    register(ledger, "user-1", "US")
    decisions = [{"category": "profile", "decision": "granted"}]
    client = make_client("platform", trust_store=tmp_path / "trust")
    client.record("user-1", decisions)  # first checkpoint: trusted on its signature
    register(ledger, "other", "US")
    with pytest.raises(MissingScope, match="audit") as missing:
        client.record("user-1", decisions)
    assert missing.value.status == 403
    assert "verify_consistency=False" in str(missing.value)
    assert missing.value.document is not None  # the write itself went through

    relaxed = make_client("platform", trust_store=tmp_path / "relaxed", verify_consistency=False)
    for _ in range(2):
        assert relaxed.record("user-1", decisions).checkpoint is not None
    assert relaxed.trusted_checkpoint is None
    assert not (tmp_path / "relaxed").exists()


def test_checkpoints_from_another_key_are_refused_and_rotation_needs_the_new_key(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], tmp_path: Path
) -> None:
    register(ledger, "user-1", "US")
    decisions = [{"category": "profile", "decision": "granted"}]
    origin = VerifierKey.parse(ledger.verifier_key()).name
    stranger = make_client("all", verifier_key=str(SigningKey.generate(origin).verifier_key))
    with pytest.raises(VerificationError, match="no signature by a known key"):
        stranger.record("user-1", decisions)

    old_key = ledger.verifier_key()
    store = tmp_path / "trust"
    before = make_client("all", trust_store=store)
    before.record("user-1", decisions)
    ledger.rotate_key(actor="test")
    new_key = ledger.verifier_key()
    assert new_key != old_key
    with pytest.raises(VerificationError, match="rotated"):
        before.record("user-1", decisions)

    after = make_client("all", verifier_key=[old_key, new_key], trust_store=store)
    receipt = after.record("user-1", decisions)
    # Proven consistent with the checkpoint trusted under the old key.
    assert after.trusted_checkpoint == receipt.checkpoint


def test_checkpoint_endpoint_advances_trust(
    ledger: ConsentLedger,
    make_client: Callable[..., ConsentLedgerClient],
    proof_requests: list[tuple[int, int]],
) -> None:
    client = make_client("all")
    first = client.checkpoint()
    register(ledger, "user-1", "US")
    second = client.checkpoint()
    assert (first.size + 1, second.size) == (second.size, ledger.tree_size())
    assert proof_requests == [(first.size, second.size)]
    with pytest.raises(MissingScope):
        make_client("checker").checkpoint()


def test_protocol_errors(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient], http: TestClient
) -> None:
    register(ledger, "user-1", "US")

    def short(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.url.path == "/v1/eligibility/batch":
            document = response.json()
            document["results"] = document["results"][:-1]
            return json_response(response, document)
        return httpx.Response(200, text="<html>", request=request)

    client = make_client("all", transport=Wrapping(http._transport, short))
    with pytest.raises(ProtocolError, match="2 checks, got 1"):
        list(client.filter([{"subject_id": "user-1", "category": "profile"}] * 2))
    with pytest.raises(ProtocolError, match="not JSON"):
        client.check("user-1", "profile")


# --- bugs found --------------------------------------------------------------------------------


def test_subject_ids_with_a_slash_can_be_registered(
    ledger: ConsentLedger, make_client: Callable[..., ConsentLedgerClient]
) -> None:
    client = make_client("all")
    assert client.check("tenant/42", "profile")["reason"] == "unknown-subject"  # works
    receipt = client.register("tenant/42", "US")
    assert receipt.status == 201
