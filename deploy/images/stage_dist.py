"""Copy one installed distribution's files, as its RECORD lists them, under a staging root.

Used by the Dockerfile's build stages: the final images take the third-party venv as one layer
that changes only with requirements/runtime.lock, and Courier's own files (a few hundred kB) as
a second layer on top, instead of a fresh copy of the whole venv for every source change.
Usage: python3 stage_dist.py DISTRIBUTION STAGING_ROOT
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib.metadata import distribution
from pathlib import Path


def stage(name: str, root: Path) -> int:
    files = distribution(name).files or []
    for record in files:
        # normpath, not resolve(): RECORD may say ../../../bin/x, and following symlinks
        # would lead out of the venv (bin/python points at the base image's interpreter).
        source = Path(os.path.normpath(os.path.abspath(str(record.locate()))))
        target = root / source.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return len(files)


if __name__ == "__main__":
    count = stage(sys.argv[1], Path(sys.argv[2]))
    print(f"staged {count} files of {sys.argv[1]} under {sys.argv[2]}")
