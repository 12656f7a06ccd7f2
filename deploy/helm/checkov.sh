#!/usr/bin/env bash
# Checkov in its own virtualenv (it pins many dependencies that would fight the project's), then
# run it: `deploy/helm/checkov.sh [checkov args...]`. Idempotent: installs only when missing.
# Always offline (--skip-download) and with the skip list and its reasons in .checkov.yaml.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${CHECKOV_VENV:-$root/.venv-checkov}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/checkov" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "checkov>=3.2,<4"
fi

if [ "$#" -gt 0 ]; then
    exec "$venv/bin/checkov" --config-file "$here/.checkov.yaml" --skip-download "$@"
fi
