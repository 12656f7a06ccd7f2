#!/usr/bin/env bash
# `make up`: the whole local stack in the foreground — API, worker, beat, Flower — on 127.0.0.1
# unless COURIER_LOCAL_BIND says otherwise. Starts a local redis-server when nothing answers at
# COURIER_REDIS_URL. Says "Courier is up" once the API, the worker and Flower answer, or which
# one did not and why, and stops. Ctrl-C stops it all and leaves nothing behind.
set -euo pipefail
BIN="${VENV:-.venv}/bin"
LOCAL_BIND="${COURIER_LOCAL_BIND:-127.0.0.1}"
API_PORT="${COURIER_API_PORT:-8000}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
UP_TIMEOUT="${COURIER_UP_TIMEOUT:-60}"
STOP_TIMEOUT=30
export COURIER_REDIS_URL="${COURIER_REDIS_URL:-redis://localhost:6379/0}"
export COURIER_API_BIND="${COURIER_API_BIND:-$LOCAL_BIND:$API_PORT}"
export COURIER_WORKER_METRICS_HOST="${COURIER_WORKER_METRICS_HOST:-$LOCAL_BIND}"
export COURIER_WORKER_METRICS_PORT="${COURIER_WORKER_METRICS_PORT:-9808}"
export PYTHONUNBUFFERED=1
if [[ "$COURIER_WORKER_METRICS_PORT" == 0 ]]; then
    echo "make up needs the worker's metrics port (its /readyz): unset COURIER_WORKER_METRICS_PORT=0." >&2
    exit 1
fi
# Flower always asks for a login; a random one is made up (and printed) unless given.
if [[ -z "${FLOWER_BASIC_AUTH:-}" ]]; then
    FLOWER_BASIC_AUTH="courier:$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(12))')"
fi
export FLOWER_BASIC_AUTH

declare -A label=([redis]="redis-server" [api]="the API (gunicorn)" [worker]="the worker"
    [beat]="beat" [flower]="Flower")
declare -A output=()  # component -> pid of the tee that copies its output (ends with it)
started=()

# start NAME CMD...: in a session of its own, so Ctrl-C reaches this script alone and each part
# gets one stop signal from it (beat raises SystemExit from its signal handler: a second signal
# while it exited printed a traceback and left its directory); output to terminal and NAME.log.
start() {
    local name=$1
    shift
    mkdir "$RUN_DIR/$name-metrics"
    TMPDIR="$RUN_DIR/tmp" PROMETHEUS_MULTIPROC_DIR="$RUN_DIR/$name-metrics" \
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN_DIR/$name.pid" "$@" 2>&1 |
        tee -i "$RUN_DIR/$name.log" >&2 &
    output[$name]=$!
    started+=("$name")
}

pid_of() {  # the component's main process, also its process group
    local _
    for _ in $(seq 50); do
        [[ -s "$RUN_DIR/$1.pid" ]] && { cat "$RUN_DIR/$1.pid"; return; }
        sleep 0.02
    done
}

running() { kill -0 "${output[$1]}" 2>/dev/null; }

