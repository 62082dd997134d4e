"""A change-feed client (SPEC §8) that reads a whole log over HTTP, run as its own process.

    python -m bench.feedread SPEC.json RESULT.json

The spec: `{"host", "port", "key", "audit_key", "verifier_key", "size", "limit",
"passes": ["pages", "stream", "entries"]}`. Each pass reads entries 0 … size − 1
of a log that does not grow while it runs, on one keep-alive connection, as a
client following the feed would:

- `pages`: `GET /v1/changes?after=N&limit=L`, N from 0, each page's `next` the
  following page's cursor. The next request is sent as soon as a page's body is in
  (its `next` found by a byte search), and the page is parsed and checked while the
  server prepares the next one, so the client's own work overlaps the server's.
- `stream`: one `GET /v1/changes?after=0&limit=L` with `Accept:
  application/x-ndjson`, read line by line until a batch end says `next` = size;
  then the connection is closed.
- `entries`: `GET /v1/ledger/entries?start=N&limit=1000` (the auditor's endpoint,
  1,000 entries a page at most): the bare entries over HTTP.

Checked in every pass (none of it is left out): the events' seqs run 0 … size − 1
with no gap or repeat, every page (or batch) starts at the previous one's `next`,
its `tree_size` is the log's size, its checkpoint's signature verifies against the
ledger's key, and its range proof (`merkle.verify_range`) leads from the events'
canonical bytes to the checkpoint's root. The result has, per pass: seconds (first
request to the last byte needed), events, pages or batches, bytes read, the latency
of every page, and the client's own CPU seconds.
"""

from __future__ import annotations

import base64
import http.client
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ledger.tlog.merkle import leaf_hash, verify_range
from ledger.tlog.notes import Checkpoint, VerifierKey, verify_note

NDJSON = "application/x-ndjson"
ENTRIES_PAGE = 1_000  # the most /v1/ledger/entries answers at once


class FeedError(RuntimeError):
    """The feed answered something a client must refuse."""


class Verifier:
    """Checks pages and batches: seqs in order, cursors chained, proofs into checkpoints."""

    def __init__(self, verifier_key: str, size: int) -> None:
        self.key = VerifierKey.parse(verifier_key)
        self.size = size
        self.roots: dict[str, bytes] = {}  # checkpoint note → its root (signature checked)
        self.expected = 0  # the next seq due

    def root(self, checkpoint: str, tree_size: int) -> bytes:
        root = self.roots.get(checkpoint)
        if root is None:
            note, _ = verify_note(checkpoint, [self.key])
            body = Checkpoint.parse_body(note.text)
            if body.size != tree_size:
                raise FeedError(f"checkpoint of size {body.size} for tree_size {tree_size}")
            root = self.roots[checkpoint] = body.root
        return root

    def batch(
        self,
        after: int,
        seqs: list[int],
        leaves: list[bytes],
        end: dict[str, Any],
    ) -> None:
        """One page's (or one stream batch's) events, given its end: `next`, `tree_size`,
        `checkpoint`, `proof`."""
        if after != self.expected:
            raise FeedError(f"a page from cursor {after}, expected {self.expected}")
        if seqs != list(range(after, after + len(seqs))):
            raise FeedError(f"events after {after} are not seqs {after}…: {seqs[:3]}…")
        if end["next"] != after + len(seqs):
            raise FeedError(f"next {end['next']} after {len(seqs)} events from {after}")
        if end["tree_size"] != self.size:
            raise FeedError(f"tree_size {end['tree_size']}, the log's is {self.size}")
        if not seqs:
            raise FeedError(f"an empty page at cursor {after} of a log of {self.size}")
        root = self.root(end["checkpoint"], end["tree_size"])
        proof = [base64.b64decode(node) for node in end["proof"]]
        verify_range(after, leaves, end["tree_size"], proof, root)
        self.expected = end["next"]


def _leaf(event: dict[str, Any]) -> bytes:
    return leaf_hash(base64.b64decode(event["canonical"]))


def _next_of(body: bytes) -> int:
    # The page's top-level "next" follows its events (orjson keeps the keys' order), and
    # no string inside an event can hold `"next":` unescaped.
    at = body.rfind(b'"next":')
    if at < 0:
        raise FeedError(f"no next in a page: {body[:200]!r}")
    start = at + len(b'"next":')
    stop = body.index(b",", start)
    return int(body[start:stop])


