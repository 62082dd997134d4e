"""Charts for HTML reports: matplotlib figures rendered to inline SVG.

Only the object-oriented API is used (no pyplot, so no global backend or
state), with SVG output whose ids are salted by a constant and which carries no
date, so the same report renders to the same bytes. Text stays text
(`svg.fonttype = none`): it prints sharply and needs no embedded fonts.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Colour-blind-safe (Okabe–Ito) palette.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
DECISION_COLOURS = {"granted": "#009E73", "denied": "#D55E00", "withdrawn": "#E69F00"}
MAX_SERIES = 6


@cache
def _figure_class() -> type[Figure]:
    # Imported on the first chart, not with the module: matplotlib (with numpy
    # and PIL) is ~45 MB that an API server answering checks should not carry.
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams.update(
        {
            "svg.hashsalt": "consent-ledger",
            "svg.fonttype": "none",
            "font.family": "sans-serif",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return Figure


def _new_figure(size: tuple[float, float]) -> Figure:
    return _figure_class()(figsize=size)


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    # Drop the XML prolog and DOCTYPE: the SVG is inlined in HTML.
    return text[text.index("<svg") :]


def _ticks(labels: Sequence[str]) -> tuple[list[int], list[str]]:
    step = max(1, len(labels) // 12)
    positions = list(range(0, len(labels), step))
    return positions, [labels[i] for i in positions]


def decisions_over_time(timeline: Mapping[str, Any]) -> str | None:
    """One line per category (the largest few, then 'other'): decisions per time bucket.

    The scale is logarithmic: a month of backdated decisions and the day of a
    bulk import differ by orders of magnitude, and both should stay readable.
    """
    buckets: list[str] = timeline["buckets"]
    if not buckets:
        return None
    series: dict[str, list[int]] = timeline["by_category"]
    ranked = sorted(series, key=lambda name: -sum(series[name]))
    shown = ranked[:MAX_SERIES]
    rest = ranked[MAX_SERIES:]
    layers = [(name, series[name]) for name in shown]
    if rest:
        layers.append(
            ("other", [sum(series[name][i] for name in rest) for i in range(len(buckets))])
        )
    figure = _new_figure((9.6, 3.0))
    axes = figure.add_subplot()
    positions = list(range(len(buckets)))
    for colour, (name, values) in zip(PALETTE, layers, strict=False):
        points = [float(v) if v else float("nan") for v in values]
        axes.plot(positions, points, marker="o", markersize=3, label=name, color=colour)
    axes.set_yscale("log")
    ticks, labels = _ticks(buckets)
    axes.set_xticks(ticks, labels, rotation=45, ha="right")
    axes.set_ylabel("decisions (log scale)")
    axes.set_title(f"Decisions per {timeline['unit']}, by category (when they took effect)")
    axes.legend(fontsize=7, ncols=4, frameon=False, loc="upper left")
    axes.grid(axis="y", alpha=0.3)
    return _svg(figure)


def rates_over_time(timeline: Mapping[str, Any]) -> str | None:
    """Lines: share of decisions that were withdrawals and refusals, per time bucket."""
    buckets: list[str] = timeline["buckets"]
    if not buckets:
        return None
    figure = _new_figure((9.6, 2.6))
    axes = figure.add_subplot()
    positions = list(range(len(buckets)))
    for key, label, colour in (
        ("withdrawal_rate", "withdrawals", DECISION_COLOURS["withdrawn"]),
        ("refusal_rate", "refusals", DECISION_COLOURS["denied"]),
    ):
        values = [float(v) * 100 if v is not None else float("nan") for v in timeline[key]]
        axes.plot(positions, values, marker="o", markersize=3, label=label, color=colour)
    ticks, labels = _ticks(buckets)
    axes.set_xticks(ticks, labels, rotation=45, ha="right")
    axes.set_ylabel("% of decisions")
    axes.set_ylim(0, 100)
    axes.set_title(f"Withdrawal and refusal rates per {timeline['unit']}")
    axes.legend(fontsize=7, frameon=False)
    return _svg(figure)


def eligibility_share(eligibility: Mapping[str, Any]) -> str | None:
    """Heat map: share of subjects eligible, per category (rows) and regime (columns)."""
    regimes = [r for r, n in eligibility["subjects_by_regime"].items() if n]
    categories: list[str] = eligibility["categories"]
    if not regimes or not categories:
        return None
    shares = [
        [
            eligibility["eligible"][regime][category] / eligibility["subjects_by_regime"][regime]
            for regime in regimes
        ]
        for category in categories
    ]
    figure = _new_figure((1.6 + 1.1 * len(regimes), 0.6 + 0.26 * len(categories)))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(
        range(len(regimes)),
        [f"{r}\n({eligibility['subjects_by_regime'][r]:,} subjects)" for r in regimes],
    )
    axes.set_yticks(range(len(categories)), categories)
    for row, values in enumerate(shares):
        for column, share in enumerate(values):
            axes.text(
                column,
                row,
                f"{share:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if share > 0.6 else "black",
            )
    axes.set_title(f"Share of subjects eligible for {eligibility['purpose']}, by regime")
    axes.spines[:].set_visible(False)
    figure.colorbar(image, ax=axes, fraction=0.04, format=lambda x, _: f"{x:.0%}")
    return _svg(figure)


OBLIGATION_BARS = (
    ("opened", "opened", PALETTE[0]),
    ("fulfilled", "fulfilled", DECISION_COLOURS["granted"]),
    ("open_at_end", "open at the end", PALETTE[1]),
    ("overdue_at_end", "overdue at the end", DECISION_COLOURS["denied"]),
)
DURATION_BARS = (("median", PALETTE[4]), ("p95", PALETTE[0]), ("max", PALETTE[7]))
DAY = 86_400


def dataset_obligations(by_dataset: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Two panels, one group of bars per dataset: purge obligations (opened, fulfilled,
    open and overdue at the end), and the time from cause to purge (median, p95, max) in
    days."""
    from matplotlib.ticker import MaxNLocator

    names = sorted(by_dataset)
    if not names:
        return None
    figure = _new_figure((9.6, 1.4 + 0.6 * len(names)))
    counts, durations = figure.subplots(1, 2, sharey=True)
    obligations = [
        (label, colour, [float(by_dataset[name]["obligations"][key]) for name in names])
        for key, label, colour in OBLIGATION_BARS
    ]
    times = [
        (
            key,
            colour,
            [(by_dataset[name]["cause_to_purge_seconds"][key] or 0) / DAY for name in names],
        )
        for key, colour in DURATION_BARS
    ]
    _grouped_bars(counts, obligations, len(names))
    _grouped_bars(durations, times, len(names))
    for row, name in enumerate(names):
        if not by_dataset[name]["cause_to_purge_seconds"]["count"]:
            durations.text(0, row, "  nothing purged", va="center", fontsize=7, color="#5b6470")
    counts.set_yticks(range(len(names)), names)
    counts.invert_yaxis()
    counts.xaxis.set_major_locator(MaxNLocator(integer=True))
    counts.set_xlabel("obligations")
    counts.set_title("Purge obligations, by dataset")
    durations.set_xlabel("days from cause to purge")
    durations.set_title("Time from cause to purge")
    return _svg(figure)


def _grouped_bars(axes: Any, bars: Sequence[tuple[str, str, list[float]]], groups: int) -> None:
    """Horizontal bars, one group per row: (label, colour, one value per row) each."""
    height = 0.8 / len(bars)
    for index, (label, colour, values) in enumerate(bars):
        offsets = [row - 0.4 + height * (index + 0.5) for row in range(groups)]
        axes.barh(offsets, values, height=height, label=label, color=colour)
    axes.grid(axis="x", alpha=0.3)
    # Below the panel, so that no legend hides a bar.
    axes.legend(
        fontsize=7,
        frameon=False,
        ncols=len(bars),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35 if groups < 3 else -0.2),
    )
