"""Checkov's Kubernetes policies over the rendered chart, offline, in checkov's own venv.

deploy/helm/checkov.sh creates /work/main/.venv-checkov on first use (checkov pins many
dependencies, so it never shares the project's venv); every skipped check is listed with its
reason in deploy/helm/.checkov.yaml or in a `checkov.io/skip*` annotation beside what it excuses.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import CHART, VALUE_MATRIX, render_templates

CHECKOV = CHART.parent / "checkov.sh"
# `make test` installs checkov before the suite (`make checkov`); run alone on a fresh checkout,
# the first test's set-up installs it, a few minutes on a loaded machine (2 min when seen).
pytestmark = pytest.mark.timeout(600)


def write_render(directory: Path, name: str) -> None:
    texts = render_templates(VALUE_MATRIX[name])
    documents = [text for path, text in sorted(texts.items()) if path.endswith(".yaml")]
    (directory / f"{name}.yaml").write_text("\n---\n".join(documents))


def run_checkov(directory: Path) -> dict[str, object]:
    result = subprocess.run(
        ["bash", str(CHECKOV), "-d", str(directory), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert result.stdout.strip(), f"checkov printed no report: {result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    # One framework gives an object, several a list.
    first: dict[str, object] = report[0] if isinstance(report, list) else report
    return first


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("checkov")
    for name in ("default", "keda", "everything-on", "external-redis-url", "sentinel"):
        write_render(directory, name)
    return run_checkov(directory)


def test_checkov_fails_nothing_on_the_rendered_chart(report: dict[str, object]) -> None:
    results = report["results"]
    assert isinstance(results, dict)
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in results["failed_checks"]
    ]
    assert failed == []
    summary = report["summary"]
    assert isinstance(summary, dict)
    assert summary["passed"] > 500
    assert summary["parsing_errors"] == 0


def test_checkov_skips_only_with_a_reason(report: dict[str, object]) -> None:
    results = report["results"]
    assert isinstance(results, dict)
    assert results["skipped_checks"], "the beat and test-pod annotations should be honoured"
    for check in results["skipped_checks"]:
        assert check["check_id"] in {"CKV_K8S_8", "CKV_K8S_9"}, check["check_id"]
        assert len(check["check_result"]["suppress_comment"]) > 20, check["resource"]


def test_checkov_flags_a_privileged_pod(tmp_path: Path) -> None:
    """The run really checks: a privileged, root pod without limits is reported."""
    tmp_path.joinpath("bad.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  namespace: x\nspec:\n"
        "  containers:\n    - name: bad\n      image: bad:1\n"
        "      securityContext:\n        privileged: true\n"
    )
    results = run_checkov(tmp_path)["results"]
    assert isinstance(results, dict)
    assert {"CKV_K8S_16", "CKV_K8S_13"} <= {c["check_id"] for c in results["failed_checks"]}
