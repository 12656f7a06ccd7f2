"""The docs site builds with `mkdocs build --strict`: a broken link or anchor, a missing page, a
page left out of the nav or a snippet whose file is gone fails the suite, not a reader."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "observability" / "metrics" / "index.html").is_file()


def test_the_readme_links_only_to_pages_that_exist() -> None:
    """The README is read on GitHub, outside the site's build: its own links are checked here."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?:docs|deploy)/[^)#]+)", readme)
    assert targets
    assert [target for target in targets if not (ROOT / target).is_file()] == []


def nav_depths(entries: list[Any], depth: int = 1) -> dict[str, int]:
    """Page -> how many clicks from the top bar: a top entry is one, an entry in a section two."""
    found: dict[str, int] = {}
    for entry in entries:
        target = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(target, list):
            found.update(nav_depths(target, depth + 1))
        else:
            found[target] = depth
    return found


def test_every_page_is_within_two_clicks() -> None:
    """Any endpoint, setting, metric or chart value is on a page two clicks away at most."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    depths = nav_depths(config["nav"])
    assert {"api.md", "settings.md", "observability/metrics.md", "deploy/values.md"} <= set(depths)
    assert {page: depth for page, depth in depths.items() if depth > 2} == {}
