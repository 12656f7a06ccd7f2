"""The results: a table of medians (min-max) on stdout and ``benchmarks/results/latest.json``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.stats import Figure, Spread

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    versions: dict[str, str | None] = {}
    for dist in ("celery", "kombu", "redis", "fastapi", "uvicorn", "gunicorn", "opentelemetry-sdk"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": versions,
        "redis_server": redis_version,
    }


def table(figures: list[Figure]) -> str:
    header = ("scenario", "measure", "median (min-max)", "baseline", "ratio", "target")
    rows = [header]
    for f in figures:
        mark = {True: " ✓", False: " ✗", None: ""}[f.met]
        rows.append(
            (
                f.scenario,
                f.measure,
                f"{Spread.of(f.values).text()} {f.unit}",
                f"{f.baseline}: {Spread.of(f.baselines).text()}",
                Spread.of(f.ratios).text(),
                f"{f.target}{mark}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def digits(unit: str) -> int:
    """Counted instructions are whole numbers; measured figures keep two decimals."""
    return 0 if unit == "instructions" else 2


def markdown(figures: list[Figure]) -> str:
    """The docs' table (docs/performance/, through tools/docsgen): the same rows as Markdown."""
    out = ["| scenario | measure | median (min-max) | baseline (same run) | ratio | target |"]
    out.append("|---|---|---|---|---|---|")
    for f in figures:
        mark = {True: " ✓", False: " ✗", None: ""}[f.met]
        places = digits(f.unit)
        out.append(
            f"| {f.scenario} | {f.measure} | {Spread.of(f.values).text(places)} {f.unit} | "
            f"{f.baseline}: {Spread.of(f.baselines).text(places)} | "
            f"{Spread.of(f.ratios).text()} | {f.target}{mark} |"
        )
    return "\n".join(out)


def write_json(figures: list[Figure], args: dict[str, Any], path: Path | None = None) -> Path:
    path = path or RESULTS / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "args": args,
        "figures": [f.as_json() for f in figures],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
