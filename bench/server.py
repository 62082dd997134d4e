"""HTTP servers and the load generator as separate processes, pinned to their cores.

`start_server(argv, env)` starts a server (`consent-ledger serve …` or
`python -m bench.bare_app …`) on a free loopback port in its own process
group, pinned to SERVER_CORES, and waits for `/healthz`. `run_load(server,
phases)` runs `python -m bench.loadgen` pinned to LOADGEN_CORES against it and
returns its result. On a machine with fewer than 2 cores nothing is pinned.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil  # type: ignore[import-untyped]

from bench.context import ROOT
from bench.loadgen import write_requests

HOST = "127.0.0.1"
WORKERS = 1
PINNED = (os.cpu_count() or 1) >= 2
SERVER_CORES = {0}
LOADGEN_CORES = {1}
CORES_TEXT = (
    f"server: {WORKERS} uvicorn worker pinned to core 0; load generator: 1 process "
    "(asyncio, uvloop) pinned to core 1; the database unpinned"
    if PINNED
    else "server and load generator share the only core"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _pin(cores: set[int]) -> Callable[[], None] | None:
    if not PINNED:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cores)

    return pin


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Server:
    """A running server process (and its worker children, if any)."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    peak_rss_mb: float = 0.0  # highest sampled sum of RSS over the process tree
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    def processes(self) -> list[psutil.Process]:
        try:
            parent = psutil.Process(self.process.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_mb(self) -> float:
        total = 0
        for process in self.processes():
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 1024 / 1024

    def hwm_mb(self) -> float:
        """Sum of the processes' kernel high-water marks (exact for one process)."""
        return sum(_hwm_kib(process.pid) for process in self.processes()) / 1024

    def peak_mb(self) -> float:
        return max(self.peak_rss_mb, self.hwm_mb())

    def start_sampling(self, interval: float = 0.05) -> None:
        def sample() -> None:
            while not self._stop.wait(interval):
                self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())

        self._sampler = threading.Thread(target=sample, name=f"rss-{self.name}", daemon=True)
        self._sampler.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def start_server(
    name: str, argv: Sequence[str], env: dict[str, str], directory: Path, timeout: float = 60
) -> Server:
    port = free_port()
    log = directory / f"server-{name}-{port}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*argv, "--host", HOST, "--port", str(port), "--workers", str(WORKERS)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_pin(SERVER_CORES),
        )
    server = Server(name=name, process=process, port=port, log=log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} server exited ({process.returncode}): {server.tail()}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} server not ready after {timeout:.0f} s: {server.tail()}")
        time.sleep(0.1)
    server.start_sampling()
    return server


def run_client(module: str, spec: dict[str, Any], directory: Path, timeout: float) -> Any:
    """Run `python -m <module> SPEC RESULT` pinned to LOADGEN_CORES (a client process of
    the harness's own, like the load generator) and return the JSON it wrote."""
    work = Path(tempfile.mkdtemp(prefix="client-", dir=directory))
    spec_path, out_path = work / "spec.json", work / "result.json"
    spec_path.write_bytes(orjson.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        completed = subprocess.run(
            [sys.executable, "-m", module, str(spec_path), str(out_path)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=timeout,
            preexec_fn=_pin(LOADGEN_CORES),
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{module} failed ({completed.returncode}): "
                f"{completed.stderr.decode(errors='replace')[-2000:]}"
            )
        return orjson.loads(out_path.read_bytes())
    finally:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


@dataclass
class Phase:
    name: str
    requests: list[bytes]
    connections: int
    max_seconds: float = 600
    keep: Sequence[int] = ()
    must_contain: str | None = None


@dataclass
class PhaseResult:
    name: str
    requests: int
    completed: int
    connections: int
    seconds: float
    latencies: list[float]
    statuses: dict[str, int]
    lacking: int
    bytes_in: int
    kept: dict[int, bytes]

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def ok(self, status: int) -> int:
        return self.statuses.get(str(status), 0)


def run_load(
    server: Server | int, phases: Sequence[Phase], directory: Path
) -> dict[str, PhaseResult]:
    """Run the phases, in order, from a load-generator process; results by phase name.

    `server` is a started Server, or the port of a server run some other way.
    """
    port = server if isinstance(server, int) else server.port
    work = Path(tempfile.mkdtemp(prefix="loadgen-", dir=directory))
    spec: dict[str, Any] = {"host": HOST, "port": port, "phases": []}
    for number, phase in enumerate(phases):
        path = work / f"{number}.bin"
        write_requests(path, phase.requests)
        spec["phases"].append(
            {
                "name": phase.name,
                "requests": str(path),
                "connections": phase.connections,
                "max_seconds": phase.max_seconds,
                "keep": list(phase.keep),
                "must_contain": phase.must_contain,
            }
        )
    spec_path, out_path = work / "spec.json", work / "result.json"
    spec_path.write_bytes(orjson.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    budget = sum(phase.max_seconds for phase in phases) + 60
    completed = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=budget,
        preexec_fn=_pin(LOADGEN_CORES),
        check=False,
    )
    if completed.returncode != 0:
        log = "" if isinstance(server, int) else f"\nserver log: {server.tail()}"
        raise RuntimeError(
            f"load generator failed ({completed.returncode}): "
            f"{completed.stderr.decode(errors='replace')[-2000:]}{log}"
        )
    result = orjson.loads(out_path.read_bytes())
    out: dict[str, PhaseResult] = {}
    for phase in result["phases"]:
        out[phase["name"]] = PhaseResult(
            name=phase["name"],
            requests=phase["requests"],
            completed=phase["completed"],
            connections=phase["connections"],
            seconds=phase["seconds"],
            latencies=phase["latencies"],
            statuses=phase["statuses"],
            lacking=phase["lacking"],
            bytes_in=phase["bytes_in"],
            kept={int(index): base64.b64decode(body) for index, body in phase["kept"].items()},
        )
    for path in work.iterdir():
        path.unlink()
    work.rmdir()
    return out
