"""requirements/*.lock, what make, CI and the images install, against pyproject.toml.

A lock that drifted from pyproject.toml would install versions its ranges exclude, or leave out
a package it names, and nothing else would say so until an import failed in an image. Offline:
the locks are read, never re-resolved (a re-resolution would change with every release).
"""

from __future__ import annotations

import re
import tomllib
from typing import cast

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.utils.processes import ROOT

LOCKS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)", re.MULTILINE)
# Which extras each lock holds, besides the project's own dependencies.
EXTRAS = {"runtime": (), "dev": ("dev",), "bench": ("dev", "bench")}
# The interpreter the locks are made for (`make lock`: --python-version 3.11), so markers on
# pyproject.toml's requirements are judged for it and not for whatever runs the suite.
ENVIRONMENT: dict[str, str] = {
    **cast(dict[str, str], default_environment()),
    "python_version": "3.11",
    "python_full_version": "3.11.0",
}


def pins(lock: str) -> dict[str, Version]:
    text = (LOCKS / f"{lock}.lock").read_text()
    return {canonicalize_name(name): Version(version) for name, version in PIN.findall(text)}


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    return [Requirement(name) for name in names]


@pytest.mark.parametrize("lock", sorted(EXTRAS))
def test_every_requirement_is_locked_within_its_range(lock: str) -> None:
    locked = pins(lock)
    wrong = []
    for requirement in requirements(EXTRAS[lock]):
        if requirement.marker and not requirement.marker.evaluate(ENVIRONMENT):
            continue
        version = locked.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement} locked as {version}")
    assert not wrong, f"requirements/{lock}.lock is stale, run `make lock`: {wrong}"


@pytest.mark.parametrize("lock", sorted(EXTRAS))
def test_every_pin_carries_hashes(lock: str) -> None:
    text = (LOCKS / f"{lock}.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    unhashed = [entry.split()[0] for entry in entries if "--hash=sha256:" not in entry]
    assert not unhashed, f"pip --require-hashes would refuse requirements/{lock}.lock: {unhashed}"


def test_the_locks_agree_on_every_shared_version() -> None:
    """The images run what the suite tested: runtime.lock's versions are dev.lock's, and
    dev.lock's are bench.lock's."""
    runtime, dev, bench = pins("runtime"), pins("dev"), pins("bench")
    assert {name: dev.get(name) for name in runtime} == runtime
    assert {name: bench.get(name) for name in dev} == dev


def test_make_the_dockerfile_and_ci_install_from_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements/dev.lock" in makefile
    assert "--require-hashes -r requirements/bench.lock" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r /src/runtime.lock" in dockerfile
    assert "COPY requirements/runtime.lock" in dockerfile
