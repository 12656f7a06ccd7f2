"""Where a chaos scenario's processes write their logs and data.

A fresh temporary directory, deleted once the scenario is over (``make chaos`` runs many), unless
a directory to keep them in is named: the suite names the test's own ``tmp_path``
(``tests/reliability/conftest.py``), so the worker, API and Redis logs of a scenario that failed
are still there to read (pytest keeps a failed test's directory), and their last lines are
shown in the failure's report. A flake seen once (5 duplicates counted against a limit of 4 in
``test_killed_pool_children_and_workers_lose_nothing``) could not be diagnosed without them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Set by the suite for each chaos test; None under ``make chaos``.
KEEP_IN: Path | None = None


@contextmanager
def scenario_dir(prefix: str) -> Iterator[Path]:
    if KEEP_IN is not None:
        yield Path(tempfile.mkdtemp(prefix=prefix, dir=KEEP_IN))
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)
