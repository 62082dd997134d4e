"""What measurements share: the scale, scratch databases, ledgers and child processes.

Every ledger the harness builds lives in its own scratch database (a SQLite
file in a temporary directory, or a `bench_<random>` PostgreSQL database)
with its own home directory for keys; all of them are removed when the run
ends. Ledgers that several measurements need (the bulk-imported log, the log
written by single appends, the 10k-entry log) are built once, on first use,
so that `--only` works for any subset.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.data import cached_csv
from ledger.service import ConsentLedger
from ledger.settings import Settings

Engine = Literal["sqlite", "postgres"]
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ACTOR = "bench"


@dataclass(frozen=True)
class Scale:
    name: str
    import_rows: int  # P3/P7: rows in the generated CSV
    small_log_rows: int  # rows whose import gives a log of at least `small_log_entries`
    small_log_entries: int  # P6 baseline tree size
    large_log_entries: int  # P6 tree size (capped at the bulk log's size)
    single_writes: int  # P4/P5: single appends (half registrations, half decisions)
    threads: int  # P4 concurrency
    proofs: int  # P6: proofs per measurement (random leaves)
    repeats: int  # fast measurements: median of this many runs
    verify_timeout: float  # P5: a verify still running after this is stopped
    batches: int  # P1: distinct 10k-item batches (each sent once cold, then `batch_passes` warm)
    batch_passes: int  # P1: warm passes over the batches
    checks: int  # P2: single checks over HTTP (the bare baseline gets the same count)
    http_seconds: float  # P1/P2/P4: a load phase stops sending after this many seconds
    dataset_members: int  # P9: members of each of the 10 builds
    withdrawals: int  # P9: subjects withdrawn (and granted again) one after another
    feed_resumes: int  # P8: rounds of one page after the early and the late cursor


SCALES = {
    "small": Scale(
        name="small",
        import_rows=10_000,
        small_log_rows=8_000,
        small_log_entries=10_000,
        large_log_entries=1_000_000,
        single_writes=1_000,
        threads=32,
        proofs=100,
        repeats=3,
        verify_timeout=30,
        batches=5,
        batch_passes=1,
        checks=2_000,
        http_seconds=30,
        dataset_members=10_000,
        withdrawals=10,
        feed_resumes=5,
    ),
    "full": Scale(
        name="full",
        import_rows=1_000_000,
        small_log_rows=8_000,
        small_log_entries=10_000,
        large_log_entries=1_000_000,
        single_writes=10_000,
        threads=32,
        proofs=300,
        repeats=3,
        verify_timeout=180,
        batches=10,
        batch_passes=3,
        checks=5_000,
        http_seconds=60,
        dataset_members=1_000_000,
        withdrawals=20,
        feed_resumes=9,
    ),
}


@dataclass
class BenchLedger:
    """A ledger in a scratch database, with what its child processes need."""

    name: str
    ledger: ConsentLedger
    settings: Settings
    url: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CONSENT_LEDGER_HOME"] = str(self.settings.home)
        env["CONSENT_LEDGER_DATABASE_URL"] = self.url
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env


@dataclass
class ChildRun:
    seconds: float
    max_rss_mb: float
    returncode: int | None  # None: stopped at the timeout
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def json(self) -> Any:
        return json.loads(self.stdout)


class Context:
    def __init__(
        self,
        *,
        engine: Engine,
        scale: Scale,
        postgres_url: str,
        data_dir: Path,
        keep: bool = False,
    ) -> None:
        self.engine = engine
        self.scale = scale
        self.postgres_url = postgres_url
        self.data_dir = data_dir
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="consent-ledger-bench-"))
        self.tag = secrets.token_hex(4)
        self._databases: list[str] = []
        self._ledgers: list[BenchLedger] = []
        self.cache: dict[str, Any] = {}
        self._cleanups: list[Callable[[], None]] = []

    # --- scratch databases ------------------------------------------------------------

    def scratch_url(self, name: str) -> str:
        if self.engine == "sqlite":
            return f"sqlite:///{self.tmp / name / 'ledger.db'}"
        database = f"bench_{self.tag}_{name}"
        with psycopg.connect(_libpq(self.postgres_url), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        self._databases.append(database)
        return (
            make_url(self.postgres_url).set(database=database).render_as_string(hide_password=False)
        )

    def new_ledger(self, name: str) -> BenchLedger:
        url = self.scratch_url(name)
        settings = Settings(home=self.tmp / name / "home", database_url=url)
        ledger, _ = ConsentLedger.initialize(
            settings, origin=f"bench.consent-ledger.local/{name}", actor=ACTOR
        )
        bench_ledger = BenchLedger(name=name, ledger=ledger, settings=settings, url=url)
        self._ledgers.append(bench_ledger)
        return bench_ledger

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` (e.g. stop a server) when the run ends, before databases are dropped."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:  # a failed cleanup must not keep the rest from running
                print(f"cleanup failed: {exc!r}", file=sys.stderr)
        for bench_ledger in self._ledgers:
            bench_ledger.ledger.close()
        if self.keep:
            print(f"kept: {self.tmp} {' '.join(self._databases)}")
            return
        if self._databases:
            with psycopg.connect(_libpq(self.postgres_url), autocommit=True) as connection:
                for database in self._databases:
                    connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- data -------------------------------------------------------------------------

    def csv(self, rows: int) -> Path:
        return cached_csv(self.data_dir, rows)

    # --- child processes --------------------------------------------------------------

    def run_child(
        self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None
    ) -> ChildRun:
        """Run a process to completion (or to `timeout`), with its wall time and peak RSS.

        The peak RSS comes from GNU time (`/usr/bin/time -f %M`), which forks
        the command from its own small process: the rusage of a child forked
        straight from this (large) process would count this process's pages,
        since Linux carries the pre-exec high-water mark into ru_maxrss.
        GNU time reports the largest single process, so the command's process
        tree is also polled (/proc/PID/status VmHWM, reset by exec): when the
        command runs helpers (an import's writer process), the figure is the
        sum of every process's own peak, an upper bound on what they held at
        once.
        """
        out = tempfile.TemporaryFile()
        err = tempfile.TemporaryFile()
        report = Path(tempfile.mkstemp(prefix="rss-", dir=self.tmp)[1])
        gnu_time = shutil.which("time", path="/usr/bin:/bin")
        command = [gnu_time, "-f", "%M", "-o", str(report), *argv] if gnu_time else argv
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=out, stderr=err, env=env, cwd=ROOT, start_new_session=True
        )
        deadline = None if timeout is None else start + timeout
        returncode: int | None = None
        hwm_kib = 0
        peaks: dict[int, int] = {}
        while True:
            try:
                returncode = process.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            for pid in _command_pids(process.pid, wrapped=gnu_time is not None):
                peaks[pid] = max(peaks.get(pid, 0), _vm_hwm_kib(pid))
            if deadline is not None and time.perf_counter() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                returncode = None
                break
        seconds = time.perf_counter() - start
        if gnu_time and returncode is not None:
            lines = report.read_text().split()
            # GNU time prefixes "Command exited with non-zero status N" when it fails.
            hwm_kib = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        hwm_kib = max(hwm_kib, sum(peaks.values()))
        out.seek(0)
        err.seek(0)
        return ChildRun(
            seconds=seconds,
            max_rss_mb=hwm_kib / 1024,
            returncode=returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )

    def console_script(self) -> str:
        return str(Path(sys.executable).parent / "consent-ledger")

    # --- shared ledgers ---------------------------------------------------------------

    def bulk_ledger(self) -> BenchLedger:
        """The log written by `consent-ledger import` of `scale.import_rows` rows.

        The import runs as a child process (the real CLI), so its wall time is
        P3 and its peak RSS is P7's import figure.
        """
        if "bulk" in self.cache:
            bulk: BenchLedger = self.cache["bulk"]
            return bulk
        bulk = self.imported_ledger("bulk")
        self.cache["bulk"] = bulk
        return bulk

    def imported_ledger(self, name: str) -> BenchLedger:
        """A new ledger holding the bulk population: `consent-ledger import` of the bulk
        CSV in a child process, its wall time and peak RSS in `info`."""
        path = self.csv(self.scale.import_rows)
        imported = self.new_ledger(name)
        run = self.run_child(
            [self.console_script(), "import", str(path), "--json"], env=imported.env
        )
        if run.returncode != 0:
            raise RuntimeError(f"import failed ({run.returncode}): {run.stderr[-2000:]}")
        summary = run.json()
        imported.info.update(
            rows=self.scale.import_rows,
            seconds=run.seconds,
            max_rss_mb=run.max_rss_mb,
            entries=summary["entries"],
            tree_size=summary["tree_size"],
            batches=summary["batches"],
        )
        return imported

    def small_ledger(self) -> BenchLedger:
        """A log of at least `scale.small_log_entries` entries (P6's 10k baseline)."""
        if "small" in self.cache:
            small: BenchLedger = self.cache["small"]
            return small
        small = self.new_ledger("small")
        summary = small.ledger.import_file(self.csv(self.scale.small_log_rows), actor=ACTOR)
        if summary.tree_size < self.scale.small_log_entries:
            raise RuntimeError(
                f"{self.scale.small_log_rows} rows gave only {summary.tree_size} entries"
            )
        small.info.update(tree_size=summary.tree_size)
        self.cache["small"] = small
        return small

    def sql(self, bench_ledger: BenchLedger, statement: str) -> Any:
        with bench_ledger.ledger.engine.connect() as connection:
            return connection.execute(text(statement)).scalar()


def _command_pids(pid: int, *, wrapped: bool) -> list[int]:
    """The command's processes: `pid` and its descendants, less GNU time's own process."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return [process.pid for process in tree if not (wrapped and process.pid == pid)]


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _libpq(url: str) -> str:
    """A SQLAlchemy psycopg URL as a libpq connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
