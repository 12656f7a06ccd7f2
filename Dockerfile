# Courier's two images from one file:
#   docker build --target api .     gunicorn + uvicorn workers (imports app/ and worker/)
#   docker build --target worker .  the worker (as the chart runs it); also beat and Flower by command
# Both run as UID/GID 10001 and work with a read-only root file system when /tmp and
# /run/metrics are writable volumes (emptyDir on Kubernetes).
#
# BASE_IMAGE is any image with `python3` (and its venv module) on PATH: the pinned official slim
# image by default, or a local Debian one where no registry is reachable (deploy/images/build.sh).
# Behind a TLS-intercepting proxy pass its CA bundle as the build secret `ca`:
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt --target api .
# It is read by pip during the build only and never lands in a layer.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

FROM ${BASE_IMAGE} AS base
# Bytecode is compiled at install time; at run time the root file system is read-only anyway.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The third-party dependencies alone, the exact versions and hashes of requirements/runtime.lock
# (`make lock`), in their own layer: editing the sources or the README does not reinstall them,
# and both targets share this layer.
FROM base AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120
COPY requirements/runtime.lock /src/runtime.lock
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/venv \
    && pip install --no-cache-dir --require-hashes -r /src/runtime.lock

# The venv as the final images get it: pip and setuptools go, since nothing imports them at run
# time and an installer has no business in a read-only runtime image (22 MB, and a steady
# source of scanner findings). One layer, shared by both targets, that changes only with
# the lock file.
FROM deps AS venv
RUN pip uninstall --yes --quiet pip setuptools

# Each target installs the project (non-editable, from the one pyproject.toml) with only the
# packages it needs present in the build context: setuptools' `include = ["app*", "worker*"]`
# finds no `app` in build-worker, so the worker image never contains the API (the worker never
# imports it) and its installed-files record stays true, unlike deleting `app` after the fact.
# stage_dist.py then copies just Courier's installed files (per that record) to /staging, so a
# source change adds a layer of a few hundred kB rather than another copy of the venv.
FROM deps AS build-worker
COPY deploy/images/stage_dist.py /usr/local/lib/stage_dist.py
COPY pyproject.toml /src/pyproject.toml
COPY README.md /src/README.md
COPY worker /src/worker
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-cache-dir --no-deps /src \
    && python3 /usr/local/lib/stage_dist.py courier /staging

FROM deps AS build-api
COPY deploy/images/stage_dist.py /usr/local/lib/stage_dist.py
COPY pyproject.toml /src/pyproject.toml
COPY README.md /src/README.md
COPY worker /src/worker
COPY app /src/app
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-cache-dir --no-deps /src \
    && python3 /usr/local/lib/stage_dist.py courier /staging

# What both final images share: the base (no compilers, no pip caches, no sources), a fixed
# non-root user whose UID Kubernetes' runAsUser can name, the Prometheus multiprocess
# directory it owns (an emptyDir is mounted over it in a pod), and the third-party venv.
FROM base AS runtime
ENV PROMETHEUS_MULTIPROC_DIR=/run/metrics
RUN groupadd --gid 10001 courier \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin courier \
    && install -d -o 10001 -g 10001 -m 0755 /run/metrics
COPY --from=venv /opt/venv /opt/venv
WORKDIR /tmp

# Exec form everywhere: no shell or init in between that could signal the pool children.
# The supervisor (worker/supervisor.py), as the chart runs it: with COURIER_WORKER_POOL=inline
# (the chart's default) it is PID 1, runs one inline worker per --concurrency (default: the
# cores) and forwards SIGTERM to each; with prefork (the setting's default) it execs
# `celery -A worker.celery_app worker` with the same options, so celery is PID 1 and gets
# SIGTERM itself (warm shutdown of its pool). Beat and Flower: by command (see the header).
FROM runtime AS worker
LABEL org.opencontainers.image.title="courier-worker" \
      org.opencontainers.image.description="Courier Celery worker (also beat and Flower by command)"
COPY --from=build-worker /staging/ /
USER 10001:10001
CMD ["python", "-m", "worker.supervisor", "--loglevel=INFO"]

# Last, so a plain `docker build .` gives the API. gunicorn is PID 1 and drains on SIGTERM.
FROM runtime AS api
LABEL org.opencontainers.image.title="courier-api" \
      org.opencontainers.image.description="Courier HTTP API: gunicorn with uvicorn workers"
COPY --from=build-api /staging/ /
USER 10001:10001
EXPOSE 8000
CMD ["gunicorn", "-c", "python:app.gunicorn_conf"]