def read_pages(connection: http.client.HTTPConnection, spec: dict[str, Any]) -> dict[str, Any]:
    size, limit = spec["size"], spec["limit"]
    headers = {"Authorization": f"Bearer {spec['key']}"}
    verifier = Verifier(spec["verifier_key"], size)
    latencies: list[float] = []
    read = 0
    events = pages = 0
    cpu = time.process_time()
    start = time.perf_counter()
    cursor = 0
    connection.request("GET", f"/v1/changes?after=0&limit={limit}", headers=headers)
    sent = time.perf_counter()
    while True:
        answer = connection.getresponse()
        body = answer.read()
        latencies.append(time.perf_counter() - sent)
        if answer.status != 200:
            raise FeedError(f"GET /v1/changes?after={cursor}: {answer.status} {body[:300]!r}")
        read += len(body)
        following = _next_of(body)
        if following < size:
            connection.request(
                "GET", f"/v1/changes?after={following}&limit={limit}", headers=headers
            )
            sent = time.perf_counter()
        page = orjson.loads(body)
        page_events = page["events"]
        verifier.batch(
            cursor, [event["seq"] for event in page_events], [_leaf(e) for e in page_events], page
        )
        events += len(page_events)
        pages += 1
        cursor = following
        if following >= size:
            break
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "events": events,
        "pages": pages,
        "bytes": read,
        "latencies": latencies,
        "cpu_seconds": time.process_time() - cpu,
        "checkpoints": len(verifier.roots),
    }


def read_stream(connection: http.client.HTTPConnection, spec: dict[str, Any]) -> dict[str, Any]:
    size, limit = spec["size"], spec["limit"]
    headers = {"Authorization": f"Bearer {spec['key']}", "Accept": NDJSON}
    verifier = Verifier(spec["verifier_key"], size)
    loads = orjson.loads
    cpu = time.process_time()
    start = time.perf_counter()
    connection.request("GET", f"/v1/changes?after=0&limit={limit}", headers=headers)
    answer = connection.getresponse()
    if answer.status != 200:
        raise FeedError(f"GET /v1/changes (NDJSON): {answer.status} {answer.read()[:300]!r}")
    if not answer.headers.get("content-type", "").startswith(NDJSON):
        raise FeedError(f"not a stream: {answer.headers.get('content-type')}")
    read = 0
    events = batches = heartbeats = 0
    batch_start = 0
    seqs: list[int] = []
    leaves: list[bytes] = []
    pending = b""
    done = False
    while not done:
        chunk = answer.read1(1 << 20)
        if not chunk:
            raise FeedError(f"the stream ended after {events} events")
        read += len(chunk)
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            item = loads(line)
            if "seq" in item:
                seqs.append(item["seq"])
                leaves.append(_leaf(item))
            elif "checkpoint" in item:
                verifier.batch(batch_start, seqs, leaves, item)
                events += len(seqs)
                batches += 1
                batch_start = item["next"]
                seqs, leaves = [], []
                if batch_start >= size:
                    done = True
                    break
            else:
                heartbeats += 1  # only while idle: the log is complete here, so none due
    seconds = time.perf_counter() - start
    answer.close()
    connection.close()
    return {
        "seconds": seconds,
        "events": events,
        "pages": batches,
        "heartbeats": heartbeats,
        "bytes": read,
        "latencies": [],
        "cpu_seconds": time.process_time() - cpu,
        "checkpoints": len(verifier.roots),
    }


def read_entries(connection: http.client.HTTPConnection, spec: dict[str, Any]) -> dict[str, Any]:
    """The bare entries over HTTP: seqs checked in order, nothing proven (the endpoint
    gives no range proof)."""
    size = spec["size"]
    headers = {"Authorization": f"Bearer {spec['audit_key']}"}
    latencies: list[float] = []
    read = 0
    expected = 0
    pages = 0
    cpu = time.process_time()
    start = time.perf_counter()
    while expected < size:
        sent = time.perf_counter()
        path = f"/v1/ledger/entries?start={expected}&limit={ENTRIES_PAGE}"
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        body = answer.read()
        latencies.append(time.perf_counter() - sent)
        if answer.status != 200:
            raise FeedError(f"GET {path}: {answer.status} {body[:300]!r}")
        read += len(body)
        entries = orjson.loads(body)["entries"]
        if [entry["index"] for entry in entries] != list(
            range(expected, min(size, expected + ENTRIES_PAGE))
        ):
            raise FeedError(f"entries from {expected} are not in order")
        expected += len(entries)
        pages += 1
    return {
        "seconds": time.perf_counter() - start,
        "events": expected,
        "pages": pages,
        "bytes": read,
        "latencies": latencies,
        "cpu_seconds": time.process_time() - cpu,
        "checkpoints": 0,
    }


PASSES: dict[str, Callable[[http.client.HTTPConnection, dict[str, Any]], dict[str, Any]]] = {
    "pages": read_pages,
    "stream": read_stream,
    "entries": read_entries,
}


def main() -> None:
    spec = orjson.loads(Path(sys.argv[1]).read_bytes())
    results: dict[str, Any] = {}
    for name in spec["passes"]:
        connection = http.client.HTTPConnection(spec["host"], spec["port"], timeout=600)
        connection.connect()  # before the clock starts, as the load generator does
        try:
            results[name] = PASSES[name](connection, spec)
        finally:
            connection.close()
        if results[name]["events"] != spec["size"]:
            raise FeedError(f"{name}: {results[name]['events']} events of {spec['size']}")
    Path(sys.argv[2]).write_bytes(orjson.dumps(results))


if __name__ == "__main__":
    main()
