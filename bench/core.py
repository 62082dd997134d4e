"""The measurement registry and what a measurement returns.

A measurement is a function `(Context) -> list[Result]` registered with
`@measurement("P3", ...)`. Each `Result` carries the figure, the baseline
measured in the same run, their ratio, and the SPEC §6 target (an absolute
bound and/or a bound on the ratio). A measurement whose subject does not exist
yet raises `NotBuilt`; the harness turns that into a "not built yet" row, so
nothing is silently left out of the table.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bench.context import Context

Status = Literal["measured", "not built yet", "failed"]


class NotBuilt(Exception):
    """The thing this measurement needs does not exist yet (say which issue builds it)."""


@dataclass(frozen=True)
class Target:
    """A SPEC §6 target: bounds on the figure and on figure / baseline."""

    minimum: float | None = None
    maximum: float | None = None
    ratio_min: float | None = None
    ratio_max: float | None = None
    text: str = ""

    def check(self, figure: float | None, ratio: float | None, bound: str = "") -> bool | None:
        """Met (True), missed (False) or not judged (None: no bound applies)."""
        checks: list[bool] = []
        if figure is not None:
            # A figure that is only a bound ("< x" after a timeout) meets a
            # minimum only if the bound could not hide a miss.
            if self.minimum is not None:
                checks.append(figure >= self.minimum and bound != "<")
            if self.maximum is not None:
                checks.append(figure <= self.maximum and bound != ">")
        if ratio is not None:
            if self.ratio_min is not None:
                checks.append(ratio >= self.ratio_min and bound != "<")
            if self.ratio_max is not None:
                checks.append(ratio <= self.ratio_max and bound != ">")
        if not checks:
            return None
        return all(checks)


@dataclass
class Result:
    key: str  # "P3"
    what: str  # what was measured, with its size
    unit: str = ""
    figure: float | None = None
    baseline: float | None = None
    baseline_what: str = ""
    target: Target = field(default_factory=Target)
    runs: str = ""  # "1 run", "median of 3", ...
    status: Status = "measured"
    bound: str = ""  # "<" or ">" when the figure is only a bound (a timeout)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.figure is None or not self.baseline:
            return None
        return self.figure / self.baseline

    @property
    def met(self) -> bool | None:
        if self.status != "measured":
            return None
        return self.target.check(self.figure, self.ratio, self.bound)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["met"] = self.met
        return data


Measure = Callable[["Context"], list[Result]]


@dataclass(frozen=True)
class Measurement:
    key: str
    title: str
    run: Measure


REGISTRY: list[Measurement] = []


def measurement(key: str, title: str) -> Callable[[Measure], Measure]:
    """Register a measurement; `--only P3` selects every one whose key is P3."""

    def register(function: Measure) -> Measure:
        REGISTRY.append(Measurement(key, title, function))
        return function

    return register


# --- timing helpers ----------------------------------------------------------------------


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def runs_text(count: int, how: str = "median") -> str:
    return "1 run" if count == 1 else f"{how} of {count}"
