"""The log over HTTP: checkpoints, entries, RFC 9162 proofs and the C2SP tlog-tiles path."""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from ledger.service import ConsentLedger
from ledger.tlog import merkle
from ledger.tlog.canonical import parse_canonical
from ledger.tlog.notes import Checkpoint, VerifierKey, open_checkpoint
from tests.api.helpers import Keys, assert_problem, register
from tests.conftest import TEST_ORIGIN

EMPTY_ROOT = hashlib.sha256(b"").digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 Merkle Tree Hash, straight from the definition."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    split = 1
    while split * 2 < len(leaves):
        split *= 2
    return merkle.node_hash(mth(leaves[:split]), mth(leaves[split:]))


def checkpoint_of(client: TestClient, keys: Keys, verifier: list[VerifierKey]) -> Checkpoint:
    response = client.get("/v1/ledger/checkpoint", headers=keys.headers("audit"))
    assert response.status_code == 200, response.text
    return open_checkpoint(response.text, verifier, origin=TEST_ORIGIN)


def all_entries(client: TestClient, keys: Keys) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while True:
        page = client.get(
            "/v1/ledger/entries",
            params={"start": len(entries), "limit": 1000},
            headers=keys.headers("audit"),
        ).json()
        entries += page["entries"]
        if len(entries) >= page["tree_size"]:
            return entries


def leaf_hashes(client: TestClient, keys: Keys) -> list[bytes]:
    return [
        merkle.leaf_hash(base64.b64decode(entry["canonical"]))
        for entry in all_entries(client, keys)
    ]


@pytest.fixture
def history(client: TestClient, keys: Keys, verifier: list[VerifierKey]) -> list[Checkpoint]:
    """Checkpoints seen at several tree sizes while the log grows by a few writes."""
    seen = [checkpoint_of(client, keys, verifier)]
    for name in ("alice", "bob", "carol"):
        register(client, keys, name, jurisdiction="US")
        seen.append(checkpoint_of(client, keys, verifier))
    return seen


@pytest.fixture
def big(ledger: ConsentLedger, tmp_path: Path) -> ConsentLedger:
    """A log of more than one full tile (256 entries), written by a bulk import."""
    path = tmp_path / "subjects.csv"
    path.write_text("subject_id,jurisdiction\n" + "".join(f"bulk-{n:04d},US\n" for n in range(300)))
    ledger.import_file(path, actor="test", batch_size=100)
    assert ledger.tree_size() == 302
    return ledger


# --- checkpoint and entries ---------------------------------------------------------------


