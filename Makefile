# Courier: `make up` runs the local stack, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock deps checkov up test lint format typecheck clean manifests images bench autoscale-sim chaos fuzz docs docs-gen

# Installs are reproducible: the exact versions and hashes in requirements/*.lock (made by
# `make lock` from pyproject.toml's ranges), then Courier itself without dependencies.
$(STAMP): pyproject.toml requirements/dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

# Re-resolve the lock files after editing pyproject.toml's dependencies: versions already locked
# are kept where they still fit (`make lock LOCK_ARGS=--upgrade` takes the newest instead).
# runtime.lock is what the images install; dev.lock what make and CI install; bench.lock adds
# the benchmarks' packages. A test checks that they agree with pyproject.toml and each other.
LOCK_ARGS ?=
lock: install
	@set -e; compile() { UV_NO_CONFIG=1 $(BIN)/uv pip compile pyproject.toml -q \
		--python-version 3.11 --generate-hashes --no-header --annotation-style line "$$@"; }; \
	compile --extra dev --extra bench $(LOCK_ARGS) -o requirements/bench.lock; \
	compile --extra dev -c requirements/bench.lock -o requirements/dev.lock; \
	compile -c requirements/bench.lock -o requirements/runtime.lock

# Debian packages the suite runs (redis-server, prometheus, buildah/podman/runc/debootstrap,
# iproute2): installed when missing as root, else named with the command that installs them.
deps:
	@bash deploy/local/system-deps.sh test

up: install
	VENV=$(VENV) bash deploy/local/up.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/codespell

typecheck: install
	$(BIN)/mypy app worker tools tests benchmarks

# The suite on both cores (pytest-xdist): each file's tests stay on one process, so a module's
# fixtures start once; then the tests marked `timing` (failovers, freezes, partitions timed
# against the clock: tests/conftest.py) alone, in one process, so nothing else stretches the
# windows they measure. Both parts always run; either failing fails the target.
# `make test PYTEST_ARGS="-n 0"` runs the first part in one process too.
# Checkov's own virtualenv is made first, so no test's time limit pays for its install.
PYTEST_ARGS ?=

test: install deps checkov lint typecheck
	@rc=0; \
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not timing" $(PYTEST_ARGS) || rc=1; \
	$(BIN)/python -m pytest -m timing $(PYTEST_ARGS) || rc=1; \
	exit $$rc

# deploy/helm/checkov.sh installs checkov into .venv-checkov when missing (tests/deploy).
checkov:
	@bash deploy/helm/checkov.sh

# The docs site (docs/, mkdocs.yml) on http://127.0.0.1:8001, rebuilt on every edit. `make test`
# builds it with --strict (tests/docs/test_site.py): a broken link or a page missing from the nav fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8001

# The docs' reference tables, regenerated from the code (tools/docsgen; tests/docs/test_generated.py
# fails when one is stale).
docs-gen: install
	$(BIN)/python -m tools.docsgen

# deploy/k8s/base and components/redis-sentinel from the Helm chart (tests/deploy/test_kustomize.py
# fails when they are stale).
manifests: install
	$(BIN)/python deploy/k8s/render.py

# The api and worker images (Dockerfile targets) with buildah, no Docker engine or registry
# needed; cached under /var/cache/courier-images. See docs/deploy/images.md.
images:
	bash deploy/images/build.sh api worker

# Benchmarks (not tests): `make bench BENCH_ARGS="--quick"` or `--only execution`; see
# docs/performance/. wrk (Debian) drives the HTTP load, valgrind counts instructions;
# both installed here when missing.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP) pyproject.toml requirements/bench.lock
	$(BIN)/python -m pip install -q --require-hashes -r requirements/bench.lock
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@bash deploy/local/system-deps.sh bench
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

autoscale-sim: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.autoscale_sim $(BENCH_ARGS)

# schemathesis at 10,000 examples per operation over the served OpenAPI document, and 10,000
# generated requests sent to the submit fast path and to FastAPI's path over HTTP (long).
fuzz: install
	COURIER_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q tests/fuzz

# The fault-injection suite at the issue's scale, with its table of figures, then the Redis
# Sentinel faults and theirs (~15 minutes): `make chaos CHAOS_ARGS="--only sentinel"` for a part.
CHAOS_ARGS ?=

chaos: install
	$(BIN)/python -m tests.reliability.chaos $(CHAOS_ARGS)

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-checkov .pytest_cache .mypy_cache .ruff_cache site
