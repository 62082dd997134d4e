"""`python -m bench --scale small|full --db sqlite|postgres [--only P3,P5] [--json FILE]`.

Runs every registered measurement (or those of the keys given to --only),
prints one table (figure, baseline, ratio, target, met?) and optionally saves
the results as JSON. Thresholds are reported, never enforced: the exit status
is non-zero only when a measurement fails to run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

import bench.targets  # noqa: F401  (registers the measurements)
from bench.context import DEFAULT_POSTGRES_URL, SCALES, Context, Engine
from bench.core import REGISTRY, NotBuilt, Result
from bench.server import CORES_TEXT

CORES_NOTE = (
    f"{os.cpu_count()} cores. Children (`import`, `verify`, `filter`) and in-process threads "
    "are pinned to nothing: Python holds one core (GIL) and the database takes the other "
    "(PostgreSQL server; SQLite runs inside the Python process). HTTP targets (P1, P2, P4, "
    f"P7 API, P8): {CORES_TEXT}."
)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().split()
        memory_gb = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        memory_gb = 0.0
    return {
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def revision() -> str:
    """The commit measured, `+dirty` when ledger/, api/ or cli/ differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ledger", "api", "cli"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _number(value: float | None, unit: str = "", bound: str = "") -> str:
    if value is None:
        return "—"
    if unit == "ms" or abs(value) < 10:
        text = f"{value:,.2f}"
    else:
        text = f"{value:,.0f}"
    return f"{bound}{text}" + (f" {unit}" if unit else "")


def render(results: list[Result], title: str, console: Console) -> None:
    table = Table(title=title, show_lines=True)
    table.add_column("#", no_wrap=True)
    table.add_column("measurement")
    table.add_column("figure", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target")
    table.add_column("met?", justify="center")
    for result in results:
        if result.status != "measured":
            table.add_row(result.key, result.what, result.note, "—", "—", "—", result.status)
            continue
        met = {True: "[green]yes[/]", False: "[red]NO[/]", None: "—"}[result.met]
        baseline = _number(result.baseline, result.unit)
        if result.baseline_what:
            baseline += f"\n[dim]{result.baseline_what}[/]"
        figure = _number(result.figure, result.unit, result.bound)
        if result.note:
            figure += f"\n[dim]{result.note}[/]"
        ratio = "—" if result.ratio is None else f"{result.bound}{result.ratio:.2f}×"
        table.add_row(
            result.key,
            f"{result.what}\n[dim]{result.runs}[/]",
            figure,
            baseline,
            ratio,
            result.target.text,
            met,
        )
    console.print(table)


def _chosen(key: str, title: str, only: set[str]) -> bool:
    """`--only P8` selects every measurement of P8; `--only P8/resum` only those of P8
    whose title holds "resum" (any case)."""
    for token in only:
        wanted, _, word = token.partition("/")
        if key == wanted and word.lower() in title.lower():
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated keys, e.g. P3,P5; KEY/WORD: only KEY's measurements whose "
        "title holds WORD (e.g. P8/resum)",
    )
    parser.add_argument("--json", type=Path, help="also save the results here")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CONSENT_LEDGER_BENCH_POSTGRES_URL")
        or os.environ.get("CONSENT_LEDGER_TEST_POSTGRES_URL")
        or DEFAULT_POSTGRES_URL,
        help="server where scratch databases bench_<random>_* are created and dropped",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "consent-ledger-bench-data",
        help="where generated CSV files are cached",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    args = parser.parse_args(argv)
    engine: Engine = args.db
    only = {key.strip().upper() for key in args.only.split(",") if key.strip()}
    selected = [m for m in REGISTRY if not only or _chosen(m.key, m.title, only)]
    console = Console(width=max(160, Console().width))
    ctx = Context(
        engine=engine,
        scale=SCALES[args.scale],
        postgres_url=args.postgres_url,
        data_dir=args.data_dir,
        keep=args.keep,
    )
    results: list[Result] = []
    failed = False
    info_before = machine()
    commit = revision()
    started = time.perf_counter()
    try:
        for item in selected:
            step = time.perf_counter()
            console.print(f"[dim]{item.key} {item.title} …[/]", highlight=False)
            try:
                results.extend(item.run(ctx))
            except NotBuilt as exc:
                results.append(
                    Result(key=item.key, what=item.title, status="not built yet", note=str(exc))
                )
            except Exception as exc:
                failed = True
                traceback.print_exc()
                results.append(
                    Result(key=item.key, what=item.title, status="failed", note=repr(exc)[:200])
                )
            console.print(f"[dim]  {time.perf_counter() - step:.1f} s[/]", highlight=False)
    finally:
        ctx.close()
    total = time.perf_counter() - started
    load_before = info_before["load_average"]
    results.sort(key=lambda result: result.key)  # stable: registry order within a key
    info = machine()
    title = (
        f"consent-ledger benchmarks — {args.db}, scale {args.scale}, "
        f"commit {commit}, {info['cores']} cores {info['cpu']}, {info['memory_gb']} GB, "
        f"{total:.0f} s, "
        f"load average {load_before[0]:.1f} before, {info['load_average'][0]:.1f} after"
    )
    render(results, title, console)
    console.print(f"[dim]{CORES_NOTE}[/]", highlight=False)
    if args.json:
        payload = {
            "db": args.db,
            "scale": args.scale,
            "seconds": total,
            "machine": info,
            "load_average_before": load_before,
            "commit": commit,
            "cores": CORES_NOTE,
            "results": [result.to_json() for result in results],
        }
        args.json.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