def test_checkpoint_is_a_signed_note_that_verifies(
    client: TestClient, keys: Keys, ledger: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    register(client, keys, "alice")
    response = client.get("/v1/ledger/checkpoint", headers=keys.headers("audit"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    checkpoint = open_checkpoint(response.text, verifier, origin=TEST_ORIGIN)
    assert checkpoint.size == ledger.tree_size() == 3
    assert checkpoint.root == mth(leaf_hashes(client, keys))
    assert response.text.startswith(f"{TEST_ORIGIN}\n3\n")


def test_entries_paging(client: TestClient, keys: Keys, ledger: ConsentLedger) -> None:
    for name in ("alice", "bob", "carol"):
        register(client, keys, name)
    headers = keys.headers("audit")
    page = client.get("/v1/ledger/entries", params={"start": 1, "limit": 2}, headers=headers)
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["tree_size"] == ledger.tree_size() == 5
    assert [entry["index"] for entry in body["entries"]] == [1, 2]
    for entry in body["entries"]:
        canonical = base64.b64decode(entry["canonical"], validate=True)
        assert parse_canonical(canonical) == entry["entry"]
        assert entry["entry"]["seq"] == entry["index"]
    assert body["entries"][0]["entry"]["kind"] == "policy.published"
    assert body["entries"][1]["entry"]["kind"] == "subject.registered"

    default = client.get("/v1/ledger/entries", headers=headers).json()
    assert [entry["index"] for entry in default["entries"]] == [0, 1, 2, 3, 4]
    tail = client.get("/v1/ledger/entries", params={"start": 4, "limit": 10}, headers=headers)
    assert [entry["index"] for entry in tail.json()["entries"]] == [4]
    past = client.get("/v1/ledger/entries", params={"start": 99}, headers=headers)
    assert past.status_code == 200
    assert past.json()["entries"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": -1}, "start"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"start": "x"}, "start"),
    ],
)
def test_entries_bad_parameters_are_422(
    client: TestClient, keys: Keys, params: dict[str, Any], field: str
) -> None:
    response = client.get("/v1/ledger/entries", params=params, headers=keys.headers("audit"))
    assert_problem(response, 422, field)


def test_one_entry(client: TestClient, keys: Keys) -> None:
    headers = keys.headers("audit")
    response = client.get("/v1/ledger/entries/0", headers=headers)
    assert response.status_code == 200, response.text
    entry = response.json()
    assert entry["index"] == 0
    assert entry["entry"]["kind"] == "ledger.initialized"
    assert parse_canonical(base64.b64decode(entry["canonical"])) == entry["entry"]
    assert_problem(client.get("/v1/ledger/entries/2", headers=headers), 404)
    assert_problem(client.get("/v1/ledger/entries/-1", headers=headers), 422)
    assert_problem(client.get("/v1/ledger/entries/abc", headers=headers), 422)


@pytest.mark.parametrize(
    "url",
    [
        "/v1/ledger/entries?start=100000000000000000000",
        "/v1/ledger/entries?start=9223372036854775807&limit=1000",
        "/v1/ledger/entries/100000000000000000000",
    ],
)
def test_huge_integers_in_log_reads_are_not_a_500(client: TestClient, keys: Keys, url: str) -> None:
    response = client.get(url, headers=keys.headers("audit"))
    assert response.status_code in (200, 404, 422), response.text


# --- proofs -------------------------------------------------------------------------------


def test_inclusion_proofs_verify_against_checkpoint_roots(
    client: TestClient, keys: Keys, history: list[Checkpoint]
) -> None:
    leaves = leaf_hashes(client, keys)
    headers = keys.headers("audit")
    latest = history[-1]
    for index in range(latest.size):
        response = client.get(
            "/v1/ledger/proofs/inclusion", params={"index": index}, headers=headers
        )
        assert response.status_code == 200, response.text
        proof = response.json()
        assert proof["tree_size"] == latest.size
        assert proof["index"] == index
        leaf = base64.b64decode(proof["leaf_hash"])
        assert leaf == leaves[index]
        hashes = [base64.b64decode(node) for node in proof["hashes"]]
        merkle.verify_inclusion(leaf, index, latest.size, hashes, latest.root)
    for checkpoint in history[:-1]:
        for index in range(checkpoint.size):
            proof = client.get(
                "/v1/ledger/proofs/inclusion",
                params={"index": index, "tree_size": checkpoint.size},
                headers=headers,
            ).json()
            assert proof["tree_size"] == checkpoint.size
            hashes = [base64.b64decode(node) for node in proof["hashes"]]
            merkle.verify_inclusion(leaves[index], index, checkpoint.size, hashes, checkpoint.root)


def test_consistency_proofs_verify_between_checkpoints(
    client: TestClient, keys: Keys, history: list[Checkpoint]
) -> None:
    headers = keys.headers("audit")
    for old in history:
        for new in history:
            if old.size > new.size:
                continue
            response = client.get(
                "/v1/ledger/proofs/consistency",
                params={"old_size": old.size, "new_size": new.size},
                headers=headers,
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["old_size"], body["new_size"]) == (old.size, new.size)
            hashes = [base64.b64decode(node) for node in body["hashes"]]
            merkle.verify_consistency(old.size, new.size, old.root, new.root, hashes)
    empty = client.get(
        "/v1/ledger/proofs/consistency",
        params={"old_size": 0, "new_size": history[-1].size},
        headers=headers,
    ).json()
    assert empty["hashes"] == []
    merkle.verify_consistency(0, history[-1].size, EMPTY_ROOT, history[-1].root, [])


def test_proofs_over_more_than_a_tile(
    client: TestClient, keys: Keys, big: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    headers = keys.headers("audit")
    leaves = leaf_hashes(client, keys)
    latest = checkpoint_of(client, keys, verifier)
    assert latest.size == len(leaves) == 302
    assert latest.root == mth(leaves)
    for index in (0, 1, 255, 256, 257, 301):
        proof = client.get(
            "/v1/ledger/proofs/inclusion", params={"index": index}, headers=headers
        ).json()
        hashes = [base64.b64decode(node) for node in proof["hashes"]]
        merkle.verify_inclusion(leaves[index], index, latest.size, hashes, latest.root)
    for old_size in (1, 2, 3, 100, 102, 255, 256, 257, 301, 302):
        proof = client.get(
            "/v1/ledger/proofs/consistency",
            params={"old_size": old_size, "new_size": latest.size},
            headers=headers,
        ).json()
        hashes = [base64.b64decode(node) for node in proof["hashes"]]
        merkle.verify_consistency(
            old_size, latest.size, mth(leaves[:old_size]), latest.root, hashes
        )


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        ("inclusion", {"index": 3}, "index"),  # index >= tree size (3)
        ("inclusion", {"index": 1, "tree_size": 1}, "index"),
        ("inclusion", {"index": 0, "tree_size": 4}, "tree_size"),
        ("inclusion", {"index": -1}, "index"),
        ("inclusion", {"index": 0, "tree_size": 0}, "tree_size"),
        ("inclusion", {}, "index"),
        ("consistency", {"old_size": 3, "new_size": 2}, "old_size"),
        ("consistency", {"old_size": 1, "new_size": 4}, None),
        ("consistency", {"old_size": -1, "new_size": 2}, "old_size"),
        ("consistency", {"old_size": 1}, "new_size"),
        ("consistency", {"old_size": "a", "new_size": 2}, "old_size"),
    ],
)
def test_bad_proof_parameters_are_422(
    client: TestClient,
    keys: Keys,
    ledger: ConsentLedger,
    url: str,
    params: dict[str, Any],
    field: str | None,
) -> None:
    register(client, keys, "alice")
    assert ledger.tree_size() == 3
    response = client.get(f"/v1/ledger/proofs/{url}", params=params, headers=keys.headers("audit"))
    assert_problem(response, 422, field)


# --- /tlog/ -------------------------------------------------------------------------------


def test_tlog_checkpoint_is_the_ledger_checkpoint(
    client: TestClient, keys: Keys, verifier: list[VerifierKey]
) -> None:
    register(client, keys, "alice")
    tlog = client.get("/tlog/checkpoint", headers=keys.headers("audit"))
    assert tlog.status_code == 200, tlog.text
    assert tlog.headers["content-type"].startswith("text/plain")
    assert "no-cache" in tlog.headers["cache-control"]
    ledger_note = client.get("/v1/ledger/checkpoint", headers=keys.headers("audit")).text
    assert tlog.text == ledger_note
    assert open_checkpoint(tlog.text, verifier).size == 3


def test_partial_tiles(client: TestClient, keys: Keys) -> None:
    for name in ("alice", "bob", "carol"):
        register(client, keys, name)
    headers = keys.headers("audit")
    leaves = leaf_hashes(client, keys)
    entries = all_entries(client, keys)
    assert len(leaves) == 5
    for width in range(1, 6):
        tile = client.get(f"/tlog/tile/0/000.p/{width}", headers=headers)
        assert tile.status_code == 200, tile.text
        assert tile.headers["content-type"] == "application/octet-stream"
        assert "immutable" not in tile.headers["cache-control"]
        assert len(tile.content) == width * 32
        assert tile.content == b"".join(leaves[:width])

        bundle = client.get(f"/tlog/tile/entries/000.p/{width}", headers=headers)
        assert bundle.status_code == 200, bundle.text
        assert split_bundle(bundle.content) == [
            base64.b64decode(entry["canonical"]) for entry in entries[:width]
        ]
    assert_problem(client.get("/tlog/tile/0/000.p/6", headers=headers), 404)
    assert_problem(client.get("/tlog/tile/entries/000.p/6", headers=headers), 404)
    assert_problem(client.get("/tlog/tile/0/000", headers=headers), 404)
    assert_problem(client.get("/tlog/tile/0/001.p/1", headers=headers), 404)
    assert_problem(client.get("/tlog/tile/1/000.p/1", headers=headers), 404)


def split_bundle(data: bytes) -> list[bytes]:
    """C2SP entry bundle: each entry as a big-endian uint16 length, then its bytes."""
    out = []
    position = 0
    while position < len(data):
        (length,) = struct.unpack(">H", data[position : position + 2])
        out.append(data[position + 2 : position + 2 + length])
        position += 2 + length
    assert position == len(data)
    return out


def test_full_tiles_are_immutable(client: TestClient, keys: Keys, big: ConsentLedger) -> None:
    headers = keys.headers("audit")
    leaves = leaf_hashes(client, keys)
    entries = all_entries(client, keys)

    full = client.get("/tlog/tile/0/000", headers=headers)
    assert full.status_code == 200, full.text
    assert full.content == b"".join(leaves[:256])
    assert "immutable" in full.headers["cache-control"]
    assert "max-age" in full.headers["cache-control"]

    rest = client.get("/tlog/tile/0/001.p/46", headers=headers)
    assert rest.status_code == 200, rest.text
    assert rest.content == b"".join(leaves[256:302])
    assert "no-cache" in rest.headers["cache-control"]

    # Level 1 holds the level-8 hashes: the root of each full run of 256 leaves.
    level1 = client.get("/tlog/tile/1/000.p/1", headers=headers)
    assert level1.status_code == 200, level1.text
    assert level1.content == mth(leaves[:256])

    bundle = client.get("/tlog/tile/entries/000", headers=headers)
    assert bundle.status_code == 200, bundle.text
    assert "immutable" in bundle.headers["cache-control"]
    assert split_bundle(bundle.content) == [
        base64.b64decode(entry["canonical"]) for entry in entries[:256]
    ]
    tail = client.get("/tlog/tile/entries/001.p/46", headers=headers)
    assert split_bundle(tail.content) == [
        base64.b64decode(entry["canonical"]) for entry in entries[256:]
    ]
    for missing in ("0/001", "0/001.p/47", "0/002.p/1", "entries/001", "1/000", "2/000.p/1"):
        assert_problem(client.get(f"/tlog/tile/{missing}", headers=headers), 404)


@pytest.mark.parametrize(
    "path",
    [
        "zz",
        "0",
        "0/",
        "0/1",
        "0/0000",
        "0/x000",
        "0/000/",
        "0/000.p",
        "0/000.p/0",
        "0/000.p/256",
        "0/000.p/abc",
        "0/000.p/01",
        "9/000",
        "-1/000",
        "entries",
        "entries/abc",
        "0/x1/000",
        "0/000.x/1",
    ],
)
def test_bad_tile_paths_are_422(client: TestClient, keys: Keys, path: str) -> None:
    assert_problem(client.get(f"/tlog/tile/{path}", headers=keys.headers("audit")), 422)


def test_huge_tile_index_is_404(client: TestClient, keys: Keys) -> None:
    path = "/tlog/tile/0/x999/x999/x999/x999/x999/x999/x999/999"
    assert_problem(client.get(path, headers=keys.headers("audit")), 404)


def test_public_log_serves_tlog_without_a_key(
    ledger: ConsentLedger, keys: Keys, verifier: list[VerifierKey]
) -> None:
    public = ConsentLedger(ledger.settings.model_copy(update={"public_log": True}))
    try:
        with TestClient(create_app(ledger=public), raise_server_exceptions=False) as client:
            note = client.get("/tlog/checkpoint")
            assert note.status_code == 200, note.text
            assert open_checkpoint(note.text, verifier).size == ledger.tree_size()
            tile = client.get("/tlog/tile/0/000.p/2")
            assert tile.status_code == 200, tile.text
            assert len(tile.content) == 64
            assert client.get("/tlog/tile/entries/000.p/2").status_code == 200
            # Only the tiles are public: the API's own log reads still need `audit`.
            for url in (
                "/v1/ledger/checkpoint",
                "/v1/ledger/entries",
                "/v1/ledger/entries/0",
                "/v1/ledger/proofs/inclusion?index=0",
                "/v1/ledger/proofs/consistency?old_size=1&new_size=2",
                "/metrics",
            ):
                assert_problem(client.get(url), 401)
                assert_problem(client.get(url, headers=keys.headers("check")), 403)
    finally:
        public.close()


def test_private_log_needs_the_audit_scope_for_tiles(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get("/tlog/checkpoint"), 401)
    assert_problem(client.get("/tlog/tile/0/000.p/1"), 401)
    assert_problem(client.get("/tlog/tile/0/000.p/1", headers=keys.headers("read")), 403)
    assert client.get("/tlog/tile/0/000.p/1", headers=keys.headers("audit")).status_code == 200