# stop NAME...: one TERM each (a clean stop for all of them: gunicorn's graceful one, Celery's
# warm one), then wait; whatever is left after STOP_TIMEOUT, or after a second Ctrl-C, is killed
# with its whole process group.
stop() {
    local name pid deadline=$((SECONDS + STOP_TIMEOUT))
    for name in "$@"; do
        pid="$(pid_of "$name")"
        [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null
    done
    for name in "$@"; do
        while running "$name" && ((SECONDS < deadline)) && [[ -z "$forced" ]]; do sleep 0.1; done
        if running "$name"; then echo "${label[$name]} did not stop; killing it" >&2; fi
    done
    for name in "$@"; do
        pid="$(pid_of "$name")"
        [[ -n "$pid" ]] && kill -KILL -- "-$pid" 2>/dev/null
        wait "${output[$name]}" 2>/dev/null
    done
}

forced=""
stop_all() {
    local status=$? name parts=()
    set +e
    trap 'forced=1' INT TERM HUP
    trap - EXIT
    for name in "${started[@]}"; do [[ "$name" == redis ]] || parts+=("$name"); done
    if ((${#started[@]})); then echo "stopping Courier (Ctrl-C again kills it now)" >&2; fi
    ((${#parts[@]})) && stop "${parts[@]}"
    [[ -n "${output[redis]:-}" ]] && stop redis  # last: the others talk to it while they stop
    wait
    rm -rf "$RUN_DIR"
    if ((${#started[@]})); then echo "Courier stopped" >&2; fi
    exit "$status"
}

# report NAME: its last log lines, after its output has drained into the log.
report() {
    local _
    for _ in $(seq 20); do running "$1" || break; sleep 0.1; done
    echo "--- last lines of ${label[$1]}'s log ---" >&2
    tail -n 25 "$RUN_DIR/$1.log" >&2
    echo "---" >&2
}

# probe readyz|workers NAME URL PID DEADLINE: wait until URL answers 200 (for Flower's workers
# list, with a worker in it); says why not when PID exits or DEADLINE (epoch seconds) passes.
probe() {
    "$BIN/python" - "$@" <<'PY'
import base64, json, os, signal, sys, time, urllib.error, urllib.request

mode, name, url, pid, deadline = sys.argv[1:6]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
headers = {}
if mode == "workers":
    login = os.environ["FLOWER_BASIC_AUTH"].split(",")[0]  # Flower takes a list of them
    token = base64.b64encode(login.encode()).decode()
    headers["Authorization"] = f"Basic {token}"


def alive() -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def answer(target: str) -> tuple[int | None, bytes | str]:
    try:
        with opener.open(urllib.request.Request(target, headers=headers), timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:
        return None, str(getattr(exc, "reason", exc))


def listed(body: bytes | str) -> bool:
    try:
        return bool(json.loads(body))
    except ValueError:
        return False


try:
    last, empty_since = "no answer yet", None
    while True:
        if not alive():
            sys.exit(f"Courier did not come up: {name} exited before it answered {url}")
        # Flower asks the workers once, at start; should that round miss (a busy machine), ask
        # it to ask again rather than call it up with an empty list.
        refresh = empty_since is not None and time.monotonic() - empty_since > 5
        status, body = answer(url + ("?refresh=1" if refresh else ""))
        if refresh:
            empty_since = time.monotonic()
        if status == 200 and (mode == "readyz" or listed(body)):
            sys.exit(0)
        if status == 200:
            last, empty_since = "no worker listed yet", empty_since or time.monotonic()
        else:
            last = f"HTTP {status}: {body[:200]!r}" if status else str(body)
        if time.time() > float(deadline):
            sys.exit(f"Courier did not come up: {name} did not answer {url} in time ({last})")
        time.sleep(0.2)
except KeyboardInterrupt:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
PY
}

# await NAME MODE PATH HOST PORT DEADLINE
await() {
    local name=$1 mode=$2 path=$3 host=$4 port=$5 deadline=$6 pid
    [[ "$host" == 0.0.0.0 || -z "$host" ]] && host=127.0.0.1
    pid="$(pid_of "$name")"
    if ! probe "$mode" "${label[$name]}" "http://$host:$port$path" "${pid:-0}" "$deadline"; then
        report "$name"
        exit 1
    fi
}

# Through Courier's own client: with COURIER_REDIS_SENTINELS set, the primary Sentinel names.
redis_answers() {
    "$BIN/python" - <<'PY'
import sys
try:
    from worker.core.redis_client import create_redis
    from worker.core.settings import load_settings
    create_redis(load_settings()).ping()
except (Exception, KeyboardInterrupt):
    sys.exit(1)
PY
}

# Everything the stack writes (logs, metrics files, beat's schedule, temp files) lives here and
# goes with it: processes given PROMETHEUS_MULTIPROC_DIR make no directory of their own.
RUN_DIR="$(mktemp -d -t courier-up.XXXXXX)"
mkdir "$RUN_DIR/tmp"
export COURIER_BEAT_SCHEDULE_FILE="${COURIER_BEAT_SCHEDULE_FILE:-$RUN_DIR/celerybeat-schedule}"
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if ! redis_answers; then
    if [[ -n "${COURIER_REDIS_SENTINELS:-}" ]]; then
        echo "No Redis primary found through the Sentinels at $COURIER_REDIS_SENTINELS" \
            "(master ${COURIER_REDIS_SENTINEL_MASTER:-unset}); start them or unset COURIER_REDIS_SENTINELS." >&2
        exit 1
    fi
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
    echo "starting redis-server on 127.0.0.1:$port" >&2
    # Loopback whatever COURIER_LOCAL_BIND says: this Redis has no password.
    start redis redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$RUN_DIR" --maxmemory-policy noeviction
    for _ in $(seq 100); do redis_answers && break; sleep 0.1; done
    redis_answers || { echo "Courier did not come up: redis-server does not answer" >&2; report redis; exit 1; }
fi

API_HOST="${COURIER_API_BIND%:*}"
API_PORT="${COURIER_API_BIND##*:}"
deadline=$(($(date +%s) + UP_TIMEOUT))
start api "$BIN/gunicorn" -c python:app.gunicorn_conf
# The worker as the chart runs it by default: the inline supervisor (one inline worker per core).
start worker env COURIER_WORKER_POOL="${COURIER_WORKER_POOL:-inline}" \
    "$BIN/python" -m worker.supervisor --loglevel=INFO --without-gossip --without-mingle
start beat "$BIN/celery" -A worker.celery_app beat --loglevel=INFO
await api readyz /readyz "$API_HOST" "$API_PORT" "$deadline"
await worker readyz /readyz "$COURIER_WORKER_METRICS_HOST" "$COURIER_WORKER_METRICS_PORT" "$deadline"
# Only now: Flower asks the workers who they are once, at start, and never again by itself.
start flower "$BIN/celery" -A worker.celery_app flower --address="$LOCAL_BIND" --port="$FLOWER_PORT"
await flower workers /api/workers "$LOCAL_BIND" "$FLOWER_PORT" $(($(date +%s) + UP_TIMEOUT))
if ! running beat; then
    echo "Courier did not come up: beat exited" >&2
    report beat
    exit 1
fi

loopback() { [[ "$1" == 127.* || "$1" == localhost || "$1" == ::1 ]]; }
browse() { if [[ "$1" == 0.0.0.0 ]] || loopback "$1"; then echo localhost; else echo "$1"; fi; }
wide=()
loopback "$API_HOST" || wide+=("API $COURIER_API_BIND")
loopback "$LOCAL_BIND" || wide+=("Flower $LOCAL_BIND:$FLOWER_PORT")
loopback "$COURIER_WORKER_METRICS_HOST" ||
    wide+=("worker metrics $COURIER_WORKER_METRICS_HOST:$COURIER_WORKER_METRICS_PORT")
if ((${#wide[@]} == 0)); then
    exposure="Listening on 127.0.0.1 only: nothing outside this machine can reach it (COURIER_LOCAL_BIND=0.0.0.0 opens it)."
    if [[ -z "${COURIER_API_KEYS:-}" ]]; then
        exposure+=$'\n'"No COURIER_API_KEYS: the API takes requests from any program on this machine."
    fi
else
    exposure="$(printf '%s, ' "${wide[@]}")"
    exposure="WARNING: reachable from other machines: ${exposure%, }."
    if [[ -z "${COURIER_API_KEYS:-}" ]] && ! loopback "$API_HOST"; then
        exposure+=$'\n'"WARNING: no COURIER_API_KEYS: anyone who reaches port $API_PORT of this machine can run and cancel tasks."
    fi
fi
# One write, so no component's line lands inside it.
printf '%s\n' "" \
    "Courier is up (Ctrl-C stops it):" \
    "  API     http://$(browse "$API_HOST"):$API_PORT/docs" \
    "  worker  http://$(browse "$COURIER_WORKER_METRICS_HOST"):$COURIER_WORKER_METRICS_PORT/metrics" \
    "  Flower  http://$(browse "$LOCAL_BIND"):$FLOWER_PORT asks for this login (user:password):" \
    "$FLOWER_BASIC_AUTH" \
    "$exposure" "" >&2

# In the foreground until Ctrl-C, or until one part stops by itself (then the rest stop too).
parts=()
for name in api worker beat flower; do parts+=("${output[$name]}"); done
[[ -n "${output[redis]:-}" ]] && parts+=("${output[redis]}")
wait -n "${parts[@]}" || true
for name in "${started[@]}"; do
    if ! running "$name"; then
        echo "${label[$name]} stopped by itself; stopping the rest" >&2
        report "$name"
    fi
done
exit 1
