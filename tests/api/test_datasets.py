"""Datasets over HTTP (SPEC §7): builds streamed in, obligations, purges, proofs, retirement,
and the obligation sweeper that `serve` runs."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.routes import datasets as routes
from ledger.consent.datasets import STATUSES, due_time
from ledger.datasets.obligations import INLINE_POLICY_BUDGET
from ledger.errors import NotFound, ReadOnlyDatabase, VerificationError
from ledger.service import BuildItem, ConsentLedger
from ledger.service import datasets as service
from ledger.settings import Settings
from ledger.tlog.canonical import canonical_bytes
from ledger.tlog.evidence import EvidenceBundle, verify_bundle
from ledger.tlog.merkle import leaf_hash, verify_inclusion
from ledger.tlog.notes import VerifierKey, unb64
from tests.api.helpers import Keys, assert_problem, auth, record, register

BUILD = "/v1/datasets/posts-train/versions/1"
NDJSON = {"content-type": "application/x-ndjson"}


def ndjson(*items: dict[str, Any] | bytes) -> bytes:
    return b"".join(
        (item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in items
    )


def post_build(
    client: TestClient, keys: Keys, body: bytes, path: str = BUILD, **params: Any
) -> list[dict[str, Any]]:
    """Stream a build; its answer lines (the last one the build's receipt, or its error)."""
    response = client.post(
        path, content=body, params=params, headers={**keys.headers("record"), **NDJSON}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in response.content.splitlines()]


def verified(document: Any, verifier: list[VerifierKey], kind: str) -> dict[str, Any]:
    """The one entry of an evidence bundle checked with the verifier key alone."""
    bundle = EvidenceBundle.from_json(document)
    verify_bundle(bundle, verifier)
    (item,) = bundle.entries
    assert item.entry["kind"] == kind
    entry: dict[str, Any] = item.entry
    return entry


def entry_of(write: dict[str, Any]) -> dict[str, Any]:
    """The (last) entry a write's receipt holds."""
    entry: dict[str, Any] = write["receipt"]["entries"][-1]["entry"]
    return entry


# --- the whole course of a build --------------------------------------------------------------


def test_build_obligations_purge_proof_and_retirement(
    client: TestClient, keys: Keys, ledger: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    read = keys.headers("read")
    for subject in ("u0", "u1", "u2", "u3"):
        register(client, keys, subject, jurisdiction="US")  # opt-out: content.public allowed
    register(client, keys, "eu", jurisdiction="FR")  # opt-in: nothing without consent
    register(client, keys, "kid", jurisdiction="US", minor=True)

    # 1. The build: every record answered on its line, the eligible ones recorded.
    lines = post_build(
        client,
        keys,
        ndjson(
            {"record_id": "post-1", "subject_id": "u0", "category": "content.public"},
            {"record_id": "post-2", "subject_id": "u1", "category": "content.public"},
            {"record_id": "post-3", "subject_id": "u1", "category": ["profile", "content.public"]},
            {"record_id": "post-4", "subject_id": "u2", "category": "content.public|profile"},
            {"record_id": "post-5", "subject_id": "u3", "category": "profile"},
            {"record_id": "post-6", "subject_id": "eu", "category": "content.public"},
            {"record_id": "post-7", "subject_id": "kid", "category": "content.public"},
            {
                "record_id": "post-8",
                "subject_id": "u0",
                "category": "profile",
                "purpose": "ai-training",
            },
        ),
    )
    *answers, last = lines
    assert answers == [
        {
            "line": n,
            "record_id": f"post-{n}",
            "eligible": n not in (6, 7),
            "reason": reason,
            "decided_by": None,
        }
        for n, reason in enumerate(
            ["default-allow"] * 5 + ["default-deny", "minor", "default-allow"], start=1
        )
    ]
    summary = last["build"]
    recorded = verified(last["receipt"], verifier, "dataset.recorded")
    assert summary == {
        "dataset": "posts-train",
        "version": "1",
        "purpose": "ai-training",
        "seq": recorded["seq"],
        "records": 6,
        "lines": 8,
        "errors": 0,
        "dropped": {"default-deny": 1, "minor": 1},
        "checked_at": recorded["seq"],
        "at": recorded["data"]["at"],
        "policy_version": 1,
        "members_root": recorded["data"]["members_root"],
    }
    assert recorded["data"]["records"] == 6

    # 2. Consent goes away: a withdrawal, an erasure, a subject who turns out to be a minor.
    withdrawal = entry_of(
        record(client, keys, "u1", {"category": "content.public", "decision": "withdrawn"})
    )
    erased = client.delete("/v1/subjects/u2", headers=keys.headers("admin"))
    assert erased.status_code == 200, erased.text
    erasure = entry_of(erased.json())
    minor = entry_of(register(client, keys, "u3", jurisdiction="US", minor=True))

    def obligation(record_id: str | None, reason: str, cause: dict[str, Any]) -> dict[str, Any]:
        return {
            "dataset": "posts-train",
            "version": "1",
            "record_id": record_id,
            "reason": reason,
            "cause": cause["seq"],
            "cause_time": cause["time"],
            "due": due_time(cause["time"], 30),
            "status": "open",
            "closed_by": None,
            "closed_time": None,
        }

    opened = [
        obligation("post-2", "withdrawn", withdrawal),
        obligation("post-3", "withdrawn", withdrawal),
        obligation("post-4", "erased", erasure),
        obligation("post-5", "minor", minor),
    ]
    listing = client.get("/v1/datasets/posts-train/obligations", headers=read)
    assert listing.status_code == 200, listing.text
    assert listing.json() == {"obligations": opened, "next": None}
    assert listing.json() == ledger.obligations("posts-train")
    for status, expected in (("open", opened), ("overdue", []), ("fulfilled", [])):
        page = client.get(
            "/v1/datasets/posts-train/obligations",
            params={"status": status, "version": "1"},
            headers=read,
        ).json()
        assert page == {"obligations": expected, "next": None}, status
    first = client.get(
        "/v1/datasets/posts-train/obligations", params={"limit": 3}, headers=read
    ).json()
    assert first["obligations"] == opened[:3]
    rest = client.get(
        "/v1/datasets/posts-train/obligations",
        params={"limit": 3, "after": first["next"]},
        headers=read,
    ).json()
    assert rest == {"obligations": opened[3:], "next": None}

    build = client.get("/v1/datasets/posts-train", headers=read).json()["builds"]
    assert [b["obligations"] for b in build] == [
        {"open": 4, "overdue": 0, "fulfilled": 0, "cancelled": 0}
    ]
    assert build[0]["members"] == 6

    # 3. What a subject's records are in, and what must leave.
    assert client.get("/v1/subjects/u1/datasets", headers=read).json() == {
        "subject_id": "u1",
        "datasets": [
            {
                "dataset": "posts-train",
                "version": "1",
                "purpose": "ai-training",
                "records": ["post-2", "post-3"],
                "obligations": opened[:2],
            }
        ],
    }
    u0 = client.get("/v1/subjects/u0/datasets", headers=read).json()
    assert [(d["records"], d["obligations"]) for d in u0["datasets"]] == [
        (["post-1", "post-8"], [])
    ]
    assert_problem(client.get("/v1/subjects/u2/datasets", headers=read), 409)  # erased
    assert_problem(client.get("/v1/subjects/stranger/datasets", headers=read), 404)

    # 4. A member's proof, checked offline: the leaf is in the signed entry's members_root.
    for record_id, category in (
        ("post-1", "content.public"),
        ("post-3", ["content.public", "profile"]),
    ):
        proof = client.get(f"{BUILD}/members/{record_id}/proof", headers=read).json()
        assert proof["leaf"]["record"] == record_id
        assert proof["leaf"]["category"] == category
        assert proof["leaf"]["purpose"] == "ai-training"
        assert proof["records"] == 6
        entry = verified(proof["entry"], verifier, "dataset.recorded")
        assert entry["seq"] == summary["seq"]
        root = unb64(entry["data"]["members_root"])
        hashes = [unb64(h) for h in proof["hashes"]]
        verify_inclusion(
            leaf_hash(canonical_bytes(proof["leaf"])),
            proof["index"],
            proof["records"],
            hashes,
            root,
        )
        forged = {**proof["leaf"], "record": "post-9"}
        with pytest.raises(VerificationError):
            verify_inclusion(
                leaf_hash(canonical_bytes(forged)), proof["index"], proof["records"], hashes, root
            )

    # 5. The purge: four obligations fulfilled, one voluntary removal.
    purged = client.post(
        f"{BUILD}/purges",
        json={"record_ids": ["post-2", "post-3", "post-4", "post-5", "post-8"]},
        headers=keys.headers("record"),
    )
    assert purged.status_code == 201, purged.text
    purge = purged.json()
    entry = verified(purge.pop("receipt"), verifier, "dataset.purged")
    assert purge == {
        "dataset": "posts-train",
        "version": "1",
        "seq": entry["seq"],
        "records": 5,
        "fulfils": 4,
        "voluntary": 1,
        "purged_root": entry["data"]["purged_root"],
    }
    assert entry["data"]["fulfils"] == 4
    closed = {"status": "fulfilled", "closed_by": entry["seq"], "closed_time": entry["time"]}
    fulfilled = [{**o, **closed} for o in opened]
    fulfilled[2]["record_id"] = None  # the erased subject's record id goes with its purge
    assert client.get(
        "/v1/datasets/posts-train/obligations", params={"status": "fulfilled"}, headers=read
    ).json() == {"obligations": fulfilled, "next": None}
    assert client.get(
        "/v1/datasets/posts-train/obligations", params={"status": "open"}, headers=read
    ).json() == {"obligations": [], "next": None}
    assert_problem(client.get(f"{BUILD}/members/post-2/proof", headers=read), 404)
    assert client.get("/v1/subjects/u1/datasets", headers=read).json()["datasets"] == []

    shown = client.get(BUILD, headers=read).json()
    verified(shown["receipt"], verifier, "dataset.recorded")
    assert shown["build"] == ledger.dataset_build("posts-train", "1")["build"]
    assert shown["build"]["members"] == 1
    assert shown["build"]["purged"] == 5
    assert shown["build"]["obligations"]["fulfilled"] == 4

    # 6. Retirement: the build leaves everywhere; it cannot be retired or purged again.
    retired = client.delete(BUILD, headers=keys.headers("admin"))
    assert retired.status_code == 200, retired.text
    retirement = retired.json()
    entry = verified(retirement.pop("receipt"), verifier, "dataset.retired")
    assert retirement == {
        "dataset": "posts-train",
        "version": "1",
        "seq": entry["seq"],
        "fulfils": 0,
    }
    (listed,) = client.get("/v1/datasets", headers=read).json()["builds"]
    assert listed["retired"] == entry["seq"]
    assert listed["members"] == 0
    assert_problem(client.delete(BUILD, headers=keys.headers("admin")), 409)
    purge_again = client.post(
        f"{BUILD}/purges", json={"record_ids": ["post-1"]}, headers=keys.headers("record")
    )
    assert_problem(purge_again, 409)


def test_retiring_fulfils_the_open_obligations(
    client: TestClient, keys: Keys, verifier: list[VerifierKey]
) -> None:
    register(client, keys, "u", jurisdiction="US")
    post_build(client, keys, ndjson({"record_id": "a", "subject_id": "u", "category": "profile"}))
    record(client, keys, "u", {"category": "profile", "decision": "denied"})
    retired = client.delete(BUILD, headers=keys.headers("admin")).json()
    assert retired["fulfils"] == 1
    assert verified(retired["receipt"], verifier, "dataset.retired")["seq"] == retired["seq"]
    (fulfilled,) = client.get(
        "/v1/datasets/posts-train/obligations", headers=keys.headers("read")
    ).json()["obligations"]
    assert (fulfilled["record_id"], fulfilled["reason"], fulfilled["status"]) == (
        "a",
        "refused",
        "fulfilled",
    )
    assert fulfilled["closed_by"] == retired["seq"]


# --- the build stream: bad lines, refused builds ----------------------------------------------


def test_garbage_lines_are_answered_and_the_checked_records_still_recorded(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    register(client, keys, "u", jurisdiction="US")
    body = b"".join(
        [
            b'{"record_id": "a", "subject_id": "u", "category": "profile"}\n',
            b"not json at all\n",
            b"\n",  # blank: counted, not answered
            b"[1, 2]\n",
            b"x" * (routes.MAX_LINE + 1) + b"\n",
            b'{"subject_id": "u", "category": "profile"}\n',
            b'{"record_id": "b", "subject_id": "u", "category": 7}\n',
            b'{"record_id": "c", "subject_id": "u", "category": "profile",'
            b' "purpose": "ai-inference"}\n',
            b'{"record_id": "d", "subject_id": "u", "category": "no-such-category"}\n',
            b'{"record_id": "e", "subject_id": 42, "category": "profile"}\n',
            b'{"record_id": 17, "subject_id": "nobody", "category": "profile"}\n',
            b'{"record_id": "f", "subject_id": "u", "category": "activity"}',  # no final newline
        ]
    )
    *answers, last = post_build(client, keys, body)
    errors = {a["line"]: a["error"]["field"] for a in answers if "error" in a}
    assert errors == {
        2: "line",
        4: "line",
        5: "line",
        6: "record_id",
        7: "category",
        8: "purpose",
        9: "category",
        10: "subject_id",
    }
    by_line = {a["line"]: a for a in answers}
    assert by_line[5]["error"]["message"] == f"line longer than {routes.MAX_LINE} bytes"
    assert by_line[4]["error"]["message"] == "each line must be a JSON object"
    assert by_line[1] == {
        "line": 1,
        "record_id": "a",
        "eligible": True,
        "reason": "default-allow",
        "decided_by": None,
    }
    assert by_line[11]["record_id"] == "17"
    assert by_line[11]["reason"] == "unknown-subject"
    assert by_line[12]["record_id"] == "f"
    assert sorted(by_line) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12]

    build = last["build"]
    assert build["records"] == 2
    assert build["dropped"] == {"unknown-subject": 1}
    shown = client.get(BUILD, headers=keys.headers("read")).json()["build"]
    assert (shown["records"], shown["members"]) == (2, 2)
    assert ledger.member_proof("posts-train", "1", "f")["leaf"]["category"] == "activity"


@pytest.mark.parametrize(
    ("record_ids", "named"),
    [
        (["ok", "r" * 257], "r" * 80),  # too long: refused, naming them (shortened)
        (["ok", "same", "other", "same"], "'same'"),  # repeated
    ],
)
def test_a_refused_build_ends_with_a_problem_and_records_nothing(
    client: TestClient, keys: Keys, ledger: ConsentLedger, record_ids: list[str], named: str
) -> None:
    register(client, keys, "u", jurisdiction="US")
    size = ledger.tree_size()
    body = ndjson(*({"record_id": r, "subject_id": "u", "category": "profile"} for r in record_ids))
    *answers, last = post_build(client, keys, body)
    assert len(answers) == len(record_ids)
    assert set(last) == {"error"}
    problem = last["error"]
    assert problem["status"] == 422
    assert problem["title"] == "Unprocessable content"
    assert [e["field"] for e in problem["errors"]] == ["record_id"]
    assert "refused" in problem["detail"]
    assert named in problem["detail"]
    assert ledger.tree_size() == size
    assert_problem(client.get(BUILD, headers=keys.headers("read")), 404)
    assert_problem(client.get("/v1/datasets/posts-train", headers=keys.headers("read")), 404)
    # Nothing half-written: the same version can be recorded now.
    *_, retry = post_build(
        client, keys, ndjson({"record_id": "ok", "subject_id": "u", "category": "profile"})
    )
    assert retry["build"]["records"] == 1


def test_a_version_recorded_twice_is_409(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    register(client, keys, "u", jurisdiction="US")
    body = ndjson({"record_id": "a", "subject_id": "u", "category": "profile"})
    post_build(client, keys, body)
    size = ledger.tree_size()
    again = client.post(BUILD, content=body, headers={**keys.headers("record"), **NDJSON})
    assert "recorded already" in assert_problem(again, 409)["detail"]
    assert ledger.tree_size() == size
    # Another version of the same dataset is another build.
    *_, other = post_build(client, keys, body, path="/v1/datasets/posts-train/versions/2")
    assert other["build"]["version"] == "2"
    versions = client.get("/v1/datasets/posts-train", headers=keys.headers("read")).json()
    assert [b["version"] for b in versions["builds"]] == ["1", "2"]


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/v1/datasets/Bad Name/versions/1", {}, 422, "dataset"),
        ("/v1/datasets/-dash/versions/1", {}, 422, "dataset"),
        ("/v1/datasets/" + "a" * 129 + "/versions/1", {}, 422, "name"),
        ("/v1/datasets/posts/versions/v 1", {}, 422, "version"),
        (BUILD, {"purpose": "marketing"}, 422, "purpose"),
        (BUILD, {"as_of": 0}, 422, "as_of"),
        (BUILD, {"as_of": 10_000}, 422, None),
        (BUILD, {"at": "soon"}, 422, "at"),
    ],
)
def test_bad_build_requests_are_problems_not_streams(
    client: TestClient,
    keys: Keys,
    ledger: ConsentLedger,
    path: str,
    params: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    size = ledger.tree_size()
    response = client.post(
        path,
        params=params,
        content=b'{"record_id": "a", "subject_id": "u", "category": "profile"}\n',
        headers={**keys.headers("record"), **NDJSON},
    )
    assert_problem(response, status, field)
    assert ledger.tree_size() == size


def test_a_build_recorded_meanwhile_ends_the_stream_with_409(
    app: FastAPI, keys: Keys, ledger: ConsentLedger
) -> None:
    ledger.register_subject("u", jurisdiction="US", actor="test")
    body = ndjson({"record_id": "a", "subject_id": "u", "category": "profile"})

    def record_the_same_version() -> None:
        with ledger.dataset_recorder("posts-train", "1", actor="elsewhere") as other:
            other.check([BuildItem(1, "z", "u", "profile")])
            other.finish()

    status, out = drive(app, BUILD, keys.record, [body], before_the_end=record_the_same_version)
    assert status == 200
    *answers, last = [orjson.loads(line) for line in out.splitlines()]
    assert answers[0]["record_id"] == "a"
    assert last["error"]["status"] == 409
    assert ledger.dataset_build("posts-train", "1")["build"]["records"] == 1  # the other one


# --- the stream's reader: lines, chunks, disconnects -----------------------------------------


class _Body:
    """The part of a request the reader uses: its body, in these chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def _read(chunks: list[bytes]) -> list[BuildItem | dict[str, Any]]:
    async def collect() -> list[BuildItem | dict[str, Any]]:
        return [item async for items in routes.read_items(_Body(chunks)) for item in items]  # type: ignore[arg-type]

    return anyio.run(collect)


def _expected(lines: list[bytes], limit: int) -> list[BuildItem | dict[str, Any]]:
    """What each line of a body must give, worked out line by line."""
    out: list[BuildItem | dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if len(line) > limit:
            out.append(
                {
                    "line": number,
                    "error": {"field": "line", "message": f"line longer than {limit} bytes"},
                }
            )
        elif not line.strip():
            continue
        elif line.startswith(b"{"):
            raw = orjson.loads(line)
            out.append(
                BuildItem(
                    number,
                    raw.get("record_id"),
                    raw.get("subject_id"),
                    raw.get("category"),
                    raw.get("purpose"),
                )
            )
        else:
            message = "each line must be a JSON object" if line == b"[1]" else "not valid JSON"
            out.append({"line": number, "error": {"field": "line", "message": message}})
    return out


LINES = st.sampled_from(
    [
        b'{"record_id":"a"}',
        b'{"record_id":7,"category":[]}',
        b"",
        b"   ",
        b"[1]",
        b"nope",
        b'{"record_id":"' + b"x" * 30 + b'"}',  # longer than the limit below
        b" " * 40,
    ]
)


def test_every_chunking_of_a_body_gives_the_same_items(monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 24
    monkeypatch.setattr(routes, "MAX_LINE", limit)

    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(
        lines=st.lists(LINES, max_size=12),
        final_newline=st.booleans(),
        cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
    )
    def run(lines: list[bytes], final_newline: bool, cuts: list[int]) -> None:
        body = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
        points = sorted({0, len(body), *(c for c in cuts if c < len(body))})
        chunks = [body[a:b] for a, b in zip(points, points[1:], strict=False)]
        # A final line with no newline is still a line; no line at all is none.
        assert _read(chunks) == _expected(lines if body else [], limit)

    run()


def drive(
    app: FastAPI,
    path: str,
    key: str,
    chunks: list[bytes],
    *,
    disconnect: bool = False,
    before_the_end: Callable[[], None] | None = None,
) -> tuple[int, bytes]:
    """POST `chunks` as a chunked body straight into the ASGI app, then end the body (or
    disconnect); the status and body of the answer."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/x-ndjson"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        if disconnect:
            return {"type": "http.disconnect"}
        if before_the_end is not None:
            before_the_end()
        messages.append({"type": "http.disconnect"})  # should the app ask again
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_build_interrupted_mid_stream_records_nothing(
    app: FastAPI,
    keys: Keys,
    ledger: ConsentLedger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger.register_subject("u", jurisdiction="US", actor="test")
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where the recorder spools
    monkeypatch.setattr(routes, "BUILD_CHUNK", 2)  # answers go out before the body ends
    size = ledger.tree_size()
    items = [{"record_id": f"r{i}", "subject_id": "u", "category": "profile"} for i in range(5)]
    body = ndjson(*items)
    status, out = drive(app, BUILD, keys.record, [body[:100], body[100:]], disconnect=True)
    assert status == 200
    answered = [orjson.loads(line) for line in out.splitlines()]
    assert answered  # the stream had begun
    assert all("record_id" in line for line in answered)  # and has no last line
    assert ledger.tree_size() == size
    with pytest.raises(NotFound):
        ledger.dataset_build("posts-train", "1")
    assert list(spool.iterdir()) == []  # the recorder was closed

    # The same body, ended: recorded, and the spool gone too.
    status, out = drive(app, BUILD, keys.record, [body[:100], body[100:]])
    assert status == 200
    *answered, last = [orjson.loads(line) for line in out.splitlines()]
    assert [a["line"] for a in answered] == [1, 2, 3, 4, 5]
    assert last["build"]["records"] == 5
    assert list(spool.iterdir()) == []


def test_a_build_body_has_no_size_limit_unlike_other_bodies(
    ledger: ConsentLedger, settings: Settings, keys: Keys
) -> None:
    limited = create_app(settings.model_copy(update={"max_body_bytes": 1024}), ledger=ledger)
    ledger.register_subject("u", jurisdiction="US", actor="test")
    items = [
        {"record_id": f"r{i:04d}", "subject_id": "u", "category": "profile"} for i in range(200)
    ]
    body = ndjson(*items)
    assert len(body) > 10 * 1024
    with TestClient(limited, raise_server_exceptions=False) as client:
        *_, last = post_build(client, keys, body)
        assert last["build"]["records"] == 200
        purge = client.post(
            f"{BUILD}/purges",
            json={"record_ids": [item["record_id"] for item in items]},
            headers=keys.headers("record"),
        )
        assert_problem(purge, 413)
    # Chunked, with no length declared, the same.
    status, out = drive(
        limited, "/v1/datasets/posts-train/versions/2", keys.record, [body[:5000], body[5000:]]
    )
    assert status == 200
    assert orjson.loads(out.splitlines()[-1])["build"]["records"] == 200


# --- reads and purges: bad input ---------------------------------------------------------------


@pytest.fixture
def built(client: TestClient, keys: Keys) -> None:
    register(client, keys, "u", jurisdiction="US")
    post_build(
        client,
        keys,
        ndjson(*({"record_id": r, "subject_id": "u", "category": "profile"} for r in ("a", "b/c"))),
    )


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/v1/datasets/Bad Name", {}, 422, "dataset"),
        ("/v1/datasets/unknown", {}, 404, None),
        ("/v1/datasets/unknown/versions/1", {}, 404, None),
        ("/v1/datasets/posts-train/versions/9", {}, 404, None),
        ("/v1/datasets/posts-train/versions/Bad Version", {}, 422, "version"),
        ("/v1/datasets/unknown/obligations", {}, 404, None),
        ("/v1/datasets/posts-train/obligations", {"version": "9"}, 404, None),
        ("/v1/datasets/posts-train/obligations", {"status": "closed"}, 422, "status"),
        ("/v1/datasets/posts-train/obligations", {"limit": 0}, 422, "limit"),
        ("/v1/datasets/posts-train/obligations", {"limit": 10_001}, 422, "limit"),
        ("/v1/datasets/posts-train/obligations", {"after": -1}, 422, "after"),
        ("/v1/datasets/posts-train/obligations", {"after": "x"}, 422, "after"),
        (f"{BUILD}/members/zzz/proof", {}, 404, None),
        (f"{BUILD}/members/{'r' * 257}/proof", {}, 422, "record_id"),
        ("/v1/datasets/unknown/versions/1/members/a/proof", {}, 404, None),
    ],
)
def test_bad_reads(
    client: TestClient,
    keys: Keys,
    path: str,
    params: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    assert_problem(client.get(path, params=params, headers=keys.headers("read")), status, field)


@pytest.mark.usefixtures("built")
def test_a_record_id_with_a_slash_has_its_proof(client: TestClient, keys: Keys) -> None:
    response = client.get(f"{BUILD}/members/b%2Fc/proof", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    assert response.json()["leaf"]["record"] == "b/c"


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize(
    ("path", "body", "status", "field", "named"),
    [
        (BUILD, {"record_ids": ["a", "nope", "gone"]}, 422, "record_ids", "'gone', 'nope'"),
        (BUILD, {"record_ids": ["a", "a"]}, 422, "record_ids", "'a'"),
        (BUILD, {"record_ids": []}, 422, "record_ids", None),
        (BUILD, {"record_ids": "a"}, 422, "record_ids", None),
        (BUILD, {"record_ids": [True]}, 422, "record_ids[0]", None),
        (BUILD, {"record_ids": ["a", "r" * 257]}, 422, "record_ids[1]", None),
        (BUILD, {"record_ids": ["a"], "why": "x"}, 422, "why", None),
        (BUILD, {}, 422, "record_ids", None),
        ("/v1/datasets/unknown/versions/1", {"record_ids": ["a"]}, 404, None, None),
        ("/v1/datasets/Bad Name/versions/1", {"record_ids": ["a"]}, 422, "dataset", None),
    ],
)
def test_bad_purges_write_nothing(
    client: TestClient,
    keys: Keys,
    ledger: ConsentLedger,
    path: str,
    body: dict[str, Any],
    status: int,
    field: str | None,
    named: str | None,
) -> None:
    size = ledger.tree_size()
    response = client.post(f"{path}/purges", json=body, headers=keys.headers("record"))
    problem = assert_problem(response, status, field)
    if named is not None:
        assert named in problem["detail"]
    assert ledger.tree_size() == size
    assert ledger.dataset_build("posts-train", "1")["build"]["members"] == 2


def test_purging_by_numeric_record_id(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    register(client, keys, "v", jurisdiction="US")
    post_build(
        client,
        keys,
        ndjson({"record_id": 12, "subject_id": "v", "category": "profile"}),
        path="/v1/datasets/numbers/versions/1",
    )
    response = client.post(
        "/v1/datasets/numbers/versions/1/purges",
        json={"record_ids": [12]},
        headers=keys.headers("record"),
    )
    assert response.status_code == 201, response.text
    assert response.json()["voluntary"] == 1


# --- who may ---------------------------------------------------------------------------------

OPERATIONS = [
    ("POST", "/v1/datasets/posts-train/versions/2", "record"),
    ("GET", "/v1/datasets", "read"),
    ("GET", "/v1/datasets/posts-train", "read"),
    ("GET", BUILD, "read"),
    ("GET", f"{BUILD}/members/a/proof", "read"),
    ("GET", "/v1/datasets/posts-train/obligations", "read"),
    ("POST", f"{BUILD}/purges", "record"),
    ("DELETE", BUILD, "admin"),
    ("GET", "/v1/subjects/u/datasets", "read"),
]


def _call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "POST" and path.endswith("/purges"):
        return client.post(path, json={"record_ids": ["a"]}, headers=headers)
    if method == "POST":
        return client.post(
            path,
            content=b'{"record_id":"z","subject_id":"u","category":"profile"}\n',
            headers={**headers, **NDJSON},
        )
    return client.request(method, path, headers=headers)


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize(("method", "path", "scope"), OPERATIONS)
def test_scopes(
    client: TestClient, keys: Keys, ledger: ConsentLedger, method: str, path: str, scope: str
) -> None:
    size = ledger.tree_size()
    missing = _call(client, method, path, {})
    assert_problem(missing, 401)
    assert "bearer" in missing.headers["www-authenticate"].lower()
    assert_problem(_call(client, method, path, auth(keys.revoked)), 401)
    for other in ("check", "record", "read", "audit", "admin"):
        if other != scope:
            assert_problem(_call(client, method, path, keys.headers(other)), 403)
    assert ledger.tree_size() == size
    allowed = _call(client, method, path, keys.headers(scope))
    assert allowed.status_code in (200, 201), allowed.text


def test_openapi_documents_every_dataset_operation(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    documented = {
        (method.upper(), path)
        for path, methods in paths.items()
        for method in methods
        if path.startswith("/v1/datasets") or path.endswith("/datasets")
    }
    assert documented == {
        ("POST", "/v1/datasets/{name}/versions/{version}"),
        ("GET", "/v1/datasets/{name}/versions/{version}"),
        ("DELETE", "/v1/datasets/{name}/versions/{version}"),
        ("GET", "/v1/datasets"),
        ("GET", "/v1/datasets/{name}"),
        ("GET", "/v1/datasets/{name}/versions/{version}/members/{record_id}/proof"),
        ("GET", "/v1/datasets/{name}/obligations"),
        ("POST", "/v1/datasets/{name}/versions/{version}/purges"),
        ("GET", "/v1/subjects/{subject_id}/datasets"),
    }
    for method, path in documented:
        operation = paths[path][method.lower()]
        assert operation.get("summary"), (method, path)
        assert operation.get("description"), (method, path)
        assert operation.get("security") == [{"HTTPBearer": []}], (method, path)
    build = paths["/v1/datasets/{name}/versions/{version}"]["post"]
    assert "application/x-ndjson" in build["requestBody"]["content"]
    assert "application/x-ndjson" in build["responses"]["200"]["content"]
    status = next(
        p
        for p in paths["/v1/datasets/{name}/obligations"]["get"]["parameters"]
        if p["name"] == "status"
    )
    assert status["schema"]["anyOf"][0]["enum"] == list(STATUSES)


# --- a policy's re-evaluation, and the sweeper --------------------------------------------------


def test_listings_say_they_are_catching_up_until_the_sweeper_is_done(
    client: TestClient, keys: Keys, ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    for subject in range(10):
        register(client, keys, f"u{subject}", jurisdiction="US")
    # More members than a write re-evaluates inline after a policy publication.
    members = INLINE_POLICY_BUDGET + 1
    body = b"".join(
        b'{"record_id":"r%06d","subject_id":"u%d","category":"profile"}\n' % (i, i % 10)
        for i in range(members)
    )
    *_, last = post_build(client, keys, body)
    assert last["build"]["records"] == members
    policy = client.get("/v1/policy", headers=keys.headers("read")).json()
    policy["version"] = 2
    policy["defaults"]["default"]["ai-training"]["profile"] = "deny"
    published = client.put("/v1/policy", json=policy, headers=keys.headers("admin"))
    assert published.status_code == 201, published.text
    # A listing would finish the re-evaluation itself; here it may do none of it.
    monkeypatch.setattr(service, "LISTING_BUDGET", 0)
    for path in ("/v1/datasets/posts-train/obligations", "/v1/datasets", BUILD):
        response = client.get(path, headers=keys.headers("read"))
        assert_problem(response, 503)
        assert response.headers["retry-after"] == "1"
        assert "policy" in response.json()["detail"]

    # `serve`'s sweeper finishes it in the background.
    with TestClient(create_app(ledger=ledger, sweep_every=0.05)) as serving:
        deadline = time.monotonic() + 60
        while True:
            response = serving.get(
                "/v1/datasets/posts-train/obligations",
                params={"limit": 1, "status": "open"},
                headers=keys.headers("read"),
            )
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert response.status_code == 200, response.text
    (first,) = response.json()["obligations"]
    assert (first["record_id"], first["reason"], first["cause"]) == (
        "r000000",
        "default-deny",
        published.json()["entry"],
    )
    counts = ledger.dataset_build("posts-train", "1")["build"]["obligations"]
    assert counts["open"] == members


def test_the_sweeper_logs_failures_once_and_goes_on(
    ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: list[Exception | None] = [
        RuntimeError("disk on fire"),
        RuntimeError("disk on fire"),
        ReadOnlyDatabase("this server's database is read-only"),
        ReadOnlyDatabase("this server's database is read-only"),
        None,
    ]
    calls: list[int] = []

    def sweep(**_: Any) -> dict[str, Any]:
        calls.append(1)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if outcome is not None:
            raise outcome
        return {}

    monkeypatch.setattr(ledger, "sweep_obligations", sweep)
    caplog.set_level(logging.INFO, logger="consent_ledger.api")
    with TestClient(create_app(ledger=ledger, sweep_every=0.01)):
        deadline = time.monotonic() + 30
        while len(calls) < len(outcomes) + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(calls) >= len(outcomes) + 2
    logged = [
        (r.levelno, r.getMessage(), r.exc_info is not None)
        for r in caplog.records
        if "sweeping" in r.getMessage()
    ]
    assert logged == [
        (logging.ERROR, "sweeping purge obligations failed: disk on fire", True),
        (
            logging.ERROR,
            "sweeping purge obligations failed: this server's database is read-only",
            False,
        ),
        (logging.INFO, "sweeping purge obligations works again", False),
    ]


def test_the_sweeper_stops_at_shutdown_and_only_runs_when_asked(
    ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(ledger, "sweep_obligations", lambda **_: calls.append(1) or {})
    started = time.monotonic()
    with TestClient(create_app(ledger=ledger, sweep_every=3600)):
        pass
    assert time.monotonic() - started < 10  # not an hour's sleep
    with TestClient(create_app(ledger=ledger)):
        time.sleep(0.2)
    assert calls == []
    with TestClient(create_app(ledger=ledger, sweep_every=0.01)):
        deadline = time.monotonic() + 30
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
    count = len(calls)
    assert count >= 1
    time.sleep(0.1)
    assert len(calls) == count  # stopped with the app
