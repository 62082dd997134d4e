"""The client's dataset calls (SPEC §7) against a ledger's recorded answers, over a socket.

`data/datasets.json` holds what a real ledger answered (`record_ledger.py`);
`ledger_server.DatasetServer` plays it back the way the API streams a build,
backing up when its answers are not read. Member proofs are also checked fully
offline, with `verify_member_proof` and the verifier key alone.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ledger_server import Behaviour, Seen, dataset_server

from consent_ledger_client import (
    ApiError,
    ConsentLedgerClient,
    ProtocolError,
    VerificationError,
    verify_member_proof,
)
from consent_ledger_client._kernel.tlog.notes import VerifierKey, key_id

RECORDED: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent / "data" / "datasets.json").read_text(encoding="utf-8")
)
KEY = RECORDED["verifier_key"]
BUILD = RECORDED["builds"]["1"]
PURGE_PATH = "POST /v1/datasets/posts-train/versions/1/purges"


def client(url: str, **options: Any) -> ConsentLedgerClient:
    # Each recorded receipt is checked on its own: no consistency proofs were recorded.
    options.setdefault("verify_consistency", False)
    return ConsentLedgerClient(url, "recorded-api-key", KEY, timeout=30, **options)


def replay(build: dict[str, Any] = BUILD, **changes: Any) -> Behaviour:
    answers, last = build["answers"], build["last"]
    behaviour = Behaviour(answer=lambda n, _: answers[n - 1], last=lambda _: last)
    for name, value in changes.items():
        setattr(behaviour, name, value)
    return behaviour


def items(build: dict[str, Any] = BUILD) -> list[tuple[Any, ...]]:
    return [tuple(item) for item in build["items"]]


def wait_for_build(seen: Seen) -> list[bool]:
    """The server handles a request in its own thread: wait until it has seen the end."""
    deadline = time.monotonic() + 10
    while not seen.builds_finished and time.monotonic() < deadline:
        time.sleep(0.01)
    return seen.builds_finished


# --- builds --------------------------------------------------------------------------------


def test_a_recorded_build_streams_its_answers_and_verifies_its_receipt() -> None:
    with dataset_server(replay()) as (url, seen):
        recording = client(url).record_build("posts-train", "1", items(), purpose="ai-training")
        answers = list(recording)

    assert answers == BUILD["answers"]
    assert seen.requests == ["POST /v1/datasets/posts-train/versions/1?purpose=ai-training"]
    assert seen.items == [
        dict(zip(("record_id", "subject_id", "category"), item, strict=True))
        for item in BUILD["items"]
    ]
    assert seen.builds_finished == [True]
    assert (recording.members, recording.errors) == (4, 1)
    assert dict(recording.dropped) == {"default-deny": 1, "prohibited": 1, "unknown-subject": 1}
    recorded = recording.recorded
    assert recorded is not None
    assert recorded.records == 4
    assert recorded.build == BUILD["last"]["build"]
    assert recorded.entry["kind"] == "dataset.recorded"
    assert recorded.checkpoint.size == recorded.seq + 1


def test_filter_records_the_build_it_keeps() -> None:
    records = [
        {"id": record_id, "author": subject_id, "kind": category, "text": f"post {n}"}
        for n, (record_id, subject_id, category) in enumerate(items())
    ]
    with dataset_server(replay()) as (url, seen):
        kept = client(url).filter(
            records,
            record="posts-train@1",
            record_key="id",
            subject_key="author",
            category_key="kind",
        )
        assert [record["id"] for record in kept] == ["post-1", "post-3", "post-5", "post-7"]
    assert all("text" not in item for item in seen.items)  # only what a build needs is sent
    assert kept.recorded is not None
    assert (kept.kept, kept.dropped["invalid"], kept.checked_at) == (
        4,
        1,
        BUILD["last"]["build"]["checked_at"],
    )


def flip_second_answer(n: int, item: dict[str, Any]) -> dict[str, Any]:
    answer = dict(BUILD["answers"][n - 1])
    if n == 2:  # claims a member the receipt does not count
        answer.update(eligible=True, reason="consent")
    return answer


def with_build(**changes: Any) -> Callable[[int], dict[str, Any]]:
    last = copy.deepcopy(BUILD["last"])
    last["build"].update(changes)
    return lambda _: last


ZERO_ROOT = base64.b64encode(bytes(32)).decode()
PURGE_RECEIPT = RECORDED["purge"]["answer"]["receipt"]


@pytest.mark.parametrize(
    ("behaviour", "asked", "message"),
    [
        (replay(answer=flip_second_answer), "1", "members answered eligible"),
        (replay(last=with_build(members_root=ZERO_ROOT)), "1", "its signed entry"),
        (replay(last=with_build(seq=3)), "1", "the build says entry 3"),
        (replay(), "9", "version '1', not '9'"),
        (
            replay(last=lambda _: {**BUILD["last"], "receipt": PURGE_RECEIPT}),
            "1",
            "one dataset.recorded",
        ),
    ],
    ids=["answers", "members-root", "seq", "another-version", "another-entry"],
)
def test_a_build_whose_answer_and_receipt_disagree_is_refused(
    behaviour: Behaviour, asked: str, message: str
) -> None:
    with dataset_server(behaviour) as (url, _):
        with pytest.raises(VerificationError, match=message) as refused:
            client(url).record_build("posts-train", asked, items()).finish()
    assert refused.value.document is not None


def test_a_large_build_streams_both_ways_and_its_error_line_raises() -> None:
    """More answers than any buffer holds: they must be read while items are still sent."""
    count = 100_000
    problem = {"status": 422, "title": "Unprocessable", "detail": "refused: ids repeat"}
    behaviour = Behaviour(last=lambda _: {"error": problem})
    lines = ((f"post-{n:07d}", "someone", "content.public") for n in range(count))
    with dataset_server(behaviour) as (url, seen):
        recording = client(url).record_build("posts-train", "1", lines)
        with pytest.raises(ApiError, match="ids repeat") as refused:
            recording.finish()
    assert refused.value.status == 422
    assert refused.value.problem == problem
    assert recording.answered == len(seen.items) == count
    assert recording.recorded is None


@pytest.mark.parametrize("fail_after", [0, 3_000])
def test_items_that_raise_leave_the_build_unfinished(fail_after: int) -> None:
    def failing() -> Iterator[tuple[str, str, str]]:
        for n in range(fail_after):
            yield (f"post-{n}", "someone", "content.public")
        raise KeyError("author")

    with dataset_server(Behaviour()) as (url, seen):
        with pytest.raises(KeyError, match="author"):
            client(url).record_build("posts-train", "1", failing()).finish()
        assert wait_for_build(seen) == [False]  # no last chunk: the ledger records nothing


def test_a_build_refused_before_it_streams_raises_the_problem() -> None:
    problem = {"status": 409, "title": "Conflict", "detail": "posts-train@1 is recorded already"}
    lines = ((f"post-{n}", "someone", "content.public") for n in range(50_000))
    with dataset_server(Behaviour(refuse=(409, problem))) as (url, _):
        with pytest.raises(ApiError, match="recorded already") as refused:
            client(url).record_build("posts-train", "1", lines).finish()
    assert refused.value.status == 409


def about_another_record(n: int, item: dict[str, Any]) -> dict[str, Any]:
    return {**BUILD["answers"][n - 1], "record_id": "post-404"}


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (replay(last=lambda _: None), "ended before the build's last line"),
        (replay(answer=about_another_record), "about record 'post-404'"),
        (replay(answer=lambda n, item: {**BUILD["answers"][n - 1], "line": 1}), "out of order"),
        (replay(last=lambda _: {"builds": []}), "not a line of a build's answer"),
    ],
    ids=["cut-short", "other-record", "out-of-order", "unknown-line"],
)
def test_a_build_answer_that_breaks_the_protocol_is_refused(
    behaviour: Behaviour, message: str
) -> None:
    with dataset_server(behaviour) as (url, _):
        with pytest.raises(ProtocolError, match=message):
            client(url).record_build("posts-train", "1", items()).finish()


# --- obligations and purges ----------------------------------------------------------------


def test_obligations_are_read_page_after_page() -> None:
    pages = RECORDED["obligation_pages"]
    assert len(pages) > 1
    path = "GET /v1/datasets/posts-train/obligations?version=1"
    documents = {
        path + ("" if page["after"] is None else f"&after={page['after']}"): (200, page["page"])
        for page in pages
    }
    with dataset_server(Behaviour(documents=documents)) as (url, seen):
        listed = list(client(url).obligations("posts-train", version=1))
    assert listed == [o for page in pages for o in page["page"]["obligations"]]
    assert [o["reason"] for o in listed] == ["withdrawn"] * len(listed)
    assert seen.requests == list(documents)

    stuck = (200, {"obligations": [], "next": 5})
    looping = {path: stuck, f"{path}&after=5": stuck}
    with dataset_server(Behaviour(documents=looping)) as (url, _):
        with pytest.raises(ProtocolError, match="points to itself"):
            list(client(url).obligations("posts-train", version="1"))


def test_a_purge_is_verified_against_the_records_asked() -> None:
    asked, answer = RECORDED["purge"]["record_ids"], RECORDED["purge"]["answer"]
    with dataset_server(Behaviour(documents={PURGE_PATH: (201, answer)})) as (url, seen):
        purged = client(url).purge("posts-train", "1", asked)
        assert seen.bodies == [{"record_ids": asked}]
        assert (purged.records, purged.fulfils, purged.voluntary) == (3, 2, 1)
        assert purged.purged_root == answer["purged_root"]
        assert purged.receipt.entries[0]["kind"] == "dataset.purged"

        # The same genuine receipt, for a purge of other records than these.
        with pytest.raises(VerificationError, match="purged_root"):
            client(url).purge("posts-train", "1", ["post-1", "post-5", "post-3"])
        with pytest.raises(VerificationError, match="records 3, not 2"):
            client(url).purge("posts-train", "1", ["post-1", "post-5"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fulfils": 3, "voluntary": 0}, "differs from its signed entry"),
        ({"voluntary": 0}, "voluntary"),
        ({"seq": 2}, "differs from its signed entry"),
    ],
)
def test_a_purge_answer_that_differs_from_its_entry_is_refused(
    change: dict[str, Any], message: str
) -> None:
    answer = {**RECORDED["purge"]["answer"], **change}
    with dataset_server(Behaviour(documents={PURGE_PATH: (201, answer)})) as (url, _):
        with pytest.raises(VerificationError, match=message):
            client(url).purge("posts-train", "1", RECORDED["purge"]["record_ids"])


# --- member proofs -------------------------------------------------------------------------


def flipped(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 1
    return base64.b64encode(raw).decode()


TAMPERINGS: dict[str, Callable[[dict[str, Any]], None]] = {
    "subject": lambda p: p["leaf"].update(subject="0" * 32),
    "record": lambda p: p["leaf"].update(record="post-404"),
    "category": lambda p: p["leaf"].update(category="profile"),
    "purpose": lambda p: p["leaf"].update(purpose="data-mining"),
    "extra-field": lambda p: p["leaf"].update(note="x"),
    "index": lambda p: p.update(index=p["index"] ^ 1),
    "records": lambda p: p.update(records=p["records"] + 1),
    "hash": lambda p: p["hashes"].__setitem__(0, flipped(p["hashes"][0])),
    "missing-hash": lambda p: p["hashes"].pop(),
    "another-build": lambda p: p.update(entry=RECORDED["proofs"]["other-build"]["entry"]),
    "entry-inclusion": lambda p: p["entry"]["entries"][0]["inclusion"].__setitem__(
        0, flipped(p["entry"]["entries"][0]["inclusion"][0])
    ),
    "checkpoint": lambda p: p["entry"].update(
        checkpoint=p["entry"]["checkpoint"].replace("\n", "\n ", 1)
    ),
    "not-json-object": lambda p: p.clear(),
}


@pytest.mark.parametrize("record_id", ["post-3", "post-7"])  # post-7: a list of categories
def test_member_proofs_verify_offline_with_the_key_alone(record_id: str) -> None:
    proof = RECORDED["proofs"][record_id]
    verify_member_proof(proof, KEY)
    verify_member_proof(json.loads(json.dumps(proof)), [KEY])


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_a_tampered_member_proof_fails(tampering: str) -> None:
    proof = copy.deepcopy(RECORDED["proofs"]["post-7"])
    TAMPERINGS[tampering](proof)
    with pytest.raises(VerificationError) as refused:
        verify_member_proof(proof, KEY)
    assert refused.value.subject


def test_a_member_proof_signed_by_another_key_fails() -> None:
    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    name = VerifierKey.parse(KEY).name
    stranger = VerifierKey(name, key_id(name, public), public)
    with pytest.raises(VerificationError, match="known key"):
        verify_member_proof(RECORDED["proofs"]["post-3"], stranger)


def test_member_proof_over_http_proves_what_was_asked() -> None:
    proof = RECORDED["proofs"]["post-3"]
    path = "GET /v1/datasets/posts-train/versions/1/members/post-3/proof"
    documents = {path: (200, proof), path.replace("post-3", "post-7"): (200, proof)}
    with dataset_server(Behaviour(documents=documents)) as (url, _):
        proven = client(url).member_proof("posts-train", "1", "post-3")
        assert (proven.record_id, proven.index, proven.records) == ("post-3", proof["index"], 4)
        assert proven.members_root == BUILD["last"]["build"]["members_root"]
        assert proven.document == proof
        with pytest.raises(VerificationError, match="asked to prove 'post-7'"):
            client(url).member_proof("posts-train", "1", "post-7")
