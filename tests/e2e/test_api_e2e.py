"""The API's acceptance criteria over real HTTP, against `consent-ledger serve --workers 2`.

Runs on SQLite and on PostgreSQL. Each test gets its own deployment (see
conftest.py): `init`, one `clients create` per scope, and `serve`, all as
subprocesses, with the keys taken from the commands' output.

Receipts are checked twice: by `consent-ledger verify-bundle` in a subprocess,
and by an independent verifier (independent.py) written from the public
specifications alone (C2SP signed-note and tlog-checkpoint, RFC 9162 §2.1),
with nothing but `cryptography` and `hashlib` — no code from `ledger/`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.e2e.conftest import SCOPES, Deployment, run_cli
from tests.e2e.independent import (
    Rejected,
    flip_canonical_byte,
    independent_verify,
    leaf_hash,
    open_signed_note,
    parse_checkpoint,
    parse_verifier_key,
    verify_consistency,
    verify_inclusion,
)

pytestmark = pytest.mark.slow

PROBLEM_JSON = "application/problem+json"


def test_the_independent_verifier_on_rfc6962_vectors() -> None:
    """The verifier above is itself checked on the shared known-answer vectors."""
    tests = Path(__file__).resolve().parents[1]
    candidates = [tests / "vectors", tests.parents[1] / "shared" / "vectors"]
    vectors = next((c / "rfc6962.json" for c in candidates if (c / "rfc6962.json").exists()), None)
    if vectors is None:
        pytest.skip(f"no rfc6962.json in {candidates}")
    document = json.loads(vectors.read_text())
    leaves = [leaf_hash(bytes.fromhex(leaf)) for leaf in document["leaf_inputs"]]
    assert [leaf.hex() for leaf in leaves] == document["leaf_hashes"]
    roots = [bytes.fromhex(root) for root in document["roots_by_size"]]
    for case in document["inclusion"]:
        proof = [bytes.fromhex(node) for node in case["proof"]]
        index, size = case["index"], case["tree_size"]
        assert verify_inclusion(index, size, leaves[index], proof, roots[size])
        assert not verify_inclusion(index, size, leaves[index - 1], proof, roots[size])
        if proof:
            assert not verify_inclusion(index, size, leaves[index], proof[:-1], roots[size])
    for case in document["consistency"]:
        proof = [bytes.fromhex(node) for node in case["proof"]]
        old, new = case["old_size"], case["new_size"]
        assert verify_consistency(old, new, roots[old], roots[new], proof)
        assert not verify_consistency(old, new, roots[old - 1], roots[new], proof)
        assert not verify_consistency(old, new, roots[old], roots[new - 1], proof)


# --- helpers -------------------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON, response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def tree_size(deployment: Deployment) -> int:
    response = httpx.get(
        deployment.base + "/v1/ledger/checkpoint",
        headers={"Authorization": f"Bearer {deployment.admin_key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return int(response.text.split("\n")[1])


def verify_bundle_cli(deployment: Deployment, path: Path, key: str | None = None) -> int:
    # No database and no home: offline, with nothing but the file and the key.
    env = {name: value for name, value in deployment.env.items() if not name.startswith("CONSENT_")}
    env["CONSENT_LEDGER_HOME"] = str(path.parent / "no-such-home")
    env["CONSENT_LEDGER_DATABASE_URL"] = "sqlite:////nonexistent/ledger.db"
    result = run_cli(env, "verify-bundle", str(path), "--key", key or deployment.verifier_key)
    return result.returncode


# --- 1. scopes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    scope: str
    ok: tuple[int, ...]
    json: Any = None
    content: bytes | None = None

    def send(self, deployment: Deployment, headers: dict[str, str]) -> httpx.Response:
        # A new connection per request, so that calls land on both workers.
        with httpx.Client(base_url=deployment.base, timeout=30) as http:
            return http.request(
                self.method, self.path, json=self.json, content=self.content, headers=headers
            )


def test_each_scope_admits_its_endpoints_and_no_other(deployment: Deployment) -> None:
    admin = {"Authorization": f"Bearer {deployment.admin_key}"}
    with deployment.http() as http:
        for subject in ("scoped", "scoped-erase"):
            made = http.put(f"/v1/subjects/{subject}", json={"jurisdiction": "US"}, headers=admin)
            assert made.status_code == 201, made.text
        policy = http.get("/v1/policy", headers=admin).json()
    newer_policy = {**policy, "version": policy["version"] + 1}
    decision = {"decisions": [{"category": "profile", "decision": "granted"}]}
    calls = [
        Call(
            "POST",
            "/v1/eligibility/check",
            "check",
            (200,),
            {"subject_id": "scoped", "category": "profile"},
        ),
        Call(
            "POST",
            "/v1/eligibility/batch",
            "check",
            (200,),
            {"items": [{"subject_id": "scoped", "category": "profile"}]},
        ),
        Call(
            "POST",
            "/v1/eligibility/stream",
            "check",
            (200,),
            content=b'{"subject_id":"scoped","category":"profile"}\n',
        ),
        Call("PUT", "/v1/subjects/scoped", "record", (200,), {"jurisdiction": "CA"}),
        Call("POST", "/v1/subjects/scoped/consents", "record", (201,), decision),
        Call("GET", "/v1/subjects/scoped/consents", "read", (200,)),
        Call("GET", "/v1/subjects/scoped/history", "read", (200,)),
        Call("GET", "/v1/policy", "read", (200,)),
        Call("GET", "/v1/ledger/checkpoint", "audit", (200,)),
        Call("GET", "/v1/ledger/entries?start=0&limit=5", "audit", (200,)),
        Call("GET", "/v1/ledger/entries/0", "audit", (200,)),
        Call("GET", "/v1/ledger/proofs/inclusion?index=0", "audit", (200,)),
        Call("GET", "/v1/ledger/proofs/consistency?old_size=1&new_size=2", "audit", (200,)),
        Call("GET", "/tlog/checkpoint", "audit", (200,)),
        Call("GET", "/tlog/tile/0/000.p/2", "audit", (200,)),
        Call("GET", "/tlog/tile/entries/000.p/2", "audit", (200,)),
        Call("GET", "/metrics", "audit", (200,)),
        Call("DELETE", "/v1/subjects/scoped-erase", "admin", (200,)),
        Call("PUT", "/v1/policy", "admin", (201,), newer_policy),
    ]
    assert {call.scope for call in calls} == set(SCOPES)
    size_before = tree_size(deployment)
    bogus = "clk_0123456789abcdef_" + "A" * 43
    for call in calls:
        where = f"{call.method} {call.path}"
        for headers in ({}, {"Authorization": f"Bearer {bogus}"}, {"Authorization": "Basic eDp5"}):
            response = call.send(deployment, headers)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer"), where
        for scope in SCOPES:
            if scope != call.scope:
                response = call.send(deployment, deployment.headers(scope))
                body = assert_problem(response, 403)
                assert call.scope in body["detail"], (where, body)
    # Refused calls changed nothing.
    assert tree_size(deployment) == size_before
    for call in calls:
        response = call.send(deployment, deployment.headers(call.scope))
        assert response.status_code in call.ok, (call.method, call.path, response.text)
    assert tree_size(deployment) > size_before

    # No key is needed for health, readiness and the API description.
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert httpx.get(deployment.base + path, timeout=30).status_code == 200, path

    # Revoking a client with the CLI while the server runs: 401 on every worker from then on.
    revoked = run_cli(deployment.env, "clients", "revoke", "only-read")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    for _ in range(6):
        response = httpx.get(
            deployment.base + "/v1/policy", headers=deployment.headers("read"), timeout=30
        )
        assert_problem(response, 401)


# --- 2. receipts -----------------------------------------------------------------------------


def test_writes_return_receipts_that_verify_offline(deployment: Deployment, tmp_path: Path) -> None:
    record = deployment.headers("record")
    receipts: list[dict[str, Any]] = []
    with deployment.http() as http:
        for subject, jurisdiction, minor in (
            ("alice", "FR", False),
            ("bob", "US", False),
            ("carol", None, True),
        ):
            body = {"jurisdiction": jurisdiction, "minor": minor}
            made = http.put(f"/v1/subjects/{subject}", json=body, headers=record)
            assert made.status_code == 201, made.text
            receipts.append(made.json())
            again = http.put(f"/v1/subjects/{subject}", json=body, headers=record)
            assert again.status_code == 200, again.text

        decisions = [
            {"category": "content.public", "decision": "granted"},
            {
                "category": "biometric.face",
                "decision": "granted",
                "explicit": True,
                "notice": "privacy-policy-2026-11",
            },
            {"category": "content.public", "purpose": "third-party-sharing", "decision": "denied"},
        ]
        written = http.post(
            "/v1/subjects/alice/consents",
            json={"decisions": decisions},
            headers={**record, "Idempotency-Key": "alice-1"},
        )
        assert written.status_code == 201, written.text
        receipts.append(written.json())
        size_after = tree_size(deployment)
        retry = http.post(
            "/v1/subjects/alice/consents",
            json={"decisions": decisions},
            headers={**record, "Idempotency-Key": "alice-1"},
        )
        assert retry.status_code == 201, retry.text
        assert retry.json() == written.json()
        assert tree_size(deployment) == size_after  # the retry appended nothing

        later = http.post(
            "/v1/subjects/bob/consents",
            json={"decisions": [{"category": "profile", "decision": "withdrawn"}]},
            headers=record,
        )
        assert later.status_code == 201, later.text
        receipts.append(later.json())

    # Each receipt: the CLI and the independent verifier accept it, and refuse it tampered.
    sizes = []
    files: list[tuple[Path, int]] = []
    for position, receipt in enumerate(receipts):
        bundle = receipt["receipt"]
        assert bundle["verifier_key"] == deployment.verifier_key
        size, _ = independent_verify(bundle, deployment.verifier_key)
        assert size == receipt["token"]
        sizes.append(size)
        tampered = flip_canonical_byte(bundle)
        with pytest.raises(Rejected):
            independent_verify(tampered, deployment.verifier_key)
        good, bad = tmp_path / f"receipt-{position}.json", tmp_path / f"tampered-{position}.json"
        good.write_text(json.dumps(bundle))
        bad.write_text(json.dumps(tampered))
        files += [(good, 0), (bad, 1)]
    # A key that merely claims the ledger's name is not trusted.
    impostor_raw = b"\x01" + Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )
    name = deployment.verifier_key.split("+")[0]
    impostor_id = hashlib.sha256(name.encode() + b"\n" + impostor_raw).digest()[:4].hex()
    impostor = f"{name}+{impostor_id}+{base64.b64encode(impostor_raw).decode()}"
    with pytest.raises(Rejected):
        independent_verify(receipts[0]["receipt"], impostor)
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda item: verify_bundle_cli(deployment, item[0]), files))
        impostor_code = verify_bundle_cli(deployment, files[0][0], impostor)
    assert codes == [expected for _, expected in files]
    assert impostor_code == 1
    assert sizes == sorted(set(sizes))

    # What the receipts say, and what they do not: the raw subject id is never in the log.
    consent_entries = [item["entry"] for item in receipts[3]["receipt"]["entries"]]
    assert [entry["kind"] for entry in consent_entries] == ["consent.recorded"] * 3
    assert [entry["data"]["category"] for entry in consent_entries] == [
        "content.public",
        "biometric.face",
        "content.public",
    ]
    assert consent_entries[1]["data"]["explicit"] is True
    assert {entry["actor"] for entry in consent_entries} == {"only-record"}
    for receipt in receipts:
        for item in receipt["receipt"]["entries"]:
            raw = base64.b64decode(item["canonical"])
            for subject in (b"alice", b"bob", b"carol"):
                assert subject not in raw

    # The writes are visible at their token on every worker (a new connection per check).
    check = deployment.headers("check")
    expected = {
        ("alice", "content.public", None): (True, "consent"),
        ("alice", "biometric.face", None): (True, "consent"),
        ("alice", "content.public", "third-party-sharing"): (False, "refused"),
        ("alice", "profile", None): (False, "default-deny"),
        ("bob", "profile", None): (False, "withdrawn"),
        ("bob", "content.public", None): (True, "default-allow"),
        ("carol", "content.public", None): (False, "minor"),
        ("dave", "content.public", None): (False, "unknown-subject"),
    }
    for _round in range(3):
        for (subject, category, purpose), (eligible, reason) in expected.items():
            body = {"subject_id": subject, "category": category, "at_least_as_fresh": sizes[-1]}
            if purpose:
                body["purpose"] = purpose
            answer = httpx.post(
                deployment.base + "/v1/eligibility/check", json=body, headers=check, timeout=30
            )
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert (got["eligible"], got["reason"]) == (eligible, reason), (subject, category)
            assert got["checked_at"] >= sizes[-1]

    # The subject's history is one bundle of all its entries, and it verifies too.
    history = httpx.get(
        deployment.base + "/v1/subjects/alice/history",
        headers=deployment.headers("read"),
        timeout=30,
    )
    assert history.status_code == 200, history.text
    independent_verify(history.json(), deployment.verifier_key)
    alice_indices = [item["index"] for item in receipts[0]["receipt"]["entries"]]
    alice_indices += [item["index"] for item in receipts[3]["receipt"]["entries"]]
    assert [item["index"] for item in history.json()["entries"]] == alice_indices

    # The receipts' checkpoints are consistent with one another (RFC 9162 §2.1.4).
    key = parse_verifier_key(deployment.verifier_key)
    roots = [
        parse_checkpoint(open_signed_note(r["receipt"]["checkpoint"], key), key.name)
        for r in receipts
    ]
    audit = deployment.headers("audit")
    for (old_size, old_root), (new_size, new_root) in zip(roots, roots[1:], strict=False):
        proof = httpx.get(
            deployment.base + "/v1/ledger/proofs/consistency",
            params={"old_size": old_size, "new_size": new_size},
            headers=audit,
            timeout=30,
        ).json()
        hashes = [base64.b64decode(node) for node in proof["hashes"]]
        assert verify_consistency(old_size, new_size, old_root, new_root, hashes)
        assert not verify_consistency(old_size, new_size, new_root, new_root, hashes)


# --- 3. batches ----------------------------------------------------------------------------

BAD_ITEMS: list[tuple[Any, str]] = [
    ({"subject_id": "b-0", "category": "dms"}, "category"),
    ({"subject_id": "b-0", "category": "profile", "purpose": "marketing"}, "purpose"),
    ({"category": "profile"}, "subject_id"),
    ({"subject_id": 42, "category": "profile"}, "subject_id"),
    ({"subject_id": "", "category": "profile"}, "subject_id"),
    ({"subject_id": "x" * 257, "category": "profile"}, "subject_id"),
    ({"subject_id": "b-0", "category": None}, "category"),
    ({"subject_id": "b-0", "category": "*"}, "category"),
]
CATEGORIES = ("content.public", "profile", "profile.employment", "biometric", "content.private")
PURPOSES = (None, "ai-training", "ai-inference", "data-mining")


def test_a_full_batch_answers_in_order_with_per_item_errors(deployment: Deployment) -> None:
    rng = random.Random(7)
    record = deployment.headers("record")
    subjects = [f"b-{n}" for n in range(20)]
    with deployment.http() as http:
        for n, subject in enumerate(subjects):
            body = {"jurisdiction": ("US", "DE", None, "BR")[n % 4], "minor": n % 7 == 6}
            assert http.put(f"/v1/subjects/{subject}", json=body, headers=record).is_success
            if n % 3 == 0:
                decisions = [
                    {
                        "category": rng.choice(CATEGORIES),
                        "decision": rng.choice(["granted", "denied", "withdrawn"]),
                        "explicit": n % 2 == 0,
                    }
                    for _ in range(3)
                ]
                written = http.post(
                    f"/v1/subjects/{subject}/consents",
                    json={"decisions": decisions},
                    headers=record,
                )
                assert written.status_code == 201, written.text

    items: list[Any] = []
    expected_error: dict[int, str] = {}
    for position in range(10_000):
        if position % 97 == 13:
            bad, field_name = BAD_ITEMS[(position // 97) % len(BAD_ITEMS)]
            items.append({"id": position, **bad})
            expected_error[position] = field_name
        elif position % 1009 == 500:
            items.append(["not", "an", "object"])
            expected_error[position] = "item"
        else:
            item: dict[str, Any] = {
                "id": position,
                "subject_id": rng.choice([*subjects, "nobody"]),
                "category": rng.choice(CATEGORIES),
            }
            purpose = rng.choice(PURPOSES)
            if purpose:
                item["purpose"] = purpose
            items.append(item)
    assert len(expected_error) > 100

    check = deployment.headers("check")
    with deployment.http(timeout=120) as http:
        response = http.post("/v1/eligibility/batch", json={"items": items}, headers=check)
        assert response.status_code == 200, response.text[:2000]
        answer = response.json()
        assert set(answer) == {"checked_at", "at", "checkpoint", "policy_version", "results"}
        results = answer["results"]
        assert len(results) == len(items)
        key = parse_verifier_key(deployment.verifier_key)
        size, _ = parse_checkpoint(open_signed_note(answer["checkpoint"], key), key.name)
        assert size >= answer["checked_at"]

        distinct: dict[tuple[str, str, str | None], tuple[bool, str, int | None]] = {}
        for position, (item, result) in enumerate(zip(items, results, strict=True)):
            if isinstance(item, dict):
                assert result["id"] == position, (position, result)
            else:
                assert "id" not in result
            if position in expected_error:
                assert set(result) <= {"id", "error"}, (position, result)
                assert result["error"]["field"] == expected_error[position], (position, result)
                assert result["error"]["message"]
                continue
            assert set(result) == {"id", "eligible", "reason", "decided_by"}, result
            triple = (item["subject_id"], item["category"], item.get("purpose"))
            seen = (result["eligible"], result["reason"], result["decided_by"])
            assert distinct.setdefault(triple, seen) == seen, triple

        # Each distinct question, asked alone at the same tree size and time, answers the same.
        for (subject, category, purpose), seen in sorted(
            distinct.items(), key=lambda kv: str(kv[0])
        )[:60]:
            single = http.post(
                "/v1/eligibility/check",
                json={
                    "subject_id": subject,
                    "category": category,
                    "purpose": purpose,
                    "as_of": answer["checked_at"],
                    "at": answer["at"],
                },
                headers=check,
            )
            assert single.status_code == 200, single.text
            got = single.json()
            assert (got["eligible"], got["reason"], got["decided_by"]) == seen
        reasons = {reason for _, reason, _ in distinct.values()}
        assert {"unknown-subject", "prohibited", "minor"} <= reasons, reasons

        too_many = items + items[:1_000]
        assert len(too_many) == 11_000
        refused = http.post("/v1/eligibility/batch", json={"items": too_many}, headers=check)
        body = assert_problem(refused, 413)
        assert "10000" in body["detail"].replace(",", ""), body


# --- concurrent writers on both workers ----------------------------------------------------


def test_concurrent_writes_on_both_workers_keep_one_log(
    deployment: Deployment, tmp_path: Path
) -> None:
    record = deployment.headers("record")
    decisions = {
        "decisions": [
            {"category": "profile", "decision": "granted"},
            {"category": "activity", "decision": "denied"},
        ]
    }
    with deployment.http() as http:
        assert http.put(
            "/v1/subjects/racer", json={"jurisdiction": "US"}, headers=record
        ).is_success
    first = httpx.get(
        deployment.base + "/v1/ledger/checkpoint", headers=deployment.headers("audit"), timeout=30
    ).text
    saved = tmp_path / "first.checkpoint"
    saved.write_text(first)
    size_before = tree_size(deployment)

    # The same Idempotency-Key from 24 clients at once (new connections: both workers).
    def retry(_: int) -> httpx.Response:
        return httpx.post(
            deployment.base + "/v1/subjects/racer/consents",
            json=decisions,
            headers={**record, "Idempotency-Key": "one-decision-only"},
            timeout=60,
        )

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(retry, range(24)))
    assert {answer.status_code for answer in answers} == {201}, [a.text for a in answers][:3]
    assert len({answer.text for answer in answers}) == 1
    assert tree_size(deployment) == size_before + 2

    # 100 subjects written by 12 clients at once: every receipt verifies, no seq twice.
    def write(n: int) -> list[dict[str, Any]]:
        with httpx.Client(base_url=deployment.base, timeout=60) as http:
            made = http.put(f"/v1/subjects/w-{n}", json={"jurisdiction": "DE"}, headers=record)
            written = http.post(f"/v1/subjects/w-{n}/consents", json=decisions, headers=record)
        assert made.status_code == 201, made.text
        assert written.status_code == 201, written.text
        return [made.json(), written.json()]

    with ThreadPoolExecutor(12) as pool:
        receipts = [receipt for pair in pool.map(write, range(100)) for receipt in pair]
    indices = []
    for receipt in receipts:
        size, _ = independent_verify(receipt["receipt"], deployment.verifier_key)
        assert size == receipt["token"]
        indices += [item["index"] for item in receipt["receipt"]["entries"]]
    assert len(indices) == len(set(indices)) == 300
    size_after = tree_size(deployment)
    assert sorted(indices) == list(range(size_before + 2, size_after))

    # `verify` (a subprocess, on the live database) recomputes everything and proves
    # the log consistent with the checkpoint saved before the writes.
    verified = run_cli(deployment.env, "verify", "--checkpoint", str(saved))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"consistent with saved checkpoint of size {size_before}" in verified.stdout
