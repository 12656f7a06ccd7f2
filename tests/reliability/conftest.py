"""Chaos scenarios keep their processes' logs in the test's own directory, and a failed one
shows their last lines in its report (``tests/reliability/workdirs.py`` says why)."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from tests.reliability import workdirs

KEPT = pytest.StashKey[Path]()
# Lines of each kept log shown in a failed test's report: the end of the story, where the fault
# and its aftermath are; the whole log stays in the directory.
TAIL_LINES = 40


@pytest.fixture(autouse=True)
def keep_scenario_logs(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workdirs, "KEEP_IN", tmp_path)
    request.node.stash[KEPT] = tmp_path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    kept = item.stash.get(KEPT, None)
    if kept is None or not report.failed:
        return report
    logs = sorted(kept.rglob("*.log"))
    if logs:
        tails = [f"kept in {kept}"]
        for log in logs:
            lines = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
            tails.append(f"--- {log.relative_to(kept)} (last {len(lines)} lines)")
            tails.extend(lines)
        report.sections.append(("chaos scenario logs", "\n".join(tails)))
    return report
