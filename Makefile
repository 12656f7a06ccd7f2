# Courier: `make up` runs the local stack, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint format typecheck clean manifests images

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

up: install
	VENV=$(VENV) bash deploy/local/up.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy app worker

test: install lint typecheck
	$(BIN)/python -m pytest

# deploy/k8s/base from the Helm chart (tests/deploy/test_kustomize.py fails when it is stale).
manifests: install
	$(BIN)/python deploy/k8s/render.py

# The api and worker images (Dockerfile targets) with buildah, no Docker engine or registry
# needed; cached under /var/cache/courier-images. See README "Container images".
images:
	bash deploy/images/build.sh api worker

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-checkov .pytest_cache .mypy_cache .ruff_cache
