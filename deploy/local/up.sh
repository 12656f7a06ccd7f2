#!/usr/bin/env bash
# `make up`: the whole local stack in the foreground — API :8000, worker, beat, Flower :5555.
# Starts a local redis-server when nothing answers at COURIER_REDIS_URL. Ctrl-C stops it all.
set -euo pipefail
BIN="${VENV:-.venv}/bin"
export COURIER_REDIS_URL="${COURIER_REDIS_URL:-redis://localhost:6379/0}"
export COURIER_API_BIND="${COURIER_API_BIND:-0.0.0.0:8000}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
# Flower always asks for a login; a random one is made up (and printed) unless given.
if [[ -z "${FLOWER_BASIC_AUTH:-}" ]]; then
    FLOWER_BASIC_AUTH="courier:$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(12))')"
fi
export FLOWER_BASIC_AUTH
pids=()

stop_all() {
    trap - INT TERM EXIT
    echo "stopping: ${pids[*]:-nothing}" >&2
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait || true
}
trap stop_all INT TERM EXIT

redis_answers() {
    "$BIN/python" - <<'PY'
import os, sys, redis
try:
    redis.Redis.from_url(os.environ["COURIER_REDIS_URL"], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

if ! redis_answers; then
    read -r host port < <("$BIN/python" -c 'import os,urllib.parse as u; p=u.urlparse(os.environ["COURIER_REDIS_URL"]); print(p.hostname or "localhost", p.port or 6379)')
    if [[ "$host" != "localhost" && "$host" != "127.0.0.1" ]]; then
        echo "No Redis answers at $COURIER_REDIS_URL; start it or point COURIER_REDIS_URL at one." >&2
        exit 1
    fi
    if ! command -v redis-server >/dev/null; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server
        else
            echo "No Redis at $COURIER_REDIS_URL and no redis-server installed." >&2
            echo "Install one (Debian/Ubuntu: sudo apt-get install redis-server) and run make up again." >&2
            exit 1
        fi
    fi
    echo "starting redis-server on $host:$port" >&2
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --maxmemory-policy noeviction &
    pids+=($!)
    for _ in $(seq 50); do redis_answers && break; sleep 0.1; done
fi

"$BIN/gunicorn" -c python:app.gunicorn_conf & pids+=($!)
"$BIN/celery" -A worker.celery_app worker --loglevel=INFO --without-gossip --without-mingle & pids+=($!)
"$BIN/celery" -A worker.celery_app beat --loglevel=INFO & pids+=($!)
"$BIN/celery" -A worker.celery_app flower --port="$FLOWER_PORT" --address=0.0.0.0 & pids+=($!)

echo "Courier is up: API http://localhost:${COURIER_API_BIND##*:}/docs  Flower http://localhost:$FLOWER_PORT (login ${FLOWER_BASIC_AUTH})  (Ctrl-C stops)" >&2
if [[ -z "${COURIER_API_KEYS:-}" ]]; then
    echo "No COURIER_API_KEYS set: the API is open (fine on localhost; set keys anywhere else)." >&2
fi
# Stay in the foreground until Ctrl-C or until any one component exits.
wait -n
