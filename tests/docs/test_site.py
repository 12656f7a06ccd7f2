"""The docs site builds with `mkdocs build --strict`: a broken link or anchor, a missing page, a
page left out of the nav or a snippet whose file is gone fails the suite, not a reader."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
