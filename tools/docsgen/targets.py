"""Every generated file, and what it should hold now: the one list `make docs-gen` and the
staleness test both walk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tools.docsgen import bench_tables, chart_values, metrics_table, settings_table
from tools.docsgen.regions import replace_region

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    """``path`` (from the repository root) gets ``render()``: whole, or in ``region`` only."""

    path: str
    render: Callable[[], str]
    region: str | None = None

    def expected(self) -> str:
        if self.region is None:
            return self.render()
        return replace_region((ROOT / self.path).read_text(), self.region, self.render())

    def current(self) -> str:
        file = ROOT / self.path
        return file.read_text() if file.is_file() else ""


TARGETS: tuple[Target, ...] = (
    Target("docs/settings.md", settings_table.render, region="settings"),
    Target("docs/observability/metrics.md", metrics_table.render, region="metrics"),
    Target("docs/deploy/values.md", chart_values.render_table, region="chart-values"),
    Target("deploy/helm/courier/README.md", chart_values.render_chart_readme),
    Target("docs/performance/index.md", bench_tables.render, region="bench-results"),
)


def write_all() -> list[str]:
    """Rewrite every stale target; the paths rewritten."""
    written = []
    for target in TARGETS:
        expected = target.expected()
        if expected != target.current():
            (ROOT / target.path).write_text(expected)
            written.append(target.path)
    return written
