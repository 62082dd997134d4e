"""Profiles of the workloads behind missed targets, with pyinstrument.

    python -m bench.profiles import --db sqlite --rows 100000
    python -m bench.profiles verify --db postgres --rows 50000
    python -m bench.profiles verify-single --db sqlite --rows 4000
    python -m bench.profiles writes --db sqlite --rows 2000
    python -m bench.profiles proofs --db sqlite --rows 100000

Each builds its own scratch ledger (dropped afterwards), profiles one run of
the workload in this process and writes `<workload>-<db>.txt` and `.html`
into --out, then prints the call tree and two summaries: the ledger's own
functions by inclusive time, and every function by self time. `writes` runs
its single appends from one thread: pyinstrument samples one thread, and the
cost per write is what the profile is for (P4's contention shows in `bench`).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyinstrument import Profiler

from bench.context import ACTOR, DEFAULT_POSTGRES_URL, SCALES, Context, Engine
from bench.workloads import decide_all, register_all, sample_indices, write_plan
from ledger.verify import verify_ledger


def _summaries(profiler: Profiler, top: int) -> str:
    session = profiler.last_session
    if session is None:
        return ""
    root = session.root_frame()
    if root is None:
        return ""
    total = root.time or 1e-9
    self_time: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)

    def name(frame: Any) -> str:
        path = str(frame.file_path_short or frame.file_path or "")
        return f"{frame.function}  {path}:{frame.line_no}"

    def walk(frame: Any, on_stack: frozenset[str]) -> None:
        label = name(frame)
        if frame.is_synthetic:
            # "[self]"/"[await]" frames: already in the parent's total_self_time.
            return
        self_time[label] += frame.total_self_time
        path = str(frame.file_path or "")
        if ("/ledger/" in path or path.startswith("ledger/")) and label not in on_stack:
            inclusive[label] += frame.time
            on_stack = on_stack | {label}
        for child in frame.children:
            walk(child, on_stack)

    walk(root, frozenset())
    lines = [f"total {total:.2f} s", "", "ledger functions by inclusive time:"]
    for label, seconds in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * seconds / total:5.1f}%  {seconds:7.2f} s  {label}")
    lines += ["", "all functions by self time:"]
    for label, seconds in sorted(self_time.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * seconds / total:5.1f}%  {seconds:7.2f} s  {label}")
    return "\n".join(lines)


def profile(name: str, work: Callable[[], object], out: Path, top: int) -> None:
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        work()
    finally:
        profiler.stop()
    out.mkdir(parents=True, exist_ok=True)
    tree = profiler.output_text(unicode=True, color=False, show_all=False)
    summary = _summaries(profiler, top)
    (out / f"{name}.txt").write_text(tree + "\n\n" + summary + "\n")
    (out / f"{name}.html").write_text(profiler.output_html())
    print(tree)
    print(summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profiles", description=__doc__)
    parser.add_argument(
        "workload", choices=("import", "verify", "verify-single", "writes", "proofs")
    )
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rows", type=int, default=100_000, help="rows imported (or writes)")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "consent-ledger-bench-data"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "consent-ledger-bench-profiles"
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    engine: Engine = args.db
    ctx = Context(
        engine=engine,
        scale=SCALES["small"],
        postgres_url=args.postgres_url,
        data_dir=args.data_dir,
    )
    name = f"{args.workload}-{args.db}"
    try:
        if args.workload == "writes":
            bench_ledger = ctx.new_ledger("writes")
            plan = write_plan(args.rows // 2, bench_ledger.ledger)

            def writes() -> None:
                register_all(bench_ledger, plan, threads=1)
                decide_all(bench_ledger, plan, threads=1)

            profile(name, writes, args.out, args.top)
            return
        if args.workload == "verify-single":
            bench_ledger = ctx.new_ledger("single")
            plan = write_plan(args.rows // 2, bench_ledger.ledger)
            register_all(bench_ledger, plan, threads=4)
            decide_all(bench_ledger, plan, threads=4)
            engine = bench_ledger.ledger.engine
            profile(name, lambda: verify_ledger(engine), args.out, args.top)
            return
        bench_ledger = ctx.new_ledger("profiled")
        path = ctx.csv(args.rows)
        ledger = bench_ledger.ledger
        if args.workload == "import":
            profile(name, lambda: ledger.import_file(path, actor=ACTOR), args.out, args.top)
            return
        ledger.import_file(path, actor=ACTOR)
        if args.workload == "verify":
            profile(name, lambda: verify_ledger(ledger.engine), args.out, args.top)
            return
        size = ledger.tree_size()

        def proofs() -> None:
            for index in sample_indices(size, 300):
                ledger.inclusion_proof(index, size)
                if index + 1 < size:
                    ledger.consistency_proof(index + 1, size)

        profile(name, proofs, args.out, args.top)
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
