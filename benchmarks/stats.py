"""Figures of a scenario: values per run, each paired with the baseline measured in that run."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): no interpolation between two samples."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def text(self, digits: int = 2) -> str:
        if self.low == self.high:
            return f"{self.median:,.{digits}f}"
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"


@dataclass
class Figure:
    """One row of the table: ``values[i]`` and ``baselines[i]`` come from the same run."""

    scenario: str
    measure: str
    unit: str
    values: list[float]
    baseline: str
    baselines: list[float]
    target: str = ""
    # A predicate on the median ratio; None when the row is informative only.
    target_ratio_max: float | None = None
    target_ratio_min: float | None = None
    # An absolute bound on the median value, for targets stated in units (p50 <= 2 ms).
    target_value_max: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratios(self) -> list[float]:
        pairs = zip(self.values, self.baselines, strict=True)
        return [v / b if b else float("nan") for v, b in pairs]

    @property
    def met(self) -> bool | None:
        ratio = Spread.of(self.ratios).median
        if self.target_value_max is not None:
            return Spread.of(self.values).median <= self.target_value_max
        if self.target_ratio_min is not None:
            return ratio >= self.target_ratio_min
        if self.target_ratio_max is not None:
            return ratio <= self.target_ratio_max
        return None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figure:
        """A figure as ``as_json`` wrote it (its derived fields are recomputed, not read)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"] = asdict(Spread.of(self.values))
        data["baseline_value"] = asdict(Spread.of(self.baselines))
        data["ratio"] = asdict(Spread.of(self.ratios))
        data["target_met"] = self.met
        return data
