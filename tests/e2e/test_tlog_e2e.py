"""The C2SP tlog-tiles read path under /tlog/, checked by clients nobody here wrote.

* Go's own golang.org/x/mod/sumdb/note and sumdb/tlog (tlogclient/main.go):
  note.Open, tlog.TileHashReader over /tlog/tile/..., ProveRecord/CheckRecord
  and ProveTree/CheckTree, built offline in GOPATH mode against Debian's
  golang-golang-x-mod-dev. Skipped, saying how to install it, when Go or
  x/mod is missing, unless CONSENT_LEDGER_REQUIRE_GO=1.
* The independent Python implementation (independent.py): tile paths, entry
  bundles, the hashes at levels 0 and 8, the root.

Each runs against `consent-ledger serve --workers 2` holding more than 600
entries, so full and partial tiles both occur at level 0 and level 1 holds a
partial tile, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment
from tests.e2e.independent import (
    TILE_WIDTH,
    leaf_hash,
    merkle_root,
    node_hash,
    open_signed_note,
    parse_checkpoint,
    parse_verifier_key,
    split_entry_bundle,
    tile_index_path,
    tile_path,
)

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
GOPATH = Path(os.environ.get("CONSENT_LEDGER_GOPATH", "/usr/share/gocode"))
X_MOD = GOPATH / "src" / "golang.org" / "x" / "mod" / "sumdb" / "tlog"
REQUIRE_GO = os.environ.get("CONSENT_LEDGER_REQUIRE_GO") == "1"
INSTALL_HINT = "apt-get install golang-go golang-golang-x-mod-dev"
CATEGORIES = ("content.public", "profile", "profile.employment", "activity", "location")


def go_environment(cache: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GO")}
    return env | {
        "GOPATH": str(GOPATH),
        "GO111MODULE": "off",  # GOPATH mode: x/mod from Debian's package, no module download
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "",
        "GOCACHE": str(cache),
        "CGO_ENABLED": "0",
    }


@pytest.fixture(scope="session")
def tlogclient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tlogclient/main.go, built once per session."""
    go = shutil.which("go") or next(
        (str(path) for path in Path("/usr/lib").glob("go*/bin/go") if path.exists()), None
    )
    problem = None
    if go is None:
        problem = f"no Go toolchain ({INSTALL_HINT})"
    elif not X_MOD.is_dir():
        problem = f"no golang.org/x/mod source at {X_MOD} ({INSTALL_HINT})"
    if problem:
        if REQUIRE_GO:
            pytest.fail(f"CONSENT_LEDGER_REQUIRE_GO=1 but {problem}")
        pytest.skip(problem)
    assert go is not None
    out = tmp_path_factory.mktemp("go") / "tlogclient"
    built = subprocess.run(
        [go, "build", "-o", str(out), str(HERE / "tlogclient" / "main.go")],
        env=go_environment(out.parent / "cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def write_entries(deployment: Deployment, subjects: range, batches: range) -> int:
    """Register `subjects`, then record 50 decisions per batch; returns the tree size."""
    record = deployment.headers("record")
    token = 0
    with deployment.http() as http:
        for n in subjects:
            made = http.put(f"/v1/subjects/t-{n}", json={"jurisdiction": "US"}, headers=record)
            assert made.status_code == 201, made.text
            token = made.json()["token"]
        for batch in batches:
            decisions = [
                {
                    "category": CATEGORIES[(batch + k) % len(CATEGORIES)],
                    "decision": ("granted", "denied", "withdrawn")[k % 3],
                }
                for k in range(50)
            ]
            written = http.post(
                f"/v1/subjects/t-{batch}/consents", json={"decisions": decisions}, headers=record
            )
            assert written.status_code == 201, written.text
            token = written.json()["token"]
    return token


def tlog_checkpoint(deployment: Deployment, headers: dict[str, str]) -> str:
    response = httpx.get(deployment.base + "/tlog/checkpoint", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def run_tlogclient(
    binary: Path, deployment: Deployment, old: Path, env: dict[str, str]
) -> list[str]:
    result = subprocess.run(
        [str(binary), "-url", deployment.base, "-vkey", deployment.verifier_key, "-old", str(old)],
        env={name: value for name, value in os.environ.items() if "BEARER" not in name} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "OK", output
    return lines


def tile_counts(lines: list[str]) -> dict[str, int]:
    line = next(line for line in lines if line.startswith("hash tiles:"))
    fields = dict(word.split("=", 1) for word in line.split()[2:5])
    return {name: int(value) for name, value in fields.items()}


def test_go_sumdb_tlog_client_verifies_the_tiles(
    deployment: Deployment, tlogclient: Path, tmp_path: Path, record_property: Any
) -> None:
    audit = deployment.headers("audit")
    old_size = write_entries(deployment, range(120), range(4))
    old_note = tlog_checkpoint(deployment, audit)
    old = tmp_path / "saved.checkpoint"
    old.write_text(old_note)
    size = write_entries(deployment, range(120, 130), range(4, 12))
    assert old_size > TILE_WIDTH
    assert old_size % TILE_WIDTH
    assert size >= 600
    assert size % TILE_WIDTH

    # The tiles are the `audit` scope's unless the log is public.
    for headers, status in (({}, 401), (deployment.headers("check"), 403)):
        response = httpx.get(deployment.base + "/tlog/checkpoint", headers=headers, timeout=30)
        assert response.status_code == status

    key = deployment.keys["audit"]
    lines = run_tlogclient(tlogclient, deployment, old, {"TLOG_BEARER": key, "LEDGER_BEARER": key})
    assert f"size {size} " in lines[0], lines
    assert f"(saved: size {old_size})" in lines[0], lines
    assert f"{size} entries match the tree" in "\n".join(lines)
    counts = tile_counts(lines)
    assert counts["full"] >= 2, lines
    assert counts["partial"] >= 2, lines
    assert counts["levels"] == 2, lines
    record_property("e2e", {"go_tlogclient": lines[:-1], "tree_size": size})

    # Public log: the same client, no credentials for /tlog/; /v1/ledger/ still needs them.
    deployment.stop()
    deployment.env["CONSENT_LEDGER_PUBLIC_LOG"] = "true"
    deployment.start()
    later = write_entries(deployment, range(130, 140), range(12, 13))
    assert httpx.get(deployment.base + "/v1/ledger/checkpoint", timeout=30).status_code == 401
    assert tlog_checkpoint(deployment, {}).split("\n")[1] == str(later)
    lines = run_tlogclient(tlogclient, deployment, old, {})
    assert f"size {later} " in lines[0], lines


def test_tiles_match_an_independent_implementation(deployment: Deployment) -> None:
    size = write_entries(deployment, range(100), range(12))
    assert size >= 600
    assert size % TILE_WIDTH
    audit = deployment.headers("audit")
    key = parse_verifier_key(deployment.verifier_key)
    note = tlog_checkpoint(deployment, audit)
    size, root = parse_checkpoint(open_signed_note(note, key), key.name)

    assert tile_index_path(0) == "000"
    assert tile_index_path(1234067) == "x001/x234/067"
    assert tile_path(0, 5, 3) == "tile/0/005.p/3"

    def fetch(path: str) -> httpx.Response:
        return http.get(f"/tlog/{path}", headers=audit)

    with deployment.http() as http:
        # Entry bundles: every entry's canonical bytes, the same as the JSON API serves.
        canonical: list[bytes] = []
        for index in range(0, size, TILE_WIDTH):
            width = min(TILE_WIDTH, size - index)
            response = fetch(tile_path("entries", index // TILE_WIDTH, width))
            assert response.status_code == 200, response.text
            bundle = split_entry_bundle(response.content)
            assert len(bundle) == width
            canonical += bundle
        assert len(canonical) == size
        for start in range(0, size, 1000):
            page = http.get(
                "/v1/ledger/entries", params={"start": start, "limit": 1000}, headers=audit
            ).json()
            for item in page["entries"]:
                assert base64.b64decode(item["canonical"]) == canonical[item["index"]]

        # Level 0 holds the leaf hashes; level 1 the roots of each full level-0 tile (level 8).
        leaves = [leaf_hash(entry) for entry in canonical]
        assert merkle_root(leaves) == root
        level8 = [
            merkle_root(leaves[k : k + TILE_WIDTH])
            for k in range(0, size - TILE_WIDTH + 1, TILE_WIDTH)
        ]
        assert len(level8) == size >> 8
        served: dict[int, list[bytes]] = {0: [], 1: []}
        for level, hashes in ((0, leaves), (1, level8)):
            widths = set()
            for index in range(0, len(hashes), TILE_WIDTH):
                width = min(TILE_WIDTH, len(hashes) - index)
                response = fetch(tile_path(level, index // TILE_WIDTH, width))
                assert response.status_code == 200, response.text
                assert response.content == b"".join(hashes[index : index + width]), (level, index)
                cache = response.headers["cache-control"]
                assert ("immutable" in cache) == (width == TILE_WIDTH), cache
                served[level] += [response.content[n : n + 32] for n in range(0, width * 32, 32)]
                widths.add(width)
            if level == 0:
                assert widths == {TILE_WIDTH, size % TILE_WIDTH}  # full tiles and a partial one
            else:
                assert widths == {size >> 8}  # one partial tile at level 1

        # The signed root, from the served tiles alone: level-1 hashes stand for full
        # level-0 tiles, level-0 hashes for the rest (RFC 9162 MTH, split as it splits).
        def from_tiles(low: int, high: int) -> bytes:
            if high - low == TILE_WIDTH and low % TILE_WIDTH == 0:
                return served[1][low // TILE_WIDTH]
            if high - low == 1:
                return served[0][low]
            split = 1 << ((high - low - 1).bit_length() - 1)
            return node_hash(from_tiles(low, low + split), from_tiles(low + split, high))

        assert from_tiles(0, size) == root

        # Tiles the tree does not hold yet, and paths that are not tile paths.
        assert fetch(tile_path(2, 0, 1)).status_code == 404
        assert fetch(tile_path(0, size // TILE_WIDTH + 1, TILE_WIDTH)).status_code == 404
        assert fetch(tile_path(0, size // TILE_WIDTH, TILE_WIDTH)).status_code == 404
        for bad in ("tile/0/5", "tile/0/x000/005", "tile/0/000.p/0", "tile/0/000.p/256"):
            assert fetch(bad).status_code in (400, 404, 422), bad
