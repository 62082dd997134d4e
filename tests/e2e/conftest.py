"""A real deployment per test: `consent-ledger init`, `clients create`, `serve --workers 2`.

Everything runs as the operator would run it, in subprocesses of the installed
console script, against the test's own database (`database_url`, SQLite and
PostgreSQL, from tests/conftest.py) and its own CONSENT_LEDGER_HOME. Keys are
taken from the commands' output. Every wait is bounded, and the server's whole
process group is ended in the fixture's finaliser, pass or fail.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "consent-ledger")
SCOPES = ("check", "record", "read", "audit", "admin")
WORKERS = 2
READY_TIMEOUT = 60.0
CLI_TIMEOUT = 120.0


def line_after(output: str, marker: str) -> str:
    """The line after the first line containing `marker` (how the CLI prints secrets)."""
    lines = output.splitlines()
    for position, line in enumerate(lines[:-1]):
        if marker in line:
            return lines[position + 1].strip()
    raise AssertionError(f"no line after {marker!r} in:\n{output}")


def run_cli(
    env: dict[str, str], *args: str, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Deployment:
    """One initialised ledger and the `serve` process in front of it."""

    home: Path
    env: dict[str, str]
    verifier_key: str
    admin_key: str
    keys: dict[str, str] = field(default_factory=dict)  # scope -> key of a one-scope client
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    def http(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=timeout)

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-20_000:]

    def processes(self) -> list[psutil.Process]:
        """The serve process and all its descendants (uvicorn's worker processes)."""
        assert self.process is not None
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """Resident memory of the whole server: the supervisor plus every worker, in bytes."""
        total = 0
        for process in self.processes():
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def start(self) -> None:
        for _attempt in range(3):  # another test may grab the free port first
            self.port = _free_port()
            self.log_path = self.home.parent / f"serve-{self.port}.log"
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        CLI,
                        "serve",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        "--workers",
                        str(WORKERS),
                    ],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() ends the workers too
                )
            if self._wait_until_ready():
                return
            self.stop()
            if "address already in use" not in self.log().lower():
                break
        raise AssertionError(f"`consent-ledger serve` did not become ready:\n{self.log()}")

    def _wait_until_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    # Both workers up: uvicorn logs one "Application startup complete" each.
                    if self.log().count("Application startup complete") >= WORKERS:
                        return True
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
        # Workers that outlived the supervisor (they share its process group).
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def deploy(database_url: str, root: Path, extra_env: dict[str, str] | None = None) -> Deployment:
    """`init`, one `clients create` per scope, then `serve`; every step a subprocess."""
    home = root / "home"
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONSENT_")}
    env |= {
        "CONSENT_LEDGER_HOME": str(home),
        "CONSENT_LEDGER_DATABASE_URL": database_url,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "250",
        **(extra_env or {}),
    }
    init = run_cli(env, "init", "--origin", "e2e.example/ledger")
    assert init.returncode == 0, init.stdout + init.stderr
    deployment = Deployment(
        home=home,
        env=env,
        verifier_key=line_after(init.stdout, "verifier key"),
        admin_key=line_after(init.stdout, "admin API key"),
    )
    assert deployment.verifier_key.startswith("e2e.example/ledger+"), init.stdout
    assert deployment.admin_key.startswith("clk_"), init.stdout
    for scope in SCOPES:
        made = run_cli(env, "clients", "create", f"only-{scope}", "--scope", scope)
        assert made.returncode == 0, made.stdout + made.stderr
        deployment.keys[scope] = line_after(made.stdout, "API key")
        assert deployment.keys[scope].startswith("clk_"), made.stdout
    deployment.start()
    return deployment


@pytest.fixture
def deployment(database_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """A served ledger on this test's database (SQLite or PostgreSQL)."""
    started: list[Deployment] = []
    try:
        started.append(deploy(database_url, tmp_path))
        yield started[0]
    finally:
        for item in started:
            item.stop()


# --- measuring the server ------------------------------------------------------------------


class RssSampler:
    """Samples a deployment's total RSS every `interval` seconds in a background thread."""

    def __init__(self, deployment: Deployment, interval: float = 0.5) -> None:
        self.deployment = deployment
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - started, self.deployment.rss()))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.samples.append((self.samples[-1][0] if self.samples else 0.0, self.deployment.rss()))

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)


# --- a full-duplex NDJSON client -----------------------------------------------------------


@dataclass
class DuplexResult:
    status: int
    content_type: str
    lines: int
    sent_bytes: int
    received_bytes: int


def duplex_ndjson(
    deployment: Deployment,
    path: str,
    headers: dict[str, str],
    body: Iterable[bytes],
    on_line: Callable[[bytes], None],
    timeout: float = 120.0,
) -> DuplexResult:
    """POST a chunked body from `body` while reading the response line by line.

    HTTP/1.1 clients such as httpx write the whole request body before they
    read the response. A server that streams results with constant memory
    stops reading the body once the client stops reading results, so for a
    large stream the two would wait on each other forever. This client writes
    the body from one thread and reads results in the caller's thread, as a
    dataset pipeline streaming through the endpoint must.
    """
    sock = socket.create_connection(("127.0.0.1", deployment.port), timeout=timeout)
    sent = 0
    failure: list[BaseException] = []

    def write() -> None:
        nonlocal sent
        try:
            head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{deployment.port}"]
            head += [f"{name}: {value}" for name, value in headers.items()]
            head += ["Content-Type: application/x-ndjson", "Transfer-Encoding: chunked", "", ""]
            sock.sendall("\r\n".join(head).encode("latin-1"))
            for chunk in body:
                if chunk:
                    sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except BaseException as exc:  # reported by the reader
            failure.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    lines = received = 0
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        while True:
            line = response.readline()
            if not line:
                break
            received += len(line)
            lines += 1
            on_line(line)
        writer.join(timeout=timeout)
        assert not writer.is_alive(), "the request body was still being written"
        if failure:
            raise failure[0]
        return DuplexResult(
            status=response.status,
            content_type=response.getheader("content-type", ""),
            lines=lines,
            sent_bytes=sent,
            received_bytes=received,
        )
    finally:
        sock.close()
        writer.join(timeout=5)


# --- figures in the terminal summary ----------------------------------------------------------


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Show the figures tests recorded with `record_property("e2e", …)` (works under xdist)."""
    lines = []
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get(
        "failed", []
    ):
        if report.when != "call":
            continue
        for name, value in getattr(report, "user_properties", []):
            if name == "e2e":
                lines.append(f"{report.nodeid}: {json.dumps(value)}")
    if lines:
        terminalreporter.section("end-to-end figures")
        for line in lines:
            terminalreporter.write_line(line)
