"""A small closed-loop HTTP/1.1 load generator, run as its own process.

    python -m bench.loadgen SPEC.json RESULT.json

The harness writes the requests of each phase, already encoded as raw HTTP/1.1
bytes (`encode_request`), into a file (`write_requests`), and a JSON spec:

    {"host": "127.0.0.1", "port": 8123, "phases": [
        {"name": "warm", "requests": "/tmp/…/warm.bin", "connections": 32,
         "max_seconds": 60, "keep": [0, 50], "must_contain": "\\"receipt\\":{"}]}

Each phase opens `connections` keep-alive connections (before its clock
starts), and every connection sends its next request as soon as the previous
answer is in (closed loop), until all requests are sent or `max_seconds` have
passed. The result has, per phase: completed requests, wall seconds from the
first send to the last answer, every latency, the status counts, how many
answers lacked `must_contain`, and the bodies of the `keep` indices.

Why not httpx: a thread pool or `AsyncClient` spends ~0.3–0.5 ms of Python per
request, so on one core it saturates below what one uvicorn worker answers for a
bare endpoint, and every ratio would measure the client. This speaks just
enough HTTP/1.1 (Content-Length and chunked answers) over asyncio streams, on
uvloop when it is installed, with requests pre-encoded: ~15–25 µs per request.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

_LENGTH = struct.Struct("<Q")


def encode_request(
    method: str,
    path: str,
    *,
    host: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """One HTTP/1.1 request (keep-alive) as bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def write_requests(path: Path, requests: Iterable[bytes]) -> int:
    count = 0
    with path.open("wb") as handle:
        for request in requests:
            handle.write(_LENGTH.pack(len(request)))
            handle.write(request)
            count += 1
    return count


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out: list[bytes] = []
    offset = 0
    while offset < len(data):
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        out.append(data[offset : offset + size])
        offset += size
    return out


class ProtocolError(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ProtocolError(f"not an HTTP/1.1 answer: {head[:40]!r}")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        length = int(lower[at + 17 : end])
        return status, await reader.readexactly(length) if length else b""
    if b"\r\ntransfer-encoding: chunked" in lower:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from our servers
                return status, bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return status, b""


async def _phase(host: str, port: int, phase: dict[str, Any]) -> dict[str, Any]:
    requests = read_requests(Path(phase["requests"]))
    connections = min(int(phase.get("connections", 1)), max(1, len(requests)))
    max_seconds = float(phase.get("max_seconds", 600))
    keep = {int(index) for index in phase.get("keep", [])}
    must = phase.get("must_contain")
    must_contain = must.encode() if isinstance(must, str) else None
    latencies: list[float | None] = [None] * len(requests)
    statuses: Counter[int | str] = Counter()
    kept: dict[int, bytes] = {}
    lacking = 0
    received = 0
    counter = itertools.count()
    streams = [await asyncio.open_connection(host, port) for _ in range(connections)]
    start = time.perf_counter()
    deadline = start + max_seconds

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal lacking, received
        perf = time.perf_counter
        while True:
            index = next(counter)
            if index >= len(requests) or perf() > deadline:
                return
            sent = perf()
            writer.write(requests[index])
            try:
                status, body = await _read_response(reader)
            except (OSError, EOFError, ValueError, ProtocolError) as exc:
                # Counted, and this connection stops: the harness reports the statuses.
                statuses[f"{type(exc).__name__}"] += 1
                return
            latencies[index] = perf() - sent
            statuses[status] += 1
            received += len(body)
            if must_contain is not None and must_contain not in body:
                lacking += 1
            if index in keep:
                kept[index] = body

    await asyncio.gather(*(connection(reader, writer) for reader, writer in streams))
    seconds = time.perf_counter() - start
    for _, writer in streams:
        writer.close()
    done = [latency for latency in latencies if latency is not None]
    return {
        "name": phase.get("name", ""),
        "requests": len(requests),
        "completed": len(done),
        "connections": connections,
        "seconds": seconds,
        "timed_out": len(done) < len(requests),
        "latencies": done,
        "statuses": {str(code): count for code, count in statuses.items()},
        "lacking": lacking,
        "bytes_in": received,
        "kept": {str(index): base64.b64encode(body).decode() for index, body in kept.items()},
    }


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    phases = [await _phase(spec["host"], int(spec["port"]), phase) for phase in spec["phases"]]
    return {"phases": phases}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    spec = orjson.loads(Path(args[0]).read_bytes())
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        loop = "asyncio"
        result = asyncio.run(_run(spec))
    else:
        loop = "uvloop"
        result = uvloop.run(_run(spec))
    result["loop"] = loop
    Path(args[1]).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
