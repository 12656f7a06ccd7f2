"""`make deps` (deploy/local/system-deps.sh), which `make test` runs first: silent when every tool
is there, and where it cannot install (not root, or no apt) it names each missing package with
the command that installs it and stops, instead of letting the suite skip what needs them."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.processes import ROOT

SCRIPT = ROOT / "deploy" / "local" / "system-deps.sh"
TEST_PACKAGES = [
    "redis-server",
    "prometheus",
    "buildah",
    "podman",
    "runc",
    "debootstrap",
    "iproute2",
]


def run(
    *args: str, path: str | None = None, as_nobody: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    prefix = (
        ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        if as_nobody
        else []
    )
    return subprocess.run(
        [*prefix, "/bin/bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def bare_path() -> Iterator[str]:
    """A PATH with `id` and nothing else (every tool the suite needs is missing, apt-get too),
    in a directory the unprivileged user can read."""
    with tempfile.TemporaryDirectory(prefix="courier-deps-") as tmp:
        os.chmod(tmp, 0o755)
        (Path(tmp) / "id").symlink_to("/usr/bin/id")
        yield tmp


def test_nothing_to_install_is_silent() -> None:
    # make test ran it before this suite: everything is present now.
    result = run("test")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_without_root_each_missing_package_is_named_with_its_install_command(
    bare_path: str,
) -> None:
    result = run("test", path=bare_path, as_nobody=True)
    assert result.returncode == 1
    assert f"Missing Debian packages: {' '.join(TEST_PACKAGES)}" in result.stderr
    assert (
        "sudo apt-get update && sudo apt-get install -y --no-install-recommends "
        + " ".join(TEST_PACKAGES)
    ) in result.stderr


def test_root_without_apt_stops_with_the_same_advice(bare_path: str) -> None:
    result = run("bench", path=bare_path)
    assert result.returncode == 1
    assert "Missing Debian packages: wrk valgrind" in result.stderr


def test_an_unknown_target_is_refused() -> None:
    result = run("everything")
    assert result.returncode == 2
    assert "usage:" in result.stderr
