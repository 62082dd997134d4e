"""The NDJSON eligibility stream over real HTTP: a million lines, in order, in bounded memory.

The request body is generated lazily and sent chunked while the results are
read line by line, on one connection, against `consent-ledger serve --workers
2` on SQLite and on PostgreSQL. The server's resident memory (the supervisor
and both workers, summed) is sampled every 0.5 s during the run.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.conftest import Deployment, RssSampler, duplex_ndjson

pytestmark = pytest.mark.slow

MILLION = 1_000_000
MAX_RSS_GROWTH = 150 * 1024 * 1024
CATEGORIES = (b"content.public", b"profile", b"biometric", b"content.private", b"activity")
SUBJECTS = 53  # s-0 … s-49 registered, s-50 … s-52 unknown


def _kind(position: int) -> str:
    if position % 10_007 == 17:
        return "garbage"
    if position % 1_009 == 3:
        return "bad-category"
    return "good"


def ndjson_items(count: int, chunk: int = 65_521) -> Iterator[bytes]:
    """`count` lines, generated lazily, in chunks that split lines anywhere."""
    pending = bytearray()
    for position in range(count):
        kind = _kind(position)
        if kind == "garbage":
            pending += b"this is not json\n"
        elif kind == "bad-category":
            pending += b'{"id":%d,"subject_id":"s-1","category":"dms"}\n' % position
        else:
            pending += b'{"id":%d,"subject_id":"s-%d","category":"%s"}\n' % (
                position,
                position % SUBJECTS,
                CATEGORIES[position % len(CATEGORIES)],
            )
        if len(pending) >= chunk:
            yield bytes(pending[:chunk])
            del pending[:chunk]
    yield bytes(pending)


class StreamChecker:
    """Checks each result line as it arrives: header first, then one answer per item, in order."""

    def __init__(self) -> None:
        self.header: dict[str, Any] | None = None
        self.results = 0
        self.errors: dict[str, int] = {}
        self.answers: dict[tuple[int, int], tuple[bool, str]] = {}

    def __call__(self, line: bytes) -> None:
        document = orjson.loads(line)
        if self.header is None:
            assert set(document) == {"checked_at", "at", "checkpoint", "policy_version"}, document
            self.header = document
            return
        position = self.results
        self.results += 1
        kind = _kind(position)
        if kind == "garbage":
            assert set(document) == {"error"}, document  # not JSON: no id to echo
            assert document["error"]["field"] == "line", document
        elif kind == "bad-category":
            assert document["id"] == position, (position, document)
            assert document["error"]["field"] == "category", document
        else:
            assert document["id"] == position, (position, document)
            key = (position % SUBJECTS, position % len(CATEGORIES))
            answer = (document["eligible"], document["reason"])
            # Every line is answered at one tree size and time: the same question, the same answer.
            assert self.answers.setdefault(key, answer) == answer, (position, document)
            return
        self.errors[kind] = self.errors.get(kind, 0) + 1


def populate(deployment: Deployment) -> None:
    record = deployment.headers("record")
    with deployment.http() as http:
        for n in range(50):
            body = {"jurisdiction": ("US", "DE", None)[n % 3], "minor": n % 11 == 10}
            assert http.put(f"/v1/subjects/s-{n}", json=body, headers=record).is_success
            if n % 4 == 0:
                decision = {
                    "category": "content.public",
                    "decision": ("granted", "denied")[n // 4 % 2],
                }
                written = http.post(
                    f"/v1/subjects/s-{n}/consents", json={"decisions": [decision]}, headers=record
                )
                assert written.status_code == 201, written.text


@pytest.mark.timeout(900)
def test_a_million_line_stream_in_order_with_bounded_server_memory(
    deployment: Deployment, record_property: Any
) -> None:
    populate(deployment)
    check = deployment.headers("check")
    cold = deployment.rss()
    # Warm both workers (new connections land on either) so the baseline is a steady state.
    for _ in range(6):
        warm = StreamChecker()
        duplex_ndjson(deployment, "/v1/eligibility/stream", check, ndjson_items(20_000), warm)
        assert warm.results == 20_000
    time.sleep(1.0)
    baseline = deployment.rss()
    per_process_before = [p.memory_info().rss for p in deployment.processes()]

    checker = StreamChecker()
    started = time.monotonic()
    with RssSampler(deployment, interval=0.5) as sampler:
        result = duplex_ndjson(
            deployment,
            "/v1/eligibility/stream",
            check,
            ndjson_items(MILLION),
            checker,
            timeout=300,
        )
    elapsed = time.monotonic() - started

    assert result.status == 200
    assert result.content_type.startswith("application/x-ndjson")
    assert result.lines == MILLION + 1
    assert checker.results == MILLION
    assert checker.errors == {
        "garbage": sum(_kind(n) == "garbage" for n in range(MILLION)),
        "bad-category": sum(_kind(n) == "bad-category" for n in range(MILLION)),
    }
    reasons = {reason for _, reason in checker.answers.values()}
    assert {"unknown-subject", "prohibited", "minor", "consent", "refused"} <= reasons, reasons

    growth = sampler.peak - baseline
    figures = {
        "engine": deployment.env["CONSENT_LEDGER_DATABASE_URL"].split(":")[0],
        "items": MILLION,
        "seconds": round(elapsed, 2),
        "items_per_second": round(MILLION / elapsed),
        "sent_mb": round(result.sent_bytes / 1e6, 1),
        "received_mb": round(result.received_bytes / 1e6, 1),
        "rss_cold_mb": round(cold / 2**20, 1),
        "rss_baseline_mb": round(baseline / 2**20, 1),
        "rss_peak_mb": round(sampler.peak / 2**20, 1),
        "rss_growth_mb": round(growth / 2**20, 1),
        "rss_per_process_before_mb": [round(rss / 2**20, 1) for rss in per_process_before],
        "samples": len(sampler.samples),
    }
    record_property("e2e", figures)
    assert len(sampler.samples) >= 2
    assert growth < MAX_RSS_GROWTH, figures


def test_the_stream_with_httpx(deployment: Deployment) -> None:
    """A plain httpx client (body from a generator, results via iter_lines) for a modest stream.

    httpx writes the whole body before reading the answer, so this works only
    while the answer fits in the socket buffers; a large stream needs a client
    that reads while it writes (see `duplex_ndjson` and docs/E2E.md).
    """
    populate(deployment)
    count = 5_000
    checker = StreamChecker()
    with (
        httpx.Client(base_url=deployment.base, timeout=60) as http,
        http.stream(
            "POST",
            "/v1/eligibility/stream",
            content=ndjson_items(count, chunk=4_099),
            headers={**deployment.headers("check"), "Content-Type": "application/x-ndjson"},
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                checker(line.encode())
    assert checker.results == count

    # An unauthenticated or wrongly scoped stream is refused before anything is read.
    for headers, status in (({}, 401), (deployment.headers("read"), 403)):
        refused = httpx.post(
            deployment.base + "/v1/eligibility/stream",
            content=ndjson_items(10),
            headers=headers,
            timeout=30,
        )
        assert refused.status_code == status


def test_an_overlong_line_gets_its_own_error_in_constant_memory(deployment: Deployment) -> None:
    """A 200 MB line is answered with one error, not buffered: neighbours still answered."""
    line_mb = 200

    def body() -> Iterator[bytes]:
        yield b'{"id":0,"subject_id":"s-0","category":"profile"}\n{"id":1,"subject_id":"'
        block = b"x" * 2**20
        for _ in range(line_mb):
            yield block
        yield b'","category":"profile"}\n{"id":2,"subject_id":"s-0","category":"profile"}\n'

    results: list[dict[str, Any]] = []
    baseline = deployment.rss()
    with RssSampler(deployment, interval=0.02) as sampler:
        result = duplex_ndjson(
            deployment,
            "/v1/eligibility/stream",
            deployment.headers("check"),
            body(),
            lambda line: results.append(orjson.loads(line)),
            timeout=120,
        )
    assert result.status == 200
    header, first, overlong, last = results
    assert "checked_at" in header
    assert (first["id"], first["reason"]) == (0, "unknown-subject")
    assert overlong["error"]["field"] == "line", overlong
    assert (last["id"], last["reason"]) == (2, "unknown-subject")
    assert sampler.peak - baseline < line_mb * 2**20 // 2, (sampler.peak - baseline) / 2**20


def abandon_streams(deployment: Deployment, count: int) -> None:
    """Start streams, send part of a body, read a little, and hang up mid-request."""
    key = deployment.keys["check"]
    chunk = b'{"subject_id":"s-1","category":"profile"}\n' * 2_000
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", deployment.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/eligibility/stream HTTP/1.1\r\nHost: e2e\r\n"
                b"Authorization: Bearer %s\r\nContent-Type: application/x-ndjson\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" % key.encode()
            )
            for _ in range(20):
                sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            assert sock.recv(1_000).startswith(b"HTTP/1.1 200")


def test_abandoned_streams_leave_the_server_healthy(deployment: Deployment) -> None:
    abandon_streams(deployment, 10)
    time.sleep(1.0)
    baseline = deployment.rss()
    abandon_streams(deployment, 40)
    time.sleep(1.0)
    assert deployment.rss() - baseline < 64 * 2**20
    assert all(process.is_running() for process in deployment.processes())
    for _ in range(6):  # new connections: both workers answer
        answer = httpx.post(
            deployment.base + "/v1/eligibility/stream",
            content=b'{"id":7,"subject_id":"s-1","category":"profile"}\n',
            headers=deployment.headers("check"),
            timeout=30,
        )
        assert answer.status_code == 200
        assert orjson.loads(answer.content.splitlines()[1])["id"] == 7


def test_an_abandoned_stream_is_not_logged_as_a_server_error(deployment: Deployment) -> None:
    abandon_streams(deployment, 3)
    time.sleep(1.0)
    assert deployment.log_path is not None
    log = deployment.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Exception in ASGI application" not in log, log[-3_000:]
    assert "ClientDisconnect" not in log
