"""The benchmark results table, from ``benchmarks/results/*.json`` through ``benchmarks.report``
(the same Markdown ``make bench`` prints), so the docs show what the last run wrote.

The full run is ``latest.json``; a scenario re-run on its own later (``make bench --only ...``)
replaces that scenario's rows, as the Performance page says.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.report import RESULTS, markdown
from benchmarks.stats import Figure

FULL_RUN = "latest.json"
# Re-runs whose scenarios replace the full run's, oldest first.
RERUNS = ("only-instrumentation.json", "only-instrumentation-cpu.json")


def figures_of(name: str, results: Path = RESULTS) -> list[Figure]:
    data = json.loads((results / name).read_text())
    return [Figure.from_json(figure) for figure in data["figures"]]


def scenario_order(figure: Figure) -> tuple[int, str]:
    """ "5 instrumentation" < "5b instructions" < "6 memory": number, then its letter."""
    match = re.match(r"(\d+)(\w*)", figure.scenario)
    return (int(match.group(1)), match.group(2)) if match else (1 << 30, figure.scenario)


def merged(results: Path = RESULTS) -> list[Figure]:
    figures = figures_of(FULL_RUN, results)
    for name in RERUNS:
        rerun = figures_of(name, results)
        replaced = {figure.scenario for figure in rerun}
        figures = [figure for figure in figures if figure.scenario not in replaced] + rerun
    return sorted(figures, key=scenario_order)  # stable: rows keep their order in a scenario


def render() -> str:
    return markdown(merged()) + "\n"
