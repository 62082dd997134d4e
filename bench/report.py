"""`python -m bench.report RESULTS.json`: a saved run as a Markdown table (docs/BENCHMARKS.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson


def _number(value: float | None, unit: str, bound: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.2f}" if unit == "ms" or abs(value) < 10 else f"{value:,.0f}"
    return f"{bound}{text} {unit}".strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(payload: dict[str, Any]) -> str:
    machine = payload["machine"]
    lines = [
        f"`--db {payload['db']} --scale {payload['scale']}`"
        + (f" at commit {payload['commit']}" if "commit" in payload else "")
        + f": {payload['seconds']:.0f} s on "
        f"{machine['cores']} × {machine['cpu']}, {machine['memory_gb']} GB, "
        f"Python {machine['python']}"
        + (
            f"; load average {payload['load_average_before'][0]:.1f} before, "
            f"{machine['load_average'][0]:.1f} after"
            if "load_average_before" in payload
            else ""
        ),
        "",
        "| # | measurement | figure | baseline | ratio | target | met? |",
        "|---|---|---:|---:|---:|---|:---:|",
    ]
    for result in sorted(payload["results"], key=lambda result: result["key"]):
        if result["status"] != "measured":
            lines.append(
                f"| {result['key']} | {_cell(result['what'])} | {_cell(result['note'])} "
                f"| — | — | — | {result['status']} |"
            )
            continue
        unit, bound = result["unit"], result["bound"]
        figure = _number(result["figure"], unit, bound)
        if result["note"]:
            figure += f"<br><sub>{_cell(result['note'])}</sub>"
        baseline = _number(result["baseline"], unit)
        if result["baseline_what"]:
            baseline += f"<br><sub>{_cell(result['baseline_what'])}</sub>"
        ratio = "—" if result["ratio"] is None else f"{bound}{result['ratio']:.2f}×"
        met = {True: "yes", False: "**no**", None: "—"}[result["met"]]
        what = f"{_cell(result['what'])}<br><sub>{_cell(result['runs'])}</sub>"
        target = _cell(result["target"]["text"])
        lines.append(
            f"| {result['key']} | {what} | {figure} | {baseline} | {ratio} | {target} | {met} |"
        )
    return "\n".join(lines)


def main() -> None:
    for name in sys.argv[1:]:
        print(markdown(orjson.loads(Path(name).read_bytes())))
        print()


if __name__ == "__main__":
    main()
